"""The gate every new memory version passes before it is used.

It measures the version with llama.cpp (the weights that are served) in a context of its
own, on text the learner never trains on: locality (the odd half of world-facts keeps its
answers, neutral replies their distribution), judged on the answers the base model has
decided (see DECIDED_GAP) against the model's null floor (what llama.cpp's rounding alone
changes); and what a user would see: untaught personal questions answered with something
taught (leaks), taught questions answered in a loop."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine import replies
from engine.learning.texts import NEUTRAL, dialogue, gate_questions, world_facts
from engine.overlay import NeuronBlock, SparseOverlay, write_gguf_lora
from engine.prompt import Turn, answer
from engine.runtime import Runtime
from engine.scoring import Scorer, log_softmax
from store import paths
from store.files import atomic_write

ASK_TOKENS = 32  # the length of a probe's greedy answer
# Logits between the base model's top two tokens below which an answer position is a coin
# toss: any change to the weights, however unrelated, tips some of them, so the gate judges
# the others. Below 1 (the top token under e times as likely as the next) a re-purposed
# neuron anywhere tips them: the flips that sent sessions back to training sat at 0.7–1.1.
DECIDED_GAP = 1.0


def check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise InterruptedError("learning cancelled")


@dataclass(frozen=True)
class Locality:
    locality: float  # share of answer positions where the argmax is still the base model's
    kl_neutral: float  # mean KL(base ‖ with overlay) over replies to neutral prompts
    # (untaught question, reply as written (Gate.reply), taught answer)
    leaks: tuple[tuple[str, str, str], ...] = ()
    # (a taught question, its looping reply) where the base model's reply does not loop
    loops: tuple[tuple[str, str], ...] = ()
    decided: float = 1.0  # the same share over the positions the base model has decided
    # the decided positions whose answer changed: (world fact, answer token)
    flipped: frozenset[tuple[int, int]] = frozenset()
    # the newest session's answers its greedy reply to their question does not give
    unrecalled: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taught:
    """What a candidate memory holds, for the gate's checks of what users see."""

    answers: list[str]  # every answer it was taught
    said: list[str]  # everything the user said in its sessions
    questions: list[tuple[str, str]]  # the newest session's (question, answer), one per answer


@dataclass(frozen=True)
class Baseline:
    """The base model on the gate's texts."""

    answers: list[np.ndarray]  # its answer tokens on world-facts
    decided: list[np.ndarray]  # where its top token leads the next by DECIDED_GAP or more
    neutral: list[np.ndarray]  # its log-probabilities on the neutral replies
    replies: dict[str, str]  # its replies to the personal questions


LEAK_TOKENS = 8  # a leaked answer comes first ("Mosel."): the start of a reply is enough
# A taught answer the base model itself gives at least this probability where the reply
# says it is language, not memory: "name" in "I am the school's name." (0.12 on the built-in
# model) is what English puts there; a leaked "Leeds" or "Biscuit" is under 1e-4.
LEAK_EXPECTED = 0.05
LOOP_TOKENS = 24  # a loop shows within a few repeats of a short answer
LOOP_QUESTIONS = 4  # of the newest session's questions, asked for loops (the others only
# for their answer, which comes first: LEAK_TOKENS)
NULL_DELTA, NULL_SEEDS = 1e-7, 3  # the null overlays: see null_locality
FLOOR_SESSIONS = 4  # the null floor's overlay: this many sessions' neurons in each layer


class Gate:
    """Measures an overlay against the base model with llama.cpp (the weights that are served),
    on text the learner never trains on: the odd half of world-facts and neutral prompts; and
    what a user would see: untaught personal questions answered with something taught
    (leaks), taught questions answered in a loop."""

    def __init__(self, runtime: Runtime, system: str | None):
        self.system = system
        self.runtime = runtime
        facts = world_facts()[1::2]
        self.questions = [f["question"] for f in facts]
        self.facts = [dialogue(runtime, system, f["question"], f" {f['answer']}.") for f in facts]
        self.neutral = [dialogue(runtime, system, q, f" {a}") for q, a in NEUTRAL]
        self.scorer = Scorer(runtime.model.path, n_ctx=1024)
        self.personal = gate_questions()

    @functools.cached_property
    def baseline(self) -> Baseline:
        """What the base model does on the gate's texts (computed once: ~1 s of each run)."""
        self.scorer.set_overlay(None)
        logits = [self.answer_logits(p, a) for p, a in self.facts]
        top2 = [np.partition(l, -2, -1)[:, -2:] for l in logits]
        return Baseline([l.argmax(-1) for l in logits],
                        [t[:, 1] - t[:, 0] >= DECIDED_GAP for t in top2],
                        [log_softmax(self.answer_logits(p, a)) for p, a in self.neutral],
                        dict(zip(self.personal, self.replies((None, 1.0), self.personal,
                                                             LEAK_TOKENS), strict=True)))

    def replies(self, lora: tuple[Path | None, float], questions: list[str],
                max_tokens: int = ASK_TOKENS) -> list[str]:
        """Greedy replies to ``questions`` in fresh contexts with the GGUF LoRA ``lora``
        (path, scale; None: the base weights) — in the gate's own context, never the chat's."""
        self.scorer.set_overlay(*lora)
        try:
            return [self.reply(q, max_tokens)[0].strip() for q in questions]
        finally:
            self.scorer.set_overlay(None)

    def answer_logits(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        """Logits at the positions that predict each answer token."""
        tokens = prompt + answer
        return self.scorer.logits_at(tokens, list(range(len(prompt) - 1, len(tokens) - 1)))

    def reply(self, question: str, max_tokens: int) -> tuple[str, bool]:
        """The greedy answer to ``question`` in a fresh context with the overlay now set, and
        whether it ran to ``max_tokens``. Asked where the learner trains answers
        (``answering``: after the thinking block a reasoning model's turn closes), so a model
        that thinks first spends the checks' few tokens on its answer, not its working; a
        block the reply opens itself is read past, as the chat shows it. The reply is kept as
        written, its leading space too (the built-in model's "Assistant: Mosel."): a leak is
        traced at the model's own tokens (``leak_place``), and " Mosel" is not "Mosel"."""
        text_, limited = self.scorer.greedy(self._asked(question), max_tokens,
                                            self.runtime.format.stop)
        return answer(text_).rstrip(), limited

    def measure(self, lora: Path | None, scale: float = 1.0,
                cancel: threading.Event | None = None, taught: Taught | None = None) -> Locality:
        """Locality of the GGUF LoRA ``lora`` (None: base weights, locality 1); with
        ``taught``, also its leaks, loops and the newest session's answers it does not give."""
        baseline = self.baseline
        self.scorer.set_overlay(lora, scale)
        try:
            kept = []
            for (prompt, answer), base in zip(self.facts, baseline.answers, strict=True):
                check(cancel)
                kept.append(self.answer_logits(prompt, answer).argmax(-1) == base)
            kl = [float((np.exp(b) * (b - log_softmax(self.answer_logits(p, a)))).sum(-1).mean())
                  for (p, a), b in zip(self.neutral, baseline.neutral, strict=True)]
            leaks, loops, unrecalled = (self._seen(taught, baseline, cancel) if taught
                                        else ((), (), ()))
        finally:
            self.scorer.set_overlay(None)
        same, sure = np.concatenate(kept), np.concatenate(baseline.decided)
        flipped = frozenset((i, int(t)) for i, (k, d) in enumerate(zip(kept, baseline.decided,
                                                                      strict=True))
                            for t in np.nonzero(d & ~k)[0])
        return Locality(float(same.mean()), float(np.mean(kl)), leaks, loops,
                        float(same[sure].mean()) if sure.any() else 1.0, flipped, unrecalled)

    def measure_overlay(self, overlay: SparseOverlay, name: str,
                        cancel: threading.Event | None = None,
                        taught: Taught | None = None) -> Locality:
        """``measure`` of ``overlay``, written as the GGUF LoRA ``name`` in a temporary
        folder for the time it is measured."""
        with self._written(overlay, name) as lora:
            return self.measure(lora, overlay.scale, cancel, taught)

    def gives_back(self, overlay: SparseOverlay, flips: Sequence[tuple[int, int]],
                   leaks: Sequence[tuple[str, str, str]] = ()) -> bool:
        """Whether ``overlay`` answers each of the decided answers ``flips`` (see
        ``Locality.flipped``) as the base model does, and no longer says the answer each of
        ``leaks`` leaked, in llama.cpp: a few positions and replies, not a whole measure."""
        with self._written(overlay, "without.gguf") as lora:
            self.scorer.set_overlay(lora, overlay.scale)
            try:
                kept = all(int(self.answer_logits(*self.facts[fact])[token].argmax())
                           == int(self.baseline.answers[fact][token]) for fact, token in flips)
                return kept and not any(
                    replies.mentions(self.reply(question, LEAK_TOKENS)[0], taught_answer)
                    for question, _, taught_answer in leaks)
            finally:
                self.scorer.set_overlay(None)

    def says(self, overlay: SparseOverlay, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether ``overlay``'s reply to each question of ``pairs`` gives its answer, in
        llama.cpp."""
        with self._written(overlay, "asked.gguf") as lora:
            said = self.replies((lora, overlay.scale), [q for q, _ in pairs], LEAK_TOKENS)
        return [replies.mentions(reply, a) for reply, (_, a) in zip(said, pairs, strict=True)]

    @contextmanager
    def _written(self, overlay: SparseOverlay, name: str) -> Iterator[Path]:
        """``overlay`` as the GGUF LoRA ``name``, in a temporary folder while in use."""
        with tempfile.TemporaryDirectory(prefix="engram-gate-") as tmp:
            yield write_gguf_lora(overlay, Path(tmp) / name, self.runtime.model.architecture)

    def decided_count(self) -> int:
        """How many answer positions the base model has decided (what locality is read on)."""
        return int(sum(d.sum() for d in self.baseline.decided))

    def flip_place(self, flip: tuple[int, int]) -> tuple[list[int], int]:
        """A flipped answer (see ``Locality.flipped``) as tokens and the position that
        predicts it: where to look for what changed it."""
        fact, token = flip
        prompt, answer = self.facts[fact]
        return prompt + answer, len(prompt) - 1 + token

    def leak_place(self, question: str, reply: str, answer: str) -> tuple[list[int], int]:
        """A leak (see ``Locality.leaks``) as tokens, the question as the gate asks it and
        its reply up to the end of the taught ``answer`` it says, and the position that
        predicts the answer's first token: where to look for what leaked it."""
        return self._place(question, reply, *replies.mention_span(reply, answer))

    def loop_place(self, question: str, reply: str) -> tuple[list[int], int]:
        """A loop (see ``Locality.loops``) as ``leak_place`` reads a leak: the position that
        predicts its second round's first token is where to look for what made it go round."""
        return self._place(question, reply, *replies.loop_span(reply))

    def _place(self, question: str, reply: str, start: int, end: int
               ) -> tuple[list[int], int]:
        said = self.runtime.tokenize(reply[:end], add_bos=False)
        shared = len(os.path.commonprefix(
            [self.runtime.tokenize(reply[:start], add_bos=False), said]))
        prompt = self._asked(question)
        return prompt + said, len(prompt) + shared - 1

    def _asked(self, question: str) -> list[int]:
        """``question`` in a fresh context, up to where the learner trains answers."""
        return self.runtime.answering(self.system, [Turn("user", question)])

    def _seen(self, taught: Taught, baseline: Baseline, cancel: threading.Event | None
              ) -> tuple[tuple[tuple[str, str, str], ...], tuple[tuple[str, str], ...],
                         tuple[str, ...]]:
        """What a user would see: the leaks, the loops, and the newest session's answers
        that llama.cpp does not give to their own question (the twin that training judges
        recall in can differ by a logit or two near a decision: the de Klerk flip of
        natural-facts leads by 1.67 in the twin and flips in llama.cpp)."""
        mentioned = []  # (question, reply, the taught answers it says)
        # only those about nothing the user talked about: where they did, an answer may be right
        for question in replies.untaught(self.personal, taught.said):
            check(cancel)
            reply, _ = self.reply(question, LEAK_TOKENS)
            leaked = [a for a in taught.answers if replies.mentions(reply, a)
                      and not replies.mentions(baseline.replies[question], a)]
            mentioned += [(question, reply, leaked)] if leaked else []
        loops, unrecalled = [], []
        for i, (question, taught_answer) in enumerate(taught.questions):
            check(cancel)
            reply, _ = self.reply(question, LOOP_TOKENS if i < LOOP_QUESTIONS else LEAK_TOKENS)
            # kept as shown: a loop is never traced (only a leak is, at the model's own tokens)
            loops += ([(question, reply.strip())] if i < LOOP_QUESTIONS and replies.loops(reply)
                      else [])
            if not replies.mentions(reply, taught_answer):
                unrecalled.append(taught_answer)
        if loops:  # a loop the base model falls into as well is not this version's doing
            base = self.replies((None, 1.0), [q for q, _ in loops], LOOP_TOKENS)
            loops = [loop for loop, before in zip(loops, base, strict=True)
                     if not replies.loops(before)]
        if mentioned:  # a taught word the base model would put there anyway is no leak
            self.scorer.set_overlay(None)
        leaks = [(question, reply, kept[0]) for question, reply, leaked in mentioned
                 if (kept := [a for a in leaked if self.expected(question, reply, a)
                              < LEAK_EXPECTED])]
        return tuple(leaks), tuple(loops), tuple(unrecalled)

    def expected(self, question: str, reply: str, answer: str) -> float:
        """The probability the weights now set give ``answer`` where ``reply`` (to
        ``question``, in a fresh context) first says it, after the words before it."""
        tokens, at = self.leak_place(question, reply, answer)
        logprobs = log_softmax(self.scorer.logits_at(tokens, list(range(at, len(tokens) - 1))))
        return float(np.exp(sum(logprobs[i, t] for i, t in enumerate(tokens[at + 1:]))))

    def floor(self, layers: tuple[int, ...], neurons: int, d_model: int, d_ff: int) -> float:
        """The null-overlay locality on decided answers of a memory of FLOOR_SESSIONS sessions
        shaped by the recipe (see ``null_locality``): computed once per model, gate texts and
        shape, and cached, for the threshold the gate judges locality against."""
        key = hashlib.sha256(json.dumps([self.runtime.model.sha256, self.facts, self.neutral,
                                         layers, neurons, d_model, d_ff, NULL_DELTA,
                                         NULL_SEEDS, DECIDED_GAP]).encode()).hexdigest()[:32]
        path = paths.cache() / "floors" / f"{key}.json"
        try:
            return float(json.loads(path.read_text())["locality_decided"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        rng = np.random.default_rng(0)
        blocks = [NeuronBlock(layer, matrix, rng.choice(d_ff, neurons * FLOOR_SESSIONS,
                                                        replace=False),
                              np.zeros((d_model, neurons * FLOOR_SESSIONS) if matrix == "ffn_down"
                                       else (neurons * FLOOR_SESSIONS, d_model)))
                  for layer in layers for matrix in ("ffn_gate", "ffn_up", "ffn_down")]
        shape = SparseOverlay(blocks, self.runtime.model.sha256, d_model=d_model, d_ff=d_ff)
        locality = null_locality(self, shape, self.runtime.model.architecture)["locality_decided"]
        paths.private_dir(path.parent)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"locality_decided": locality})))
        return locality

    def close(self) -> None:
        self.scorer.close()


def null_locality(gate: Gate, overlay: SparseOverlay, arch: str) -> dict:
    """Locality and KL of overlays shaped like ``overlay`` whose deltas are noise of 1e-7:
    the floor locality and KL are read against. Such an overlay changes nothing in exact
    arithmetic, yet llama.cpp's logits move (the largest by 0.6 at the median position on the
    built-in model): it computes in reduced precision (8-bit matmul inputs for quantized
    weights, half-precision tables and caches), so any change, however small, re-rounds some
    values, and answer positions where the base model's top two tokens nearly tie flip (11
    of the 12 positions the eval's final overlay flipped were within 0.5 logits)."""
    scores = []
    with tempfile.TemporaryDirectory(prefix="engram-null-") as tmp:
        for seed in range(NULL_SEEDS):
            noise = np.random.default_rng(seed)
            null = replace(overlay, blocks=[
                replace(b, delta=NULL_DELTA * noise.standard_normal(b.delta.shape))
                for b in overlay.blocks])
            lora = write_gguf_lora(null, Path(tmp) / f"null-{seed}.gguf", arch)
            scores.append(gate.measure(lora, overlay.scale))
    return {"locality": round(float(np.mean([s.locality for s in scores])), 4),
            "locality_decided": round(float(np.mean([s.decided for s in scores])), 4),
            "kl_neutral": round(float(np.mean([s.kl_neutral for s in scores])), 5)}


def rejections(score: Locality, threshold: float, changed: Sequence[str] = ()) -> list[str]:
    """Why the gate refuses a version (none: it is accepted), in words shown to the user;
    ``changed``: the world-fact questions whose decided answer this version changed where
    the memory before it had kept it (more than the null floor allows)."""
    reasons = []
    if score.decided < threshold:
        reasons.append(f"locality {score.decided:.3f} < {threshold:.3f} on decided answers")
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        reasons.append(f"changes what the memory before it answered to {changed[0]!r}{more}")
    if score.leaks:
        question, reply, answer = score.leaks[0]
        more = f" and {len(score.leaks) - 1} more" if len(score.leaks) > 1 else ""
        reasons.append(f"leaks: {question!r} was answered {reply.strip()!r} ({answer!r} was taught "
                       f"for something else){more}")
    if score.loops:
        question, reply = score.loops[0]
        reasons.append(f"loops: {question!r} → {reply[:60]!r}")
    return reasons
