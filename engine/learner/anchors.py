"""Generic text as the edited layers see it: what a new memory must leave alone.

Computed once per model and layer set (``engine.learning.anchors`` caches it on disk); the
locality term reads these rows at every step instead of running anchor text through the
model, and the key fit reads them as negatives."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.learner.capture import activation, passes
from engine.twin import Twin
from store import paths
from store.files import Outdated, atomic_write


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
        """Write to ``path`` atomically (temp file + rename): a half-written file is never read;
        with the tensors' sha256 in its metadata: a flipped bit is never read either."""
        tensors = {f"{name}.{l}": t.contiguous().cpu()
                   for name in self.names() if name != "out_energy"
                   for l, t in getattr(self, name).items()}
        tensors |= {f"out_energy.{l}": torch.tensor(e, dtype=torch.float64)
                    for l, e in self.out_energy.items()}
        paths.private_dir(path.parent)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                                 metadata={"sha256": _sha256(tensors)}))

    @classmethod
    def load(cls, path: Path, device: torch.device, layers: tuple[int, ...]) -> Anchors:
        """Read what ``save`` wrote; ValueError (or safetensors' error) if it is not that."""
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        if metadata is None:  # no metadata at all: written before the checksum
            raise Outdated(f"{path}: written before caches carried checksums")
        recorded = metadata.get("sha256")
        if recorded != _sha256(tensors):
            raise ValueError(f"{path}: the tensors do not match their checksum")
        out = cls({}, {}, {}, {}, {}, {})
        for key, t in tensors.items():
            name, layer = key.rsplit(".", 1)
            if name not in cls.names():
                raise ValueError(f"{path}: unexpected tensor {key!r}")
            getattr(out, name)[int(layer)] = float(t) if name == "out_energy" else t.to(device)
        if any(set(getattr(out, name)) != set(layers) for name in cls.names()):
            raise ValueError(f"{path}: not the anchors of layers {list(layers)}")
        return out


def _sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Of the tensors' names, types, shapes and bytes (a cache from before it is rebuilt)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def anchors_for(twin: Twin, texts: list[list[int]], layers: tuple[int, ...],
                answer_starts: list[int | None] | None = None, max_rows: int = 8192,
                question_tail: int = 0,
                progress: Callable[[float], None] | None = None) -> Anchors:
    """Run generic text once and keep what the locality term needs (once per model).

    ``answer_starts[i]``: where the answer begins in dialogue anchor i (None: plain text);
    its answer rows start ``question_tail`` positions before the one that predicts it.
    """
    answer_starts = answer_starts or [None] * len(texts)
    inputs: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    # plain text's rows, sampled on their own: see below
    prose: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    answers: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for start, chunk, seen in passes(twin, texts, layers):
        if progress is not None:
            progress(start / len(texts))
        starts = answer_starts[start:start + len(chunk)]
        for l in layers:
            x = seen[l]
            rows = torch.cat([x[i, : len(s)] for i, s in enumerate(chunk)])
            inputs[l].append(rows)
            prose[l] += [x[i, : len(s)]
                         for i, (s, a) in enumerate(zip(chunk, starts, strict=True)) if a is None]
            answers[l] += [x[i, max(a - 1 - question_tail, 0): len(s)]
                           for i, (s, a) in enumerate(zip(chunk, starts, strict=True))
                           if a is not None]
    pick = torch.Generator().manual_seed(0)
    out = Anchors({}, {}, {}, {}, {}, {})
    for l in layers:
        out.start[l] = inputs[l][0][:1]
        rows = torch.cat(inputs[l])
        # Dialogues outnumber prose many times over: a sample of all rows would leave prose
        # (and the perplexity of plain text) almost unguarded, so each kind gets max_rows.
        plain = torch.cat(prose[l]) if prose[l] else rows[:0]
        out.inputs[l], out.prose[l] = (
            sample[torch.randperm(sample.shape[0], generator=pick)[:max_rows]]
            for sample in (rows, plain))
        both = torch.cat([out.inputs[l], out.prose[l]])
        out.activity[l] = activation(twin, l, both).pow(2).mean(0).sqrt()
        out.out_energy[l] = float(twin.layers[l].mlp(both).pow(2).sum(-1).mean())
        out.answers[l] = torch.cat(answers[l]) if answers[l] else rows[:0]
    return out
