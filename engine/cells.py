"""Working-memory cells: per session, per layer, a vector that carries what fell out of the window.

Write: when a turn leaves the context window, each cell layer's hidden states of that turn
(llama.cpp, a second context with an eval callback) are folded into the cell with decay:
``s ← λ·s + Σ h``, ``n ← λ·n + tokens``. Turns still in the window are not written: the model
sees them directly, and a cell that repeats them only adds side effects (and the capture would
cost a forward pass per turn in sessions that never overflow).

Read: ``v_l = g_l · ‖h‖ₘₑ𝒹 · unit(s_l/n − μ_l)`` added to layer l's output by llama.cpp's
control vector, only while turns are out of the window and only for a turn that is about what
the cells hold: the centred mean of the user's message at the probe layer must point the same
way as the cell there (cosine > τ). μ is the model's mean hidden state on generic dialogue (the
raw mean of any text is mostly that shared component). The gates g are learned
(``engine/cell_training.py``) and versioned with the overlay; without them nothing is read.
A constant vector shifts every position, so an ungated read that helps facts pushes unrelated
text off course; the turn gate keeps it to the turns that ask back. One fixed-size vector per
layer, so a step costs the same with 1 or 100 past turns.

Turns are read as the model's prompt format writes them (``Runtime.turn_spans``): the plain
dialogue for a base model, its own chat template for an instruction-tuned one, whose hidden
states on its chat's turns are the ones a read must match.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import ChatTemplateRefused, EngramError
from engine.prompt import ChatTemplate, Turn
from store import paths
from store.files import atomic_write, read_jsonl

if TYPE_CHECKING:
    from engine.llama_native import HiddenStates
    from engine.runtime import Runtime

FORMAT = 1
_MAGIC = b"ENGCELL1"
CONTEXT_TURNS = 4  # earlier turns read before the ones being written
QUERY_TOKENS = 256  # of a user message, for its relevance to the cells


class CellsRefused(EngramError):
    """Stored cells that cannot be used (another model, another rule, damaged)."""


@dataclass(frozen=True)
class CellRule:
    """How cells are written and read; the defaults are what ``engram bench cells`` measured."""

    # None: every layer the control vector reaches (1…n−2); negative: counted from the end
    layers: tuple[int, ...] | None = None
    probe_layer: int = -3  # where a turn is compared with the cells (-3 is layer 15 of 18)
    tau: float = 0.25  # read only for turns whose cosine with the cells is above this
    decay: float = 0.8  # per turn folded in
    chat_template: bool = False  # turns are written in the model's chat template

    def resolve(self, n_layer: int, chat_template: bool = False) -> CellRule:
        """The same rule with absolute layer numbers for a model of ``n_layer`` layers, and
        its prompt format."""
        layers = self.layers or range(1, n_layer - 1)
        layers = tuple(sorted({layer + n_layer if layer < 0 else layer for layer in layers}))
        probe = self.probe_layer + n_layer if self.probe_layer < 0 else self.probe_layer
        if any(layer < 1 or layer >= n_layer - 1 for layer in layers):
            raise ValueError(f"cell layers must be within 1…{n_layer - 2} (llama.cpp's control "
                             "vector starts at layer 1; the last layer keeps only output rows)")
        if probe not in layers:
            raise ValueError(f"the probe layer {probe} must be one of the cell layers {layers}")
        return replace(self, layers=layers, probe_layer=probe, chat_template=chat_template)

    @property
    def resolved_layers(self) -> tuple[int, ...]:
        """The cell layers of a rule that names them (one from ``resolve``, or built with
        explicit layers); the default rule names none until it is resolved for a model."""
        if self.layers is None:
            raise TypeError("the cell rule's layers are not resolved (call resolve(n_layer))")
        return self.layers

    def key(self) -> str:
        """What cells are stored with (and the baseline cached by): cells another rule wrote
        are not read. A chat template's key is its own: before cells followed the model's
        prompt format its turns were written in the plain dialogue, and those cells are
        refused. The plain dialogue's is unchanged, as are its tokens."""
        key = [FORMAT, list(self.resolved_layers)]
        return json.dumps(key + ["chat template"] if self.chat_template else key)

    def reads_with(self, gates_rule: str | None) -> bool:
        """Whether read gates learned under the rule keyed ``gates_rule`` read this rule's
        cells: the same key, or none (gates kept from before the key was, all learned on the
        plain dialogue) for a rule that writes the plain dialogue."""
        return gates_rule == self.key() or (gates_rule is None and not self.chat_template)


@dataclass(frozen=True)
class Baseline:
    """Per cell layer: the mean hidden state and the median token norm on generic dialogue."""

    mean: np.ndarray  # (len(layers), n_embd)
    norm: np.ndarray  # (len(layers),)


@dataclass
class Cells:
    """One session's cells. ``folded``: how many of the session's oldest turns are written in."""

    layers: tuple[int, ...]
    n_layer: int
    sums: np.ndarray  # (len(layers), n_embd), decayed sums of hidden states
    count: float = 0.0  # decayed token count
    folded: int = 0
    model_sha256: str = ""
    rule_key: str = ""
    enabled: bool = True

    @classmethod
    def empty(cls, rule: CellRule, n_layer: int, n_embd: int, model_sha256: str) -> Cells:
        layers = rule.resolved_layers
        return cls(layers, n_layer, np.zeros((len(layers), n_embd), np.float32),
                   model_sha256=model_sha256, rule_key=rule.key())

    def write(self, states: np.ndarray, decay: float) -> None:
        """Fold one turn in: ``states`` is (len(layers), n_tokens, n_embd)."""
        self.sums = (decay * self.sums + states.sum(axis=1)).astype(np.float32)
        self.count = decay * self.count + states.shape[1]
        self.folded += 1

    def reset(self) -> None:
        self.sums = np.zeros_like(self.sums)
        self.count, self.folded = 0.0, 0

    def directions(self, baseline: Baseline) -> np.ndarray | None:
        """Per layer, the read direction at unit gate: the centred mean, rescaled to the
        layer's median token norm (n_layer × n_embd, zero outside the cell layers)."""
        if self.count <= 0:
            return None
        out = np.zeros((self.n_layer, self.sums.shape[1]), np.float32)
        for i, layer in enumerate(self.layers):
            v = self.sums[i] / self.count - baseline.mean[i]
            length = float(np.linalg.norm(v))
            if length > 0:
                out[layer] = v * (baseline.norm[i] / length)
        return out

    def read(self, gates: np.ndarray | None, baseline: Baseline) -> np.ndarray | None:
        """The control vector: each layer's direction × its gate; None when there is nothing
        to read (no cells, no gates)."""
        directions = self.directions(baseline)
        if directions is None or gates is None or np.shape(gates) != (self.n_layer,) \
                or not np.any(gates):
            return None
        return (directions * np.asarray(gates, np.float32)[:, None]).astype(np.float32)

    def relevance(self, query: np.ndarray, rule: CellRule, baseline: Baseline) -> float:
        """Cosine, at the probe layer, between a turn's centred mean hidden state and the
        cell's: how much the turn is about what the cells hold."""
        i = self.layers.index(rule.probe_layer)
        cell = self.sums[i] / max(self.count, 1e-9) - baseline.mean[i]
        turn = query - baseline.mean[i]
        denominator = float(np.linalg.norm(cell) * np.linalg.norm(turn))
        return float(cell @ turn) / denominator if denominator > 0 else 0.0

    def magnitudes(self, gates: np.ndarray | None, baseline: Baseline | None) -> list[float]:
        """Per layer, the norm of what a read adds (the TUI's memory panel)."""
        vectors = None if baseline is None else self.read(gates, baseline)
        return [0.0] * self.n_layer if vectors is None else np.linalg.norm(vectors, axis=1).tolist()

    # -- bytes (stored in SQLite with the session) -----------------------------------------

    def to_bytes(self) -> bytes:
        header = json.dumps({"format": FORMAT, "layers": list(self.layers), "n_layer": self.n_layer,
                             "n_embd": self.sums.shape[1], "count": self.count,
                             "folded": self.folded, "model_sha256": self.model_sha256,
                             "rule": self.rule_key}).encode()
        return _MAGIC + struct.pack("<I", len(header)) + header + self.sums.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, model_sha256: str, rule: CellRule) -> Cells:
        try:
            if data[:8] != _MAGIC:
                raise ValueError("not a cells record")
            (size,) = struct.unpack("<I", data[8:12])
            head = json.loads(data[12: 12 + size])
            shape = (len(head["layers"]), head["n_embd"])
            sums = np.frombuffer(data[12 + size:], dtype="<f4")
            if sums.size != shape[0] * shape[1]:
                raise ValueError(f"{sums.size} values instead of {shape[0] * shape[1]}")
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise CellsRefused(
                f"the session's saved cells are damaged ({exc}); starting empty") from None
        if head["format"] != FORMAT or head["rule"] != rule.key():
            raise CellsRefused("the session's saved cells were written by another cell rule; "
                               "starting empty")
        if head["model_sha256"] != model_sha256:
            raise CellsRefused("the session's saved cells belong to another model; starting empty")
        return cls(tuple(head["layers"]), head["n_layer"], sums.reshape(shape).astype(np.float32),
                   head["count"], head["folded"], head["model_sha256"], head["rule"])


@dataclass
class CellWriter:
    """Hidden states of turns for one model: the capture context and the model's baseline.
    ``rule`` is resolved for the model (its layers, its prompt format).

    Created on first use (when a turn first leaves a window): sessions that fit cost nothing.
    """

    runtime: Runtime  # the chat's (the capture context shares its weights)
    rule: CellRule = field(default_factory=CellRule)
    _capture: HiddenStates | None = None
    _baseline: Baseline | None = None

    def __post_init__(self) -> None:
        from engine import llama_native

        self.rule = self.rule.resolve(llama_native.n_layer(self.runtime.llm),
                                      isinstance(self.runtime.format, ChatTemplate))

    def fold(self, cells: Cells, turns: list[Turn], start: int, end: int) -> None:
        """Write ``turns[start:end]`` into ``cells``, one turn at a time. They are read in one
        pass after up to CONTEXT_TURNS earlier turns: a turn's hidden states carry what it
        means in its conversation (read alone, "Yes, that one" means nothing)."""
        first = max(0, start - CONTEXT_TURNS)
        tokens, spans = self.runtime.turn_spans(turns[first:end])
        states = self.states(tokens)
        for span in spans[start - first:]:
            cells.write(_rows(states, span), self.rule.decay)

    def written(self, turns: list[Turn]) -> Cells:
        """The cells a session holds once ``turns`` have left its window."""
        from engine import llama_native

        llm = self.runtime.llm
        cells = Cells.empty(self.rule, llama_native.n_layer(llm), llm.n_embd(),
                            self.runtime.model.sha256)
        self.fold(cells, turns, 0, len(turns))
        return cells

    def query(self, text: str) -> np.ndarray:
        """The mean probe-layer hidden state of a user's message read on its own (what
        ``Cells.relevance`` compares with the cells); a long paste is judged by its start."""
        tokens, _ = self.runtime.turn_spans([Turn("user", text)])
        states = self.states(tokens[:QUERY_TOKENS])
        return states[self.rule.resolved_layers.index(self.rule.probe_layer)].mean(axis=0)

    def states(self, tokens: list[int]) -> np.ndarray:
        """(len(layers), n_tokens − 1, n_embd) hidden states; the first token's row is left
        out (a BOS, or a model's first token where it has none: the position every later one
        attends to, its norm hundreds of times a word's)."""
        from engine import llama_native
        from engine.runtime import default_threads

        layers = self.rule.resolved_layers
        if self._capture is None:
            # Half the threads: llama.cpp's spinning thread barrier makes small decodes ten
            # times slower when the machine is busy, and capture is rarely worth a whole core.
            self._capture = llama_native.HiddenStates(self.runtime.llm, list(layers),
                                                      n_threads=max(1, default_threads() // 2))
        rows = self._capture(tokens)
        return np.stack([rows[layer][1:] for layer in layers])

    def baseline(self) -> Baseline:
        """Computed once per model and rule from the bundled filler dialogue, cached on disk."""
        if self._baseline is None:
            cache = paths.private_dir(paths.cache() / "cells")
            rule = hashlib.sha256(self.rule.key().encode()).hexdigest()[:12]
            file = cache / f"{self.runtime.model.sha256[:16]}-{rule}.npz"
            if file.exists():
                saved = np.load(file)
                self._baseline = Baseline(saved["mean"], saved["norm"])
            else:
                turns = calibration_turns()
                states = np.concatenate([self._alone(turns, i) for i in range(len(turns))],
                                        axis=1)
                self._baseline = Baseline(states.mean(axis=1),
                                          np.median(np.linalg.norm(states, axis=2), axis=1))
                baseline = self._baseline

                def save(tmp: Path) -> None:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, mean=baseline.mean, norm=baseline.norm)

                atomic_write(file, save)
        return self._baseline

    def _alone(self, turns: list[Turn], i: int) -> np.ndarray:
        """Turn i's hidden states read on its own; after the turn before it where the format
        will not open a dialogue with it (a template that has the user speak first)."""
        try:
            tokens, spans = self.runtime.turn_spans(turns[i: i + 1])
        except ChatTemplateRefused:
            tokens, spans = self.runtime.turn_spans(turns[max(i - 1, 0): i + 1])
        return _rows(self.states(tokens), spans[-1])

    def close(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None


def _rows(states: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """The rows of ``states`` (``CellWriter.states``) of the tokens in ``span``."""
    start, end = span
    return states[:, max(start, 1) - 1: end - 1]


def calibration_turns() -> list[Turn]:
    """Generic dialogue (the bench's filler turns): what an ordinary turn looks like inside."""
    turns = []
    for record in read_jsonl(paths.eval_data("filler-turns.jsonl")):
        user, assistant = record["turns"]
        turns += [Turn("user", user), Turn("assistant", assistant)]
    return turns
