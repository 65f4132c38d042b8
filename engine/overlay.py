"""The sparse overlay: learned FFN neurons, their exact LoRA encoding, and their file format.

An overlay changes whole neurons of FFN matrices: columns of ``ffn_down`` (what a neuron
writes) or rows of ``ffn_up``/``ffn_gate`` (what it reads). Such a delta is exactly a LoRA
with one-hot factors (DESIGN.md, "A sparse overlay is exactly a LoRA"), so llama.cpp applies
it as an adapter and hot-swaps it without reloading the model.

On disk a version is a directory: ``overlay.safetensors`` (neuron indices and deltas) and
``manifest.json`` (what it is, what it was learned from, the safetensors file's sha256, and
since format 2 its own fields' sha256: a flipped digit of the scale was read as another scale).
A directory is written under a hidden temporary name and renamed into place, so a crash
leaves either the whole version or nothing (and a temporary that ``engine.leftovers`` tidies).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine.architectures import gate_up_fused
from engine.errors import EngramError
from store import paths
from store.files import atomic_write, open_private, temporary, typed_fields

MATRICES = ("ffn_down", "ffn_up", "ffn_gate")
# each matrix's name in a transformers model's FFN (the torch twin, PEFT exports)
PROJECTIONS = {"ffn_down": "down_proj", "ffn_up": "up_proj", "ffn_gate": "gate_proj"}
FORMAT = "engram-overlay"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: written before manifests carried their own checksum
MANIFEST_SHA256 = "manifest_sha256"
TENSORS_FILE = "overlay.safetensors"
MANIFEST_FILE = "manifest.json"


class OverlayError(EngramError):
    """An overlay cannot be used; the message says which and why."""


class ForeignOverlay(OverlayError):
    """The overlay was learned on another base model (it is fine, just not for this model)."""


class CorruptOverlay(OverlayError):
    """The overlay's files are damaged or incomplete."""


@dataclass(frozen=True, eq=False)
class NeuronBlock:
    """Whole-neuron changes to one FFN matrix of one layer.

    ``ffn_down`` (W: d_model × d_ff): ``delta`` is (d_model, k), ΔW[:, neurons[j]] = delta[:, j].
    ``ffn_up``/``ffn_gate`` (W: d_ff × d_model): ``delta`` is (k, d_model),
    ΔW[neurons[j], :] = delta[j, :].
    ``session_id`` names the session that owns these neurons (None: shared).
    """

    layer: int
    matrix: str
    neurons: np.ndarray
    delta: np.ndarray
    session_id: int | None = None

    def __post_init__(self) -> None:
        if self.matrix not in MATRICES:
            raise ValueError(f"matrix must be one of {MATRICES}, not {self.matrix!r}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, not {self.layer}")
        neurons = np.ascontiguousarray(self.neurons, dtype=np.int64)
        delta = np.ascontiguousarray(self.delta, dtype=np.float32)
        neuron_axis = 1 if self.matrix == "ffn_down" else 0
        if neurons.ndim != 1 or delta.ndim != 2 or delta.shape[neuron_axis] != neurons.size:
            raise ValueError(
                f"{self.matrix} block of layer {self.layer}: {neurons.shape} neurons do not fit "
                f"a delta of shape {delta.shape}")
        if not np.isfinite(delta).all():
            raise ValueError(f"{self.matrix} block of layer {self.layer} holds NaN or inf")
        object.__setattr__(self, "neurons", neurons)
        object.__setattr__(self, "delta", delta)

    @property
    def d_model(self) -> int:
        return self.delta.shape[0] if self.matrix == "ffn_down" else self.delta.shape[1]

    @property
    def vectors(self) -> np.ndarray:
        """One row per neuron (k × d_model), whatever the matrix's orientation."""
        return self.delta.T if self.matrix == "ffn_down" else self.delta


def blocks_without(blocks: list[NeuronBlock], neurons: dict[int, set[int]]
                   ) -> list[NeuronBlock]:
    """``blocks`` without some neurons (per layer), in every matrix: the rest of each change
    stays exactly as it was."""
    out = []
    for b in blocks:
        keep = ~np.isin(b.neurons, sorted(neurons.get(b.layer, ())))
        if keep.all():
            out.append(b)
        elif keep.any():
            out.append(replace(b, neurons=b.neurons[keep],
                               delta=b.delta[:, keep] if b.matrix == "ffn_down"
                               else b.delta[keep]))
    return out


@dataclass(frozen=True, eq=False)
class SparseOverlay:
    """Neuron blocks on one base model. ``scale`` multiplies the whole change at run time
    (llama.cpp's adapter scale); ``d_model``/``d_ff`` are the base model's FFN sizes, needed
    for the one-hot factors and to check neuron indices. ``cell_gates`` (one per layer, or
    None) are the working-memory cells' learned read strengths (``engine/cell_training.py``):
    versioned here so a rollback or reset takes them back too; never part of the LoRA.
    ``cell_rule`` is the key of the cell rule they were learned under (``CellRule.key``; None
    in versions from before it was kept, whose cells were all in the plain dialogue)."""

    blocks: list[NeuronBlock]
    base_sha256: str
    scale: float = 1.0
    d_model: int = field(kw_only=True)
    d_ff: int = field(kw_only=True)
    cell_gates: np.ndarray | None = field(default=None, kw_only=True)
    cell_rule: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", list(self.blocks))
        for b in self.blocks:
            if b.d_model != self.d_model:
                raise ValueError(f"{b.matrix} block of layer {b.layer} has d_model {b.d_model}, "
                                 f"the overlay {self.d_model}")
            if b.neurons.size and (b.neurons.min() < 0 or b.neurons.max() >= self.d_ff):
                raise ValueError(f"{b.matrix} block of layer {b.layer} names neurons outside "
                                 f"0..{self.d_ff - 1}")
        if not np.isfinite(self.scale):
            raise ValueError(f"scale must be finite, not {self.scale}")
        if self.cell_gates is not None and not np.all(np.isfinite(self.cell_gates)):
            raise ValueError("cell gates must be finite")

    # -- what it is -----------------------------------------------------------

    @property
    def sessions(self) -> list[int]:
        return sorted({b.session_id for b in self.blocks if b.session_id is not None})

    @property
    def layers(self) -> list[int]:
        return sorted({b.layer for b in self.blocks})

    @property
    def matrices(self) -> list[str]:
        return [m for m in MATRICES if any(b.matrix == m for b in self.blocks)]

    @property
    def trainable_params(self) -> int:
        return sum(b.delta.size for b in self.blocks)

    @property
    def nbytes(self) -> int:
        return sum(b.delta.nbytes + b.neurons.nbytes for b in self.blocks)

    def _groups(self) -> dict[tuple[int, str], list[NeuronBlock]]:
        groups: dict[tuple[int, str], list[NeuronBlock]] = {}
        for b in sorted(self.blocks, key=lambda b: (b.layer, MATRICES.index(b.matrix))):
            groups.setdefault((b.layer, b.matrix), []).append(b)
        return groups

    def dense_delta(self, layer: int, matrix: str) -> np.ndarray:
        """The full ΔW of one matrix, unscaled (the model computes W + scale·ΔW); a neuron
        named by several blocks gets their sum."""
        shape = (self.d_model, self.d_ff) if matrix == "ffn_down" else (self.d_ff, self.d_model)
        out = np.zeros(shape, dtype=np.float32)
        for b in self._groups().get((layer, matrix), []):
            if matrix == "ffn_down":
                # numpy's stubs take no slice in ufunc.at's indices; numpy does
                np.add.at(out, (slice(None), b.neurons), b.delta)  # type: ignore[arg-type]
            else:
                np.add.at(out, b.neurons, b.delta)
        return out

    def neuron_norms(self) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
        """Per (layer, matrix): the changed neurons and the L2 norm of each one's total change."""
        out = {}
        for key, blocks in self._groups().items():
            neurons, inverse = np.unique(np.concatenate([b.neurons for b in blocks]),
                                         return_inverse=True)
            summed = np.zeros((neurons.size, self.d_model), dtype=np.float64)
            np.add.at(summed, inverse, np.concatenate([b.vectors for b in blocks]))
            out[key] = (neurons, np.linalg.norm(summed, axis=1))
        return out

    def layer_norms(self) -> dict[int, float]:
        """Per layer: the L2 (Frobenius) norm of the layer's whole change, for the UI."""
        squares: dict[int, float] = {}
        for (layer, _), (_, norms) in self.neuron_norms().items():
            squares[layer] = squares.get(layer, 0.0) + float(np.sum(norms ** 2))
        return {layer: float(np.sqrt(s)) for layer, s in sorted(squares.items())}

    # -- changing it ----------------------------------------------------------

    def without_session(self, session_id: int) -> SparseOverlay:
        """The overlay with one session's neurons removed (forget that session)."""
        return replace(self, blocks=[b for b in self.blocks if b.session_id != session_id])

    def without_neurons(self, session_id: int | None, neurons: dict[int, set[int]]
                        ) -> SparseOverlay:
        """The overlay with some of one session's neurons (per layer) unchanged again
        (``blocks_without``); other sessions' blocks stay as they are."""
        return replace(self, blocks=[c for b in self.blocks for c in (
            blocks_without([b], neurons) if b.session_id == session_id else [b])])

    def merge(self, other: SparseOverlay) -> SparseOverlay:
        """Both overlays' blocks in one (neurons both change add up)."""
        mine = (self.base_sha256, self.d_model, self.d_ff, self.scale)
        theirs = (other.base_sha256, other.d_model, other.d_ff, other.scale)
        if mine != theirs:
            raise ValueError(f"cannot merge overlays of different base models or scales: "
                             f"{mine} vs {theirs}")
        return replace(self, blocks=self.blocks + other.blocks)

    # -- as a LoRA --------------------------------------------------------------

    def lora_tensors(self, gate_up_fused: bool = False
                     ) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
        """Per (layer, matrix): (lora_a, lora_b) with lora_b @ lora_a == dense_delta exactly.

        down: lora_a = Eₛᵀ (r × d_ff) one-hot, lora_b = the columns (d_model × r);
        up/gate: lora_a = the rows (r × d_model), lora_b = Eₛ (d_ff × r).
        Blocks on the same matrix are stacked along r. ``gate_up_fused``: the model's
        ``ffn_up`` holds the gate's rows then the up rows (Phi 3), so gate and up blocks are
        one ``ffn_up`` pair whose one-hots address row j (gate) or d_ff + j (up) of it.
        """
        out = {}
        for (layer, matrix), blocks in self._groups().items():
            neurons = np.concatenate([b.neurons for b in blocks])
            rows = self.d_ff
            if gate_up_fused and matrix != "ffn_down":
                rows, neurons = 2 * self.d_ff, neurons + (self.d_ff if matrix == "ffn_up" else 0)
                matrix = "ffn_up"
            one_hot = np.zeros((neurons.size, rows), dtype=np.float32)
            one_hot[np.arange(neurons.size), neurons] = 1.0
            if matrix == "ffn_down":
                out[layer, matrix] = (one_hot, np.concatenate([b.delta for b in blocks], axis=1))
                continue
            pair = (np.concatenate([b.delta for b in blocks]), np.ascontiguousarray(one_hot.T))
            if (layer, matrix) in out:  # the fused tensor's other half: stack along r
                pair = (np.concatenate([out[layer, matrix][0], pair[0]]),
                        np.concatenate([out[layer, matrix][1], pair[1]], axis=1))
            out[layer, matrix] = pair
        return out


def write_gguf_lora(overlay: SparseOverlay, path: str | os.PathLike, arch: str) -> Path:
    """Export as a GGUF LoRA adapter llama.cpp loads (atomically: temp file, then rename),
    addressing ``arch``'s FFN tensors as its GGUF lays them out.

    llama.cpp scales each pair by ``adapter_scale * alpha / r`` with r read per tensor, but
    skips the ``alpha / r`` factor when alpha is 0 (``llama_adapter_lora_weight::get_scale``).
    Writing alpha = 0 therefore applies exactly ``adapter_scale · B A`` to every matrix, even
    when matrices have different r; the overlay's ``scale`` is passed as the adapter scale.
    """
    import gguf

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch=arch)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
            fused = gate_up_fused(arch)
            for (layer, matrix), (lora_a, lora_b) in overlay.lora_tensors(fused).items():
                writer.add_tensor(f"blk.{layer}.{matrix}.weight.lora_a", lora_a)
                writer.add_tensor(f"blk.{layer}.{matrix}.weight.lora_b", lora_b)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(Path(path), write)


# -- the on-disk format ----------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of one version: enough to check the files and to explain the version."""

    base_sha256: str
    scale: float
    d_model: int
    d_ff: int
    created_at: str
    parent_version: int | None
    sessions: list[int]
    metrics: dict
    layers: list[int]
    matrices: list[str]
    blocks: list[dict]  # layer, matrix, session_id, neurons, delta_shape, per block
    trainable_params: int
    safetensors_sha256: str
    cell_rule: str | None = None  # absent from manifests written before it was kept
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(sealed_manifest({k: getattr(self, k)
                                           for k in self.__dataclass_fields__}), indent=1)


_NUMBER, _NONE = (float, int), type(None)
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "base_sha256": (str,), "scale": _NUMBER, "d_model": (int,), "d_ff": (int,),
    "created_at": (str,), "parent_version": (int, _NONE), "sessions": (list,),
    "metrics": (dict,), "layers": (list,), "matrices": (list,), "blocks": (list,),
    "trainable_params": (int,), "safetensors_sha256": (str,), "cell_rule": (str, _NONE),
    "format": (str,),
    "format_version": (int,)}
_BLOCK_TYPES: dict[str, tuple[type, ...]] = {
    "layer": (int,), "matrix": (str,), "session_id": (int, _NONE), "neurons": (list,),
    "delta_shape": (list,)}


def _fields_sha256(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def sealed_manifest(fields: dict) -> dict:
    """A manifest's fields with their checksum, as the file holds them. The fields are hashed
    as JSON gives them back (a reader hashes what it parsed, not the text)."""
    fields = json.loads(json.dumps(fields))
    fields.pop(MANIFEST_SHA256, None)
    return {**fields, MANIFEST_SHA256: _fields_sha256(fields)}


def _tensor_names(index: int, layer: int, matrix: str) -> tuple[str, str]:
    stem = f"blk.{layer}.{matrix}.{index}"
    return f"{stem}.neurons", f"{stem}.delta"


CELL_GATES = "cells.read_gates"


def save(overlay: SparseOverlay, directory: str | os.PathLike, *,
         parent_version: int | None = None, sessions: list[int] | None = None,
         metrics: dict | None = None) -> Manifest:
    """Write a new version directory whole or not at all. ``sessions`` defaults to the
    sessions that own blocks; ``metrics`` must be JSON-serialisable."""
    from safetensors.numpy import save as to_bytes

    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists: versions are never overwritten")
    tensors = {}
    for i, block in enumerate(overlay.blocks):
        neurons_name, delta_name = _tensor_names(i, block.layer, block.matrix)
        tensors[neurons_name], tensors[delta_name] = block.neurons, block.delta
    if overlay.cell_gates is not None:
        tensors[CELL_GATES] = np.asarray(overlay.cell_gates, np.float32)
    data = to_bytes(tensors)
    manifest = Manifest(
        base_sha256=overlay.base_sha256, scale=float(overlay.scale),
        d_model=overlay.d_model, d_ff=overlay.d_ff,
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        parent_version=parent_version,
        sessions=sorted(overlay.sessions if sessions is None else sessions),
        metrics=metrics or {},
        layers=overlay.layers,
        matrices=overlay.matrices,
        blocks=[{"layer": b.layer, "matrix": b.matrix, "session_id": b.session_id,
                 "neurons": b.neurons.tolist(), "delta_shape": list(b.delta.shape)}
                for b in overlay.blocks],
        trainable_params=overlay.trainable_params,
        safetensors_sha256=hashlib.sha256(data).hexdigest(),
        cell_rule=overlay.cell_rule,
    )
    text = manifest.to_json()  # fails here, before any file, if metrics are not JSON
    tmp = temporary(directory)
    shutil.rmtree(tmp, ignore_errors=True)  # a process with this pid before, killed mid-write
    paths.private_dir(tmp)  # whatever the umask: learned facts are private
    try:
        _write(tmp / TENSORS_FILE, data)
        _write(tmp / MANIFEST_FILE, text.encode())
        _fsync(tmp)
        os.replace(tmp, directory)
        _fsync(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(directory: str | os.PathLike) -> Manifest:
    directory = Path(directory)
    try:
        raw = json.loads((directory / MANIFEST_FILE).read_text())
        if raw.get("format") != FORMAT:
            raise ValueError("not an Engram overlay manifest")
        if raw.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"format version {raw.get('format_version')} is not "
                             f"{FORMAT_VERSION} (written by another Engram)")
        claimed = raw.pop(MANIFEST_SHA256, None)
        if (claimed is not None or raw["format_version"] > 1) and claimed != _fields_sha256(raw):
            raise ValueError("it does not match its checksum")
        raw.setdefault("cell_rule", None)
        typed_fields(raw, _MANIFEST_TYPES, "the manifest")
        for i, entry in enumerate(raw["blocks"]):
            typed_fields(entry, _BLOCK_TYPES, f"block {i}")
        return Manifest(**{k: raw[k] for k in Manifest.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptOverlay(f"overlay {directory} has an unreadable manifest ({exc}); "
                             "it cannot be used: roll back to another version") from exc


def load(directory: str | os.PathLike, expect_base_sha256: str) -> SparseOverlay:
    """Read a version, checking it belongs to this base model and its files are intact."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as from_bytes

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.base_sha256 != expect_base_sha256:
        raise ForeignOverlay(
            f"overlay {directory} was learned on another base model (sha256 "
            f"{manifest.base_sha256[:12]}…, this model is {expect_base_sha256[:12]}…); "
            "use it with that model, or learn again on this one")
    try:
        data = (directory / TENSORS_FILE).read_bytes()
    except OSError as exc:
        raise CorruptOverlay(f"overlay {directory} is missing its tensors ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != manifest.safetensors_sha256:
        raise CorruptOverlay(f"overlay {directory} is damaged: {TENSORS_FILE} does not match "
                             "its checksum; roll back to another version")
    try:
        tensors = from_bytes(data)
        blocks, named = [], {CELL_GATES}
        for i, entry in enumerate(manifest.blocks):
            neurons_name, delta_name = _tensor_names(i, entry["layer"], entry["matrix"])
            named |= {neurons_name, delta_name}
            block = NeuronBlock(entry["layer"], entry["matrix"], tensors[neurons_name],
                                tensors[delta_name], entry["session_id"])
            if (block.neurons.tolist() != entry["neurons"]
                    or list(block.delta.shape) != entry["delta_shape"]):
                raise ValueError(f"block {i} does not match the manifest")
            blocks.append(block)
        if unnamed := sorted(set(tensors) - named):
            raise ValueError(f"the manifest names no block for {unnamed[0]}")
        return SparseOverlay(blocks, manifest.base_sha256, manifest.scale,
                             d_model=manifest.d_model, d_ff=manifest.d_ff,
                             cell_gates=tensors.get(CELL_GATES), cell_rule=manifest.cell_rule)
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CorruptOverlay(f"overlay {directory} is inconsistent ({exc}); "
                             "roll back to another version") from exc


def _write(path: Path, data: bytes) -> None:
    with open_private(path) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    """Flush a file's or directory's entry to disk (a rename is durable only after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
