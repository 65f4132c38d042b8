"""Learning the cells' read gates: one scalar per cell layer, trained in the torch twin.

Each training conversation has early turns out of the window. Its cells are written by
llama.cpp exactly as a session writes them; the twin then reads the window and the probe's
question (in the model's prompt format, as the chat holds them) with ``gate_l ·
direction_l`` added to each cell layer's output (what llama.cpp's control vector does) and
scores the expected answer. The loss is that answer's NLL plus the
KL divergence the read causes on everyday prose (next-token distributions with a training
conversation's cells vs without): a constant vector shifts every position, and recall must
not be bought by pushing unrelated text off course. A penalty on unrelated *answers* instead
fitted the training conversations and did not carry over (neutral answers +48 nats on held-out
cases vs +16 with the KL term, stop 13's throwaway). Layers below the first cell layer do not
depend on the gates: their output is computed once, without gradients.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.cell_conversations import Case, asked
from engine.cells import CellWriter
from engine.errors import EngramError
from engine.twin import Batch, Twin


@dataclass
class GateRecipe:
    steps: int = 24
    lr: float = 0.05
    kl_weight: float = 1.0  # × the mean per-token KL on prose
    prose: int = 4  # paragraphs of prose per step, each with another conversation's cells
    prose_tokens: int = 128


@dataclass
class _Batch:
    """Sequences run up to the first cell layer once (no gradient), and what is scored."""

    batch: Batch
    hidden: torch.Tensor  # input of the first cell layer
    scored: list[int]  # answer tokens scored at the end of each sequence


def _prepare(twin: Twin, sequences: list[list[int]], scored: list[int], first: int) -> _Batch:
    batch = twin.batch(sequences)
    with torch.no_grad():
        hidden = twin.run(twin.embed(batch), batch, 0, first)
    return _Batch(batch, hidden, scored)


def _run(twin: Twin, data: _Batch, first: int, layers: tuple[int, ...],
         vectors: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states, each cell layer's output shifted by ``vectors`` (n_layer × d for
    the whole batch, or batch × n_layer × d: one per sequence)."""
    h = data.hidden
    for i in range(first, twin.n_layer):
        h = twin.run(h, data.batch, i, i + 1)
        if vectors is not None and i in layers:
            h = h + (vectors[:, i, None] if vectors.dim() == 3 else vectors[i])
    return h


def _answer_nll(twin: Twin, data: _Batch, h: torch.Tensor) -> torch.Tensor:
    """Summed NLL of each sequence's scored tail."""
    out = []
    for k, (n, m) in enumerate(zip(data.batch.lengths, data.scored, strict=True)):
        logits = twin.logits(h[k, n - m - 1: n - 1])
        out.append(F.cross_entropy(logits, data.batch.ids[k, n - m: n], reduction="sum"))
    return torch.stack(out)


def train(twin: Twin, writer: CellWriter, cases: list[Case], prose: list[str],
          recipe: GateRecipe | None = None, init: np.ndarray | None = None,
          progress: Callable[[float, str], None] | None = None,
          cancel: threading.Event | None = None) -> np.ndarray:
    """Gates (one per model layer, zero outside the cell layers) fitted on ``cases``."""
    recipe = recipe or GateRecipe()
    layers = writer.rule.resolved_layers
    first = min(layers)
    if not cases or not prose:
        raise EngramError("no conversations or prose to learn the cells' read from")
    baseline = writer.baseline()

    examples, directions = [], []
    for case in cases:
        cells = writer.written(case.dropped)
        questions = [asked(writer.runtime, case.kept, probe) for probe in case.probes]
        examples.append(_prepare(twin, [prompt + answer for prompt, answer in questions],
                                 [len(answer) for _, answer in questions], first))
        directions.append(torch.from_numpy(cells.directions(baseline)).to(twin.device))
    paragraphs = [writer.runtime.tokenize(text)[: recipe.prose_tokens]
                  for text in prose[: recipe.prose]]
    text = _prepare(twin, paragraphs, [], first)
    with torch.no_grad():
        base = [F.log_softmax(twin.logits(row[:n]), -1) for row, n in
                zip(_run(twin, text, first, layers, None), text.batch.lengths, strict=True)]

    mask = torch.zeros(twin.n_layer, device=twin.device)
    mask[list(layers)] = 1.0
    start = torch.zeros(twin.n_layer) if init is None else torch.as_tensor(init)
    gates = start.to(twin.device, torch.float32).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([gates], lr=recipe.lr)
    for step in range(recipe.steps):
        if cancel is not None and cancel.is_set():
            raise EngramError("cancelled")
        optimiser.zero_grad()
        total = 0.0
        for data, direction in zip(examples, directions, strict=True):
            h = _run(twin, data, first, layers, (gates * mask)[:, None] * direction)
            loss = _answer_nll(twin, data, h).mean() / len(examples)
            loss.backward()
            total += float(loss.detach())
        shifted = torch.stack([directions[(step + k) % len(directions)]
                               for k in range(len(paragraphs))])
        h = _run(twin, text, first, layers, (gates * mask)[None, :, None] * shifted)
        kls = [F.kl_div(F.log_softmax(twin.logits(row[:n]), -1), before, log_target=True,
                        reduction="batchmean")
               for row, n, before in zip(h, text.batch.lengths, base, strict=True)]
        kl = sum(kls[1:], kls[0]) / len(paragraphs)
        (recipe.kl_weight * kl).backward()
        optimiser.step()
        if progress is not None:
            progress((step + 1) / recipe.steps, f"cells' read, step {step + 1}: answers "
                     f"{total:.2f}, prose KL {float(kl.detach()):.3f}")
    return (gates * mask).detach().cpu().numpy().astype(np.float32)
