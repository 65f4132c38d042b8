"""What the edited layers' FFNs see: one capture helper (MEMIT's nethook), and the passes
that run many sequences through the twin to collect it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.utils.rnn import pad_sequence

from engine.twin import Prefix, Twin


@contextmanager
def ffn_inputs(twin: Twin, layers: tuple[int, ...]) -> Iterator[dict[int, torch.Tensor]]:
    """A dict that each forward pass fills with each of ``layers``' FFN input (B, T, d)."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [twin.layers[l].mlp.register_forward_pre_hook(
        lambda m, a, l=l: seen.__setitem__(l, a[0])) for l in layers]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def ffn_added(twin: Twin, changes: dict[int, object]) -> Iterator[None]:
    """Each layer's FFN output plus ``changes[layer](its input)`` while inside."""
    hooks = [twin.layers[l].mlp.register_forward_hook(
        lambda m, a, out, change=change: out + change(a[0])) for l, change in changes.items()]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def passes(twin: Twin, sequences: list[list[int]], layers: tuple[int, ...], size: int = 16,
           prefix: Prefix | None = None, keep: bool = False
           ) -> Iterator[tuple[int, list[list[int]], dict[int, torch.Tensor]]]:
    """Run ``sequences`` (continuing ``prefix``, if given) in chunks up to the last of
    ``layers``; per chunk, its offset, the chunk, and each layer's FFN input. ``keep``: the
    states below the first of ``layers`` come from (and go to) the twin's cache of them."""
    first = min(layers) if keep else 0
    for start in range(0, len(sequences), size):
        chunk = sequences[start:start + size]
        with ffn_inputs(twin, layers) as seen:
            batch = twin.batch(chunk, prefix)
            h = (pad_sequence(twin.entering(chunk, first, prefix), batch_first=True) if keep
                 else twin.embed(batch))
            twin.run(h, batch, first, max(layers) + 1)
        yield start, chunk, seen


def activation(twin: Twin, layer: int, x: torch.Tensor) -> torch.Tensor:
    """Every neuron's activation in ``layer``'s FFN for inputs ``x`` (…, d_model) → (…, d_ff)."""
    mlp = twin.layers[layer].mlp
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
