"""The learner: turns Q/A pairs about what the user said into new FFN neurons.

What is trained: for each session, k neurons in each of a few mid layers are re-purposed
as memory cells — their input rows in ``ffn_gate``/``ffn_up`` (the key: *when* the neuron
fires) and their output column in ``ffn_down`` (the value: *what* it writes) get deltas.
Base weights stay frozen; the delta is whole neuron vectors, exported exactly as a LoRA.

On what signal: question/answer pairs derived from the user's statements (engine.facts),
asked in the app's own dialogue format; the loss is on the answer tokens and the end of the
turn only (FT-M).

Which neurons: those whose output generic text feels least (RMS activation × output norm:
re-purposing a neuron drops what it did), not owned by an earlier session (so sessions
never overwrite each other), re-keyed as detectors of this session's questions: a logistic
fit puts each one's gate pre-activation above a margin on its fact's questions and below it
on generic text, unrelated questions and answers, earlier sessions' questions, the end of
the answer's turn and — above all — the first token: every position attends to it, so a
neuron firing there a little moved every unrelated answer (locality 0.92 → 0.995 on one
session once it got its own term). (The alternative,
``select="ratio"``, edits the neurons most active on the questions ÷ on generic text: better
recall, but their firing on every personal question flipped ~15 % of unrelated answers.)

Locality: the edit's effect on generic text (anchors) is computed exactly at each edited
layer from the anchors' cached FFN inputs — no anchor forward passes — and its energy,
relative to the layer's own FFN output, is penalised; training the keys lets the neurons
learn to stay silent on generic text. Three kinds of rows weigh differently: where unrelated
questions are answered (~2,000 of them: a detector firing a little on any question moved
their first answer token), plain prose (its perplexity), and everything else. Every delta
vector's norm is capped.

Cost: the frozen prefix (layers below the first edited one) runs once, and so does the
system prompt every example starts with; each step runs only the layers above it on the
examples' own tokens, and the 262k-row output head only at answer positions. The frozen
layers' states of each session's examples are kept (``Twin.entering``): every later run asks
them again as earlier questions. The key fit reads only the negatives near its margin.
Training stops once the answers are learned — not waiting for one phrasing of a fact that
fights the model's prior (stop_rows) — or once their loss stops falling (stalled).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from safetensors.torch import load_file, save_file

from engine.overlay import NeuronBlock
from engine.twin import Prefix, Twin


@dataclass
class Recipe:
    layers: tuple[int, ...] = (10, 11, 12, 13)  # above 8–11: less interference between sessions
    neurons: int = 4  # per layer per session
    steps: int = 60  # at most: most sessions' answers are learned in 20–40
    lr: float = 0.01
    locality_weight: float = 300.0
    answer_weight: float = 10.0  # extra weight of anchor rows where unrelated answers begin
    prose_weight: float = 5.0  # extra weight of plain prose's rows (the perplexity of text)
    max_norm: float = 1.0  # each delta vector, × the median norm of its base vectors
    select: str = "keyed"  # "keyed": quiet neurons re-keyed as detectors; "ratio": active on the questions ÷ on generic text
    key_margin: float = 3.0  # keyed: gate pre-activation ≥ +margin on the question, ≤ −margin elsewhere
    key_context: int = 3  # keyed: positions before the answer that also count as the question
    phrasings: int = 10  # at most, per fact: the most varied (engine.facts.varied)
    stop_loss: float = 0.05  # answers learned: stop early (see stop_rows)
    spare: int = 1  # phrasings per fact (of 3 or more) that the stop may leave unlearned
    plateau: int = 10  # steps: stop when the answers' loss fell less than plateau_gain over them
    plateau_gain: float = 0.05
    vocab_top: int = 256  # the answer loss runs over the base model's top tokens at each
    vocab_random: int = 1024  # answer position, the answers, and a fixed random sample


@dataclass
class Example:
    """One training sequence: a prompt, the answer tokens the model must produce, and the
    tokens that end its turn (trained too, but there the new neurons must be silent again,
    or the answer runs on)."""

    prompt: list[int]
    answer: list[int]
    end: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.answer + self.end

    def question(self, x: torch.Tensor, tail: int) -> torch.Tensor:
        """The rows of ``x`` where the question ends (its last ``tail`` + 1 prompt positions)
        and the answer is being written: where a detector of it must fire."""
        return x[len(self.prompt) - 1 - tail: len(self.prompt) + len(self.answer) - 1]

    def ending(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` (this sequence's FFN inputs) that predict the end tokens."""
        start = len(self.prompt) + len(self.answer) - 1
        return x[start: start + len(self.end)]


@dataclass
class Anchors:
    """Per edited layer, generic text as that layer's FFN sees it.

    ``answers`` are the rows where an assistant answers an unrelated question: where an
    edit keyed on "a question was asked" would leak, so they weigh more in the penalty.
    ``start`` is the first token (BOS), the attention sink every later position reads: a
    change there moves everything, and its small FFN input makes a key's margin small there,
    so it gets its own term.
    """

    inputs: dict[int, torch.Tensor]  # FFN inputs (n × d_model), a sample of rows
    prose: dict[int, torch.Tensor]  # a sample of plain prose's rows alone: see anchors_for
    answers: dict[int, torch.Tensor]  # FFN inputs at answer positions of dialogue anchors
    start: dict[int, torch.Tensor]  # FFN input at the first position (1 × d_model): see above
    out_energy: dict[int, float]  # mean squared norm of the FFN output
    activity: dict[int, torch.Tensor]  # root mean square activation per neuron

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (temp file + rename): a half-written file is never read."""
        tensors = {f"{name}.{l}": t.contiguous().cpu() for name in self.names() if name != "out_energy"
                   for l, t in getattr(self, name).items()}
        tensors |= {f"out_energy.{l}": torch.tensor(e, dtype=torch.float64) for l, e in self.out_energy.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, device: torch.device, layers: tuple[int, ...]) -> "Anchors":
        """Read what ``save`` wrote; ValueError (or safetensors' error) if it is not that."""
        out = cls({}, {}, {}, {}, {}, {})
        for key, t in load_file(str(path), device=str(device)).items():
            name, layer = key.rsplit(".", 1)
            if name not in cls.names():
                raise ValueError(f"{path}: unexpected tensor {key!r}")
            getattr(out, name)[int(layer)] = float(t) if name == "out_energy" else t
        if any(set(getattr(out, name)) != set(layers) for name in cls.names()):
            raise ValueError(f"{path}: not the anchors of layers {list(layers)}")
        return out


Progress = Callable[[float, str], None]


@torch.no_grad()
def anchors_for(twin: Twin, texts: list[list[int]], layers: tuple[int, ...],
                answer_starts: list[int | None] | None = None, max_rows: int = 8192,
                question_tail: int = 0) -> Anchors:
    """Run generic text once and keep what the locality term needs (once per model).

    ``answer_starts[i]``: where the answer begins in dialogue anchor i (None: plain text);
    its answer rows start ``question_tail`` positions before the one that predicts it.
    """
    answer_starts = answer_starts or [None] * len(texts)
    inputs = {l: [] for l in layers}
    prose = {l: [] for l in layers}  # plain text's rows, sampled on their own: see below
    answers = {l: [] for l in layers}
    for start, chunk, seen in _ffn_passes(twin, texts, layers):
        starts = answer_starts[start:start + len(chunk)]
        for l in layers:
            x = seen[l]
            rows = torch.cat([x[i, : len(s)] for i, s in enumerate(chunk)])
            inputs[l].append(rows)
            prose[l] += [x[i, : len(s)] for i, (s, a) in enumerate(zip(chunk, starts)) if a is None]
            answers[l] += [x[i, max(a - 1 - question_tail, 0): len(s)]
                           for i, (s, a) in enumerate(zip(chunk, starts)) if a is not None]
    pick = torch.Generator().manual_seed(0)
    out = Anchors({}, {}, {}, {}, {}, {})
    for l in layers:
        out.start[l] = inputs[l][0][:1]
        rows = torch.cat(inputs[l])
        # Dialogues outnumber prose many times over: a sample of all rows would leave prose
        # (and the perplexity of plain text) almost unguarded, so each kind gets max_rows.
        plain = torch.cat(prose[l]) if prose[l] else rows[:0]
        out.inputs[l], out.prose[l] = (sample[torch.randperm(sample.shape[0], generator=pick)[:max_rows]]
                                       for sample in (rows, plain))
        both = torch.cat([out.inputs[l], out.prose[l]])
        out.activity[l] = _activation(twin, l, both).pow(2).mean(0).sqrt()
        out.out_energy[l] = float(twin.layers[l].mlp(both).pow(2).sum(-1).mean())
        out.answers[l] = torch.cat(answers[l]) if answers[l] else rows[:0]
    return out


def _ffn_passes(twin: Twin, sequences: list[list[int]], layers: tuple[int, ...], size: int = 16,
                prefix: Prefix | None = None, keep: bool = False
                ) -> Iterator[tuple[int, list[list[int]], dict[int, torch.Tensor]]]:
    """Run ``sequences`` (continuing ``prefix``, if given) in chunks up to the last of
    ``layers``; per chunk, its offset, the chunk, and each layer's FFN input. ``keep``: the
    states below the first of ``layers`` come from (and go to) the twin's cache of them."""
    first = min(layers) if keep else 0
    for start in range(0, len(sequences), size):
        chunk, seen = sequences[start:start + size], {}
        hooks = [twin.layers[l].mlp.register_forward_pre_hook(
            lambda m, a, l=l: seen.__setitem__(l, a[0])) for l in layers]
        try:
            batch = twin.batch(chunk, prefix)
            h = (pad_sequence(twin.entering(chunk, first, prefix), batch_first=True) if keep
                 else twin.embed(batch))
            twin.run(h, batch, first, max(layers) + 1)
        finally:
            for h in hooks:
                h.remove()
        yield start, chunk, seen


def _activation(twin: Twin, layer: int, x: torch.Tensor) -> torch.Tensor:
    mlp = twin.layers[layer].mlp
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


class NeuronEdit(torch.nn.Module):
    """Trainable deltas for k neurons of one layer: gate rows, up rows, down columns."""

    def __init__(self, twin: Twin, layer: int, neurons: torch.Tensor, max_norm: float):
        super().__init__()
        mlp = twin.layers[layer].mlp
        self.mlp, self.layer, self.neurons = mlp, layer, neurons
        d = mlp.gate_proj.weight.shape[1]
        k = neurons.numel()
        self.gate = torch.nn.Parameter(torch.zeros(k, d, device=twin.device))
        self.up = torch.nn.Parameter(torch.zeros(k, d, device=twin.device))
        self.down = torch.nn.Parameter(torch.zeros(d, k, device=twin.device))
        self.w_gate = mlp.gate_proj.weight[neurons]
        self.w_up = mlp.up_proj.weight[neurons]
        self.w_down = mlp.down_proj.weight[:, neurons]
        self.caps = {
            "gate": max_norm * float(mlp.gate_proj.weight.norm(dim=1).median()),
            "up": max_norm * float(mlp.up_proj.weight.norm(dim=1).median()),
            "down": max_norm * float(mlp.down_proj.weight.norm(dim=0).median()),
        }

    def set_keys(self, positives: list[torch.Tensor], negatives: torch.Tensor, start: torch.Tensor,
                 margin: float, steps: int = 100) -> None:
        """Turn (quiet) neurons into detectors: neuron j's gate row is fitted (logistic, no bias:
        the FFN input's near-constant channels act as one) to be above +margin on
        ``positives[j]`` (FFN inputs where its fact is asked and answered) and below −margin
        on generic inputs; its up row reads the same direction, 1 at the positives' mean.
        Silent elsewhere, such a neuron leaves unrelated text exactly as it was."""
        with torch.enable_grad():
            gate = torch.zeros(len(positives), negatives.shape[1], device=negatives.device,
                               requires_grad=True)
            optim = torch.optim.Adam([gate], lr=0.05)
            hard = negatives
            for step in range(steps):
                if step and step % 10 == 0:
                    # Tens of thousands of negatives, most soon far below the margin, where
                    # they add next to nothing (softplus(−6) < 0.0025): each pass reads only
                    # the others (the fitted objective moves by ~1e-4; 2.1 → 1.2 s a layer).
                    with torch.no_grad():
                        hard = negatives[(negatives @ gate.T + margin > -6).any(1)]
                loss = (sum(F.softplus(margin - pos @ g).mean() for pos, g in zip(positives, gate))
                        + F.softplus(hard @ gate.T + margin).sum(0).div(len(negatives)).sum()
                        + F.softplus(start @ gate.T + margin).mean(0).sum())
                optim.zero_grad()
                loss.backward()
                optim.step()
        with torch.no_grad():
            for j, (pos, g) in enumerate(zip(positives, gate.detach())):
                self.gate[j] = g - self.w_gate[j]
                self.up[j] = g / (pos.mean(0) @ g) - self.w_up[j]
            for name in ("gate", "up"):  # the cap keeps training near these keys
                self.caps[name] = max(self.caps[name], 1.5 * float(getattr(self, name).norm(dim=1).max()))

    def activation(self, x: torch.Tensor, edited: bool = True) -> torch.Tensor:
        """These neurons' activations for FFN inputs ``x`` (…, d_model) → (…, k)."""
        gate, up = (self.w_gate + self.gate, self.w_up + self.up) if edited else (self.w_gate, self.w_up)
        return self.mlp.act_fn(x @ gate.T) * (x @ up.T)

    def change(self, x: torch.Tensor) -> torch.Tensor:
        """What the edit adds to the FFN output for inputs ``x``."""
        return self.activation(x) @ (self.w_down + self.down).T - self.activation(x, False) @ self.w_down.T

    def change_energy(self, x: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of ``change(x)``, ``before`` being ``activation(x, False)``:
        computed in the 2k-dimensional space of new and old activations (a Gram matrix of
        the down columns), never as an n × d_model output — the locality term's inputs are
        thousands of rows, and that product was most of a step."""
        z = torch.cat([self.activation(x), -before], -1)
        down = torch.cat([self.w_down + self.down, self.w_down], 1)
        return ((z @ (down.T @ down)) * z).sum(-1).mean()

    @torch.no_grad()
    def cap(self) -> None:
        for name, dim in (("gate", 1), ("up", 1), ("down", 0)):
            p = getattr(self, name)
            norms = p.norm(dim=dim, keepdim=True).clamp_min(1e-12)
            p.mul_(torch.clamp(self.caps[name] / norms, max=1.0))

    def blocks(self, session_id: int | None) -> list[NeuronBlock]:
        neurons = self.neurons.cpu().numpy()
        return [NeuronBlock(self.layer, matrix, neurons, getattr(self, name).detach().cpu().numpy(),
                            session_id=session_id)
                for matrix, name in (("ffn_gate", "gate"), ("ffn_up", "up"), ("ffn_down", "down"))]


def learn(twin: Twin, examples: list[Example], anchors: Anchors, recipe: Recipe,
          owned: dict[int, set[int]] | None = None, session_id: int | None = None,
          progress: Progress | None = None, cancel: threading.Event | None = None,
          earlier: list[Example] | None = None) -> tuple[list[NeuronBlock], dict]:
    """Train k neurons per layer for these examples; returns the blocks and training metrics.

    ``earlier``: other sessions' questions and answers — the new neurons must stay silent
    on them too, or a later session's memory answers an earlier one's question."""
    progress = progress or (lambda f, m: None)
    started = time.perf_counter()
    first = min(recipe.layers)
    # The system prompt every example starts with runs once, not at every step (the new
    # neurons are trained silent on generic text, which includes it): from here on the
    # examples are what follows it.
    prefix, examples = _after_shared(twin, examples, recipe.key_context)
    batch = twin.batch([e.tokens for e in examples], prefix)
    rows, cols, targets = [], [], []
    for i, e in enumerate(examples):
        for j, token in enumerate(e.answer + e.end):
            rows.append(i)
            cols.append(len(e.prompt) + j - 1)  # the position that predicts answer token j
            targets.append(token)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    taught = [tuple(e.answer) for e in examples]  # which fact (its answer) each example teaches
    targets_t = torch.tensor(targets, device=twin.device)
    question = torch.zeros(batch.ids.shape, dtype=torch.bool, device=twin.device)
    for i, e in enumerate(examples):
        question[i, : len(e.prompt)] = True

    # The frozen layers, once (and kept: these are the next runs' earlier questions); what
    # the edited layers' FFNs see on these questions; and the vocabulary that competes with
    # the answers (the full 262k-row head costs most of a step).
    seen = {}
    with torch.no_grad():
        h_prefix = pad_sequence(twin.entering([e.tokens for e in examples], first, prefix), batch_first=True)
        hooks = [twin.layers[l].mlp.register_forward_pre_hook(
            lambda m, a, l=l: seen.__setitem__(l, a[0])) for l in recipe.layers]
        try:
            h = twin.run(h_prefix, batch, first)
        finally:
            for hook in hooks:
                hook.remove()
        rivals = twin.logits(h[rows_t, cols_t]).topk(recipe.vocab_top, dim=-1).indices
        sample = torch.randperm(twin.config.vocab_size, generator=torch.Generator().manual_seed(0))
        vocab = torch.unique(torch.cat([targets_t, rivals.flatten(),
                                        sample[: recipe.vocab_random].to(twin.device)]))
        targets_t = torch.searchsorted(vocab, targets_t)
        held = _asked(twin, earlier or [], recipe.layers, recipe.key_context)
        unrelated = {l: torch.cat([anchors.answers[l], held[l]]) for l in recipe.layers}

    edits = []
    for depth, layer in enumerate(recipe.layers):
        if recipe.select == "ratio":
            on_task = _activation(twin, layer, seen[layer][question]).abs().mean(0)
            score = on_task / (anchors.activity[layer] + 1e-3)
        else:  # the neurons whose loss (what they add to the FFN output) generic text feels least
            score = -anchors.activity[layer] * twin.layers[layer].mlp.down_proj.weight.norm(dim=0)
        for n in (owned or {}).get(layer, ()):
            score[n] = float("-inf")
        neurons = torch.topk(score, recipe.neurons).indices.sort().values
        edit = NeuronEdit(twin, layer, neurons, recipe.max_norm)
        if recipe.select == "keyed":
            # One detector per fact (its phrasings together).
            facts = sorted(set(taught))
            positives = [torch.cat([e.question(seen[layer][i], recipe.key_context)
                                    for i, e in enumerate(examples) if taught[i] == fact])
                         for fact in facts]
            endings = [e.ending(seen[layer][i]) for i, e in enumerate(examples)]
            edit.set_keys([positives[f] for f in keyed_facts(len(facts), depth, recipe.neurons)],
                          torch.cat([anchors.inputs[layer], anchors.prose[layer], unrelated[layer], *endings]),
                          anchors.start[layer], recipe.key_margin)
        edits.append(edit)

    # What the locality term reads, per edit: (fixed inputs, their unedited output, weight).
    with torch.no_grad():
        penalised = [[(x, e.activation(x, False), w) for x, w in (
            (anchors.inputs[e.layer], 1.0), (anchors.prose[e.layer], recipe.prose_weight),
            (unrelated[e.layer], recipe.answer_weight),
            (anchors.start[e.layer], recipe.answer_weight))] for e in edits]
    optim = torch.optim.Adam([p for e in edits for p in e.parameters()], lr=recipe.lr)
    hooks = [twin.layers[e.layer].mlp.register_forward_hook(
        lambda m, a, out, e=e: out + e.change(a[0])) for e in edits]
    history, watched = [], []  # watched: the answer loss the stop reads (stop_rows)
    stopped = "step cap"
    try:
        for step in range(recipe.steps):
            if cancel is not None and cancel.is_set():
                raise InterruptedError("learning cancelled")
            h = twin.run(h_prefix, batch, first)
            token_loss = F.cross_entropy(twin.logits(h[rows_t, cols_t], vocab=vocab), targets_t,
                                         reduction="none")
            task = token_loss.mean()
            locality = sum(sum(w * e.change_energy(x, before) for x, before, w in terms)
                           / anchors.out_energy[e.layer] for e, terms in zip(edits, penalised))
            loss = task + recipe.locality_weight * locality
            optim.zero_grad()
            loss.backward()
            optim.step()
            for e in edits:
                e.cap()
            history.append((task.item(), locality.item()))
            progress((step + 1) / recipe.steps, f"step {step + 1}: answer loss {task.item():.3f}")
            watched.append(token_loss[stop_rows(token_loss.detach(), rows_t, taught, recipe.spare)].mean().item())
            if watched[-1] < recipe.stop_loss:
                stopped = "learned"
                break
            if stalled(watched, recipe.plateau, recipe.plateau_gain):
                stopped = "plateau"
                break
    finally:
        for h in hooks:
            h.remove()
    metrics = {"steps": len(history), "stopped": stopped, "answer_loss": round(history[-1][0], 4),
               "locality_penalty": round(history[-1][1], 5),
               "train_seconds": round(time.perf_counter() - started, 2)}
    return [b for e in edits for b in e.blocks(session_id)], metrics


def stop_rows(token_loss: torch.Tensor, rows: torch.Tensor, facts: list[tuple],
              spare: int) -> torch.Tensor:
    """The answer tokens whose mean loss decides when training stops: all but those of each
    fact's ``spare`` worst phrasings (facts with 3 or more). One phrasing can fight the
    model's prior ("Who am I?" → "Ada Quill" held at loss 13 while the fact's other
    phrasings were learned by step 11), and waiting for it doubled a session's steps."""
    per_example = torch.zeros(len(facts), device=token_loss.device).index_add_(
        0, rows.to(token_loss.device), token_loss)
    dropped = set()
    for fact in set(facts):
        mine = [i for i, f in enumerate(facts) if f == fact]
        if len(mine) >= 3:
            dropped.update(sorted(mine, key=lambda i: float(per_example[i]))[len(mine) - spare:])
    return torch.tensor([int(r) not in dropped for r in rows], device=token_loss.device)


def stalled(losses: list[float], window: int, gain: float) -> bool:
    """The loss fell by less than ``gain`` (a fraction) over the last ``window`` steps: what
    is left will not be learned (two dev sessions sat at 0.28 from step 25 to the cap)."""
    return len(losses) > window and losses[-1] > (1 - gain) * losses[-1 - window]


def keyed_facts(facts: int, depth: int, k: int) -> list[int]:
    """Which fact each of the k neurons of the ``depth``-th edited layer detects: the
    neurons of all edited layers in turn, so that with more facts than k each layer keys the
    next ones (restarting at every layer, 2 of 6 facts had no detector anywhere and were
    not learned)."""
    return [(depth * k + j) % facts for j in range(k)]


def _after_shared(twin: Twin, examples: list[Example], tail: int) -> tuple[Prefix | None, list[Example]]:
    """The tokens all ``examples`` start with (the system prompt), run once, and what follows
    them in each (at least the question's last ``tail`` + 1 prompt tokens)."""
    shared = _shared_prefix([e.tokens for e in examples],
                            min((len(e.prompt) for e in examples), default=0) - 1 - tail)
    prefix = twin.prefix(examples[0].tokens[:shared]) if shared else None
    return prefix, [Example(e.prompt[shared:], e.answer, e.end) for e in examples]


def _shared_prefix(sequences: list[list[int]], limit: int) -> int:
    """How many leading tokens all ``sequences`` share, at most ``limit``."""
    n = 0
    while n < limit and all(len(s) > n and s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


@torch.no_grad()
def _asked(twin: Twin, examples: list[Example], layers: tuple[int, ...],
           tail: int) -> dict[int, torch.Tensor]:
    """Per layer, the FFN inputs at the question/answer rows of these examples (every
    earlier session's: hundreds of dialogues, so their shared system prompt runs once)."""
    rows = {l: [torch.zeros(0, twin.config.hidden_size, device=twin.device)] for l in layers}
    prefix, rest = _after_shared(twin, examples, tail)
    for start, chunk, seen in _ffn_passes(twin, [e.tokens for e in rest], layers, prefix=prefix, keep=True):
        for l in layers:
            rows[l] += [e.question(seen[l][i], tail) for i, e in enumerate(rest[start:start + len(chunk)])]
    return {l: torch.cat(r) for l, r in rows.items()}
