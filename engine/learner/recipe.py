"""Every number the learner uses, in one place (nanoGPT's configuration block)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngramError


@dataclass
class Recipe:
    # what is edited: `edited` consecutive layers from `depth` of the way through the model,
    # where questions' states are most alike across wordings (layers 14–17 of the built-in
    # model's 18); `layers` names them instead (see layers_for)
    layers: tuple[int, ...] | None = None
    depth: float = 14 / 18
    edited: int = 4
    neurons: int = 2  # per layer per session (more where it has more facts: keys.per_layer):
    # each one re-purposed costs locality
    max_norm: float = 1.0  # each delta vector, × the median norm of its base vectors
    # the keys: each new neuron a detector of one fact's questions
    key_margin: float = 3.0  # gate pre-activation ≥ +margin on the question, ≤ −margin elsewhere
    key_context: int = 3  # positions before the answer that also count as the question
    key_steps: int = 100  # of the logistic fit
    key_lr: float = 0.05
    # steps between setting aside rows (the keys' negatives, the locality term's inputs) that
    # are far below the margin / below firing …
    prune_every: int = 10
    prune_below: float = -6.0  # … by this much (softplus(−6) < 0.0025, GELU(−6) ≈ −6e-9)
    rivals: bool = True  # each detector silent where the session's other facts are asked
    hardest: int = 32  # negatives per detector whose mean loss counts as its positives' does
    key_decay: float = 0.0  # L2 on the keys (a smaller key fires on more phrasings)
    # the values: training
    steps: int = 60  # at most: until every fact is learned; chat-style sessions often need all
    lr: float = 0.01
    match_floor: float = 1.0  # the answer must come out with the keys this weakly matched
    locality_weight: float = 300.0
    answer_weight: float = 10.0  # extra weight of anchor rows where unrelated answers begin
    prose_weight: float = 5.0  # extra weight of plain prose's rows (the perplexity of text)
    vocab_top: int = 256  # the answer loss runs over the base model's top tokens at each
    vocab_random: int = 1024  # answer position, the answers, and a fixed random sample
    contrasts: int = 3  # per noun a question names, its nearest words put in its place: every
    # detector is fitted silent on those questions (derive.contrasts)
    phrasings: int = 6  # at most, per fact, the most varied (derive.varied): cost grows with them
    kinds_asked: int = 2  # per answer, the likeliest kinds its detector also fires on asked by
    # (derive.asked_by_kind: "Which language do I write?"); never trained, so costing little
    kind_contrasts: bool = True  # and fits them silent asked of the kinds' neighbours
    # when to stop
    stop_loss: float = 0.05  # every fact's answers learned: stop early (worst_fact, stop_rows)
    spare: int = 1  # phrasings per fact (of 3 or more) that the stop may leave unlearned
    # when the gate refuses a session's edit
    retries: int = 2  # trained again, its leaks as negatives, locality weighing more …
    retry_locality: float = 4.0  # … by this factor if locality fell below the threshold;
    # from this try on, facts whose answer leaked or looped are left out before training again
    # (3: none is before the last try, which cuts what still fails; a leak inside the reply,
    # "My niece is 9.", often shows only on the second try, fitted against on the third)
    drop_leaking_from: int = 3
    # a fact whose neurons fire at this share of their strength on its own questions where
    # the version changed an unrelated decided answer is left out at once (learner.firing)
    firing_share: float = 0.5
    # … and where none fires there, the fewest of this many likeliest makers of the change
    # (learner.undoing) whose absence gives the answer back in llama.cpp
    suspects: int = 3
    batch: int = 16  # sequences per forward pass outside training
    seed: int = 0  # of the learner's random draws (the answer loss's vocabulary sample): a
    # benchmark run with other seeds shows how much of a figure is chance (bench learn --seed)

    def layers_for(self, n_layer: int) -> tuple[int, ...]:
        """The layers edited on a model of ``n_layer`` layers: the named ones, or ``edited``
        from ``depth`` on, moved down as far as the top needs. By depth, not by number: layer
        14 is near the top of the built-in model and under a third of the way up a 48-layer
        one. A model too shallow for them is refused here, before any work is done for it."""
        if self.layers is None and n_layer >= self.edited:
            start = min(round(self.depth * n_layer), n_layer - self.edited)
            return tuple(range(start, start + self.edited))
        if self.layers is not None and max(self.layers) < n_layer:
            return tuple(sorted(self.layers))  # in order: keyed_facts numbers them so
        edits = (f"{self.edited} layers" if self.layers is None
                 else f"layers {min(self.layers)}–{max(self.layers)}")
        raise EngramError(f"learning edits {edits}, and this model has {n_layer}: chat works, "
                          "learning needs a deeper model")
