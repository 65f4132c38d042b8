"""The edit itself: k neurons of one layer re-purposed as memory cells.

Their input rows in ``ffn_gate``/``ffn_up`` (the key: *when* a neuron fires) and their output
column in ``ffn_down`` (the value: *what* it writes) get deltas; the base weights stay
frozen, and the delta is whole neuron vectors, exported exactly as a LoRA."""

from __future__ import annotations

import torch

from engine.overlay import NeuronBlock
from engine.twin import Twin


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

    def key(self, gate: torch.Tensor, positives: list[torch.Tensor]) -> None:
        """Make neuron j a detector of ``gate[j]`` (the fitted key, ``keys.fit``): its gate
        row reads that direction, its up row the same, 1 at its positives' mean."""
        with torch.no_grad():
            for j, (pos, g) in enumerate(zip(positives, gate, strict=True)):
                self.gate[j] = g - self.w_gate[j]
                self.up[j] = g / (pos.mean(0) @ g) - self.w_up[j]
            for name in ("gate", "up"):  # the cap keeps training near these keys
                self.caps[name] = max(self.caps[name],
                                      1.5 * float(getattr(self, name).norm(dim=1).max()))

    def activation(self, x: torch.Tensor, edited: bool = True) -> torch.Tensor:
        """These neurons' activations for FFN inputs ``x`` (…, d_model) → (…, k)."""
        gate, up = ((self.w_gate + self.gate, self.w_up + self.up) if edited
                    else (self.w_gate, self.w_up))
        return self.mlp.act_fn(x @ gate.T) * (x @ up.T)

    def change(self, x: torch.Tensor, strength: torch.Tensor | float = 1.0) -> torch.Tensor:
        """What the edit adds to the FFN output for inputs ``x``; ``strength`` scales the
        new neurons' activations (training: as weakly as a paraphrase matches the key)."""
        return (strength * self.activation(x)) @ (self.w_down + self.down).T \
            - self.activation(x, False) @ self.w_down.T

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
