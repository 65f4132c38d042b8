"""The torch twin: the GGUF that llama.cpp serves, loaded into torch for learning and checks.

transformers' GGUF loader dequantises the file (~40 s); the result is cached as safetensors
under the cache dir, keyed by the model's sha256 and sealed with its files' checksums, so later
loads take seconds; a cache that does not match them is moved aside and rebuilt. Token ids
always come from llama.cpp's tokenizer, so both engines see the same ids.

The twin can run any slice of layers on cached hidden states: the learner runs the frozen
prefix once and only the layers above the edited ones at each step.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.architectures import ARCHITECTURES, Architecture
from engine.errors import LearningUnavailable, NotEnoughMemory
from engine.model_file import ModelFile, header
from engine.overlay import PROJECTIONS, SparseOverlay
from store import paths
from store.files import (
    BadFile,
    Outdated,
    check_seal,
    make_private,
    quarantine,
    seal,
    temporary,
)

DTYPE = torch.float32  # the twin must compute what llama.cpp serves: no lower precision


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


HEADROOM = 1 << 30  # bytes beside the weights: anchors, activations, the optimiser's state


def check_memory(model_file: ModelFile, cached: bool) -> None:
    """NotEnoughMemory, with the figures, when the twin's float32 weights (twice over while a
    GGUF is dequantised, once from the cache) and some headroom exceed the free memory, and
    on a GPU when the weights do not fit in its free memory."""
    import psutil

    weights = 4 * header(model_file.path)["parameters"]
    need = weights * (1 if cached else 2) + HEADROOM
    available = psutil.virtual_memory().available
    if need > available:
        raise NotEnoughMemory(
            f"learning needs about {need / 1e9:.1f} GB of free memory for {model_file.name}'s "
            f"training copy (float32) and {available / 1e9:.1f} GB is free: chat works; close "
            "other programs or learn with a smaller model")
    if device().type != "cuda":
        return
    free_gpu = torch.cuda.mem_get_info()[0]
    if weights + HEADROOM > free_gpu:
        raise NotEnoughMemory(
            f"learning needs about {(weights + HEADROOM) / 1e9:.1f} GB of free GPU memory for "
            f"{model_file.name}'s training copy and {free_gpu / 1e9:.1f} GB is free: chat "
            "works; free the GPU or learn with a smaller model")


@dataclass
class Batch:
    """Right-padded token ids with everything the decoder layers need."""

    ids: torch.Tensor  # (B, T)
    lengths: list[int]
    masks: dict
    position_ids: torch.Tensor
    position_embeddings: dict
    prefix: Prefix | None = None  # a shared prefix every sequence continues


class Prefix:
    """A token prefix shared by every sequence of a batch, run once: its keys and values
    per layer, which each sequence's own tokens then attend to. It quacks like transformers'
    cache (``update``), so the decoder layers need no change; the prefix's states are fixed,
    which is what lets the learner skip the system prompt at every step."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.length = tuple(tokens), len(tokens)
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, **kwargs):
        if layer_idx not in self.kv:  # the prefix's own pass: keep them
            self.kv[layer_idx] = key.detach(), value.detach()
            return key, value
        k, v = self.kv[layer_idx]
        batch = key.shape[0]
        return (torch.cat([k.expand(batch, -1, -1, -1), key], 2),
                torch.cat([v.expand(batch, -1, -1, -1), value], 2))


class Twin:
    def __init__(self, model, sha256: str, architecture: Architecture):
        self.model = model.eval().requires_grad_(False)
        self.sha256 = sha256
        self.architecture = architecture
        self.config = model.config
        self.layers = model.model.layers
        self.n_layer = len(self.layers)
        # Each layer's attention kind; configs without (Llama, Mistral) attend to everything,
        # as llama.cpp's llama does, whatever window transformers' Mistral defaults to.
        self.layer_types: list[str] = (getattr(self.config, "layer_types", None)
                                       or ["full_attention"] * self.n_layer)
        self.device = next(model.parameters()).device
        self.edited: set[int] = set()  # layers whose weights carry a delta just now: edited_by
        self._entering: dict[tuple, torch.Tensor] = {}  # see entering

    # -- loading --------------------------------------------------------------

    @classmethod
    def load(cls, model_file: ModelFile) -> Twin:
        model_file.check_learnable()
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        cache = cls.cache_dir(model_file)
        check_memory(model_file, cached=cache.exists())
        model = read_cache(cache)
        cached = model is not None
        architecture = ARCHITECTURES[model_file.architecture]
        if not cached:
            model = AutoModelForCausalLM.from_pretrained(
                str(model_file.path.parent), gguf_file=model_file.path.name, dtype=DTYPE,
                config=_config(model_file, architecture))
        _attention_scale_as_llama_cpp(model, architecture)  # older caches hold 256
        _rope_as_llama_cpp(model)
        if not cached:
            write_cache(model, cache)
        if architecture.gate_up_fused:
            _split_gate_up(model)  # after the cache, which keeps transformers' own layout
        model.config._attn_implementation = architecture.attention
        return cls(model.to(device()), model_file.sha256, architecture)

    @staticmethod
    def cache_dir(model_file: ModelFile) -> Path:
        """Where the dequantised weights are kept (built on the first load on a machine)."""
        return paths.twin_cache() / model_file.sha256

    # -- running --------------------------------------------------------------

    def batch(self, sequences: list[list[int]], prefix: Prefix | None = None) -> Batch:
        """``sequences`` as one batch; with ``prefix``, they are what follows it (whose keys
        and values ``prefix`` holds, from a ``run`` of it as a batch of its own)."""
        lengths = [len(s) for s in sequences]
        width, start = max(lengths), prefix.length if prefix else 0
        ids = torch.zeros((len(sequences), width), dtype=torch.long)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(seq)
            attention[i, : len(seq)] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        position_ids = torch.arange(start, start + width, device=self.device).unsqueeze(0)
        embeds = self.model.model.embed_tokens(ids)
        masks = (self._masks(embeds, attention, position_ids) if prefix is None
                 else self._continuation_masks(start, width))
        rotary, kinds = self.model.model.rotary_emb, set(self.layer_types)
        if self.architecture.rope_per_layer_type:
            position_embeddings = {t: rotary(embeds, position_ids, t) for t in kinds}
        else:
            position_embeddings = dict.fromkeys(kinds, rotary(embeds, position_ids))
        return Batch(ids, lengths, self._attention_form(masks), position_ids,
                     position_embeddings, prefix)

    def _attention_form(self, masks: dict) -> dict:
        """``masks`` as the attention function takes them: sdpa a boolean mask, eager one it
        adds to the scores (0 where a token may attend, the dtype's minimum elsewhere)."""
        if self.config._attn_implementation != "eager":
            return masks
        return {kind: torch.where(mask, 0.0, torch.finfo(DTYPE).min).to(DTYPE)
                if mask is not None and mask.dtype == torch.bool else mask
                for kind, mask in masks.items()}

    def _masks(self, embeds: torch.Tensor, attention: torch.Tensor,
               position_ids: torch.Tensor) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kwargs = dict(config=self.config, inputs_embeds=embeds, attention_mask=attention,
                      cache=None, position_ids=position_ids)
        makers = {"full_attention": create_causal_mask,
                  "sliding_attention": create_sliding_window_causal_mask}
        return {kind: makers[kind](**kwargs) for kind in set(self.layer_types)}

    def _continuation_masks(self, start: int, width: int) -> dict:
        """Each token sees the whole prefix and its own sequence up to itself (right padding
        sits after every real token, so it is never seen)."""
        query = torch.arange(start, start + width, device=self.device)[:, None]
        key = torch.arange(start + width, device=self.device)[None, :]
        causal = key <= query
        window = getattr(self.config, "sliding_window", None) or start + width
        return {"full_attention": causal[None, None],
                "sliding_attention": (causal & (query - key < window))[None, None]}

    @torch.no_grad()
    def prefix(self, tokens: list[int]) -> Prefix:
        """Run ``tokens`` once and keep each layer's keys and values for ``batch(…, prefix=)``."""
        out = Prefix(tokens)
        batch = self.batch([tokens])
        batch.prefix = out
        self.run(self.embed(batch), batch)
        return out

    @contextmanager
    def edited_by(self, deltas: Iterable[tuple[int, str, torch.Tensor]]) -> Iterator[None]:
        """Compute with each (layer, FFN projection, ΔW) added to that weight, restored exactly
        afterwards (inside another edit too). Meanwhile ``entering`` keeps nothing above an
        edited layer's input."""
        saved, edited = [], set(self.edited)
        try:
            with torch.no_grad():
                for layer, projection, delta in deltas:
                    self.edited.add(layer)
                    weight = getattr(self.layers[layer].mlp, projection).weight
                    saved.append((weight, weight.clone()))
                    weight += delta.to(weight)
            yield
        finally:
            with torch.no_grad():
                for weight, original in saved:
                    weight.copy_(original)
            self.edited = edited

    def overlaid(self, overlay: SparseOverlay) -> AbstractContextManager[None]:
        """Compute with ``overlay`` added to the weights, restored exactly afterwards."""
        return self.edited_by(
            (layer, PROJECTIONS[matrix],
             torch.from_numpy(overlay.scale * overlay.dense_delta(layer, matrix)))
            for layer, matrix in sorted({(b.layer, b.matrix) for b in overlay.blocks}))

    @torch.no_grad()
    def entering(self, sequences: list[list[int]], layer: int, prefix: Prefix | None = None,
                 keep: int = 4096) -> list[torch.Tensor]:
        """Each sequence's hidden states entering ``layer`` (after ``prefix``). Kept for the
        next call while no layer below ``layer`` is edited (the learner asks every earlier
        session's questions at each run; only the layers it edits change between runs);
        at most ``keep`` sequences, the oldest dropped first."""
        def key(s: list[int]) -> tuple:
            return (layer, prefix.tokens if prefix else (), tuple(s))

        kept = self._entering if not any(l < layer for l in self.edited) else {}
        missing = [s for s in sequences if key(s) not in kept]
        for start in range(0, len(missing), 16):
            chunk = missing[start:start + 16]
            batch = self.batch(chunk, prefix)
            h = self.run(self.embed(batch), batch, 0, layer)
            kept.update((key(s), h[i, : len(s)]) for i, s in enumerate(chunk))
        out = [kept[key(s)] for s in sequences]
        for old in list(self._entering)[: max(len(self._entering) - keep, 0)]:
            del self._entering[old]
        return out

    def embed(self, batch: Batch) -> torch.Tensor:
        return self.model.model.embed_tokens(batch.ids)

    def run(self, h: torch.Tensor, batch: Batch, start: int = 0,
            end: int | None = None) -> torch.Tensor:
        """Hidden states after layers [start, end) given the input ``h`` of layer ``start``."""
        for i in range(start, self.n_layer if end is None else end):
            kind = self.layer_types[i]
            h = self.layers[i](h, attention_mask=batch.masks[kind],
                               position_embeddings=batch.position_embeddings[kind],
                               position_ids=batch.position_ids, cache=batch.prefix)
        return h

    def logits(self, h: torch.Tensor, rows: torch.Tensor | None = None,
               vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm + output head on the final hidden states ``h`` (…, d). ``vocab`` limits
        the head to some token ids: the full 262k-row head is the costliest part of a step."""
        h = self.model.model.norm(h)
        weight = self.model.lm_head.weight if vocab is None else self.model.lm_head.weight[vocab]
        logits = h @ weight.T
        if cap := getattr(self.config, "final_logit_softcapping", None):  # Gemma 2
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def full_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Next-token logits at every position of each sequence (for checks and metrics)."""
        batch = self.batch(sequences)
        h = self.run(self.embed(batch), batch)
        return [self.logits(h[i, :n]) for i, n in enumerate(batch.lengths)]


def _attention_scale_as_llama_cpp(model, architecture: Architecture) -> None:
    """Where transformers' GGUF loader leaves another attention scale than llama.cpp's
    (``Architecture.query_pre_attn_scalar``), set llama.cpp's, in the config too: the
    safetensors cache keeps it."""
    if architecture.query_pre_attn_scalar is None:
        return
    config = model.config
    config.query_pre_attn_scalar = architecture.query_pre_attn_scalar(config)
    for layer in model.model.layers:
        layer.self_attn.scaling = config.query_pre_attn_scalar ** -0.5


class _SplitFfn(torch.nn.Module):
    """A fused gate_up_proj FFN (Phi 3's) with its gate and up as two projections: the same
    function, under the names the learner and ``Twin.edited_by`` edit."""

    def __init__(self, fused):
        super().__init__()
        gate, up = fused.gate_up_proj.weight.detach().chunk(2)
        self.gate_proj, self.up_proj = (_linear(w.clone()) for w in (gate, up))
        self.down_proj, self.act_fn = fused.down_proj, fused.activation_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    out.weight = torch.nn.Parameter(weight, requires_grad=False)
    return out


def _split_gate_up(model) -> None:
    for layer in model.model.layers:
        layer.mlp = _SplitFfn(layer.mlp)


def _config(model_file: ModelFile, architecture: Architecture):
    """transformers' config of the GGUF, with what its loader drops: the architecture's
    ``config_from_gguf`` fields where the GGUF has them (llama.cpp's defaults are
    transformers' otherwise) and ``rope_freqs`` (Llama 3.1+'s long-context scaling, which
    the converter stores as one divisor per rotary frequency, as ``rope_freq_factors``).
    The safetensors cache keeps them."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_file.path.parent),
                                        gguf_file=model_file.path.name)
    reader = GGUFReader(model_file.path)
    if any(tensor.name.startswith("rope_factors_") for tensor in reader.tensors):
        raise LearningUnavailable(
            f"chat works; learning is not available for {model_file.name}: the training copy "
            "does not yet apply its long-context rotary factors (rope_factors_long/short, as "
            "in Phi 3 128k and Phi 3.5), so it would not compute what chat serves")
    for key, field in architecture.config_from_gguf:
        if (value := reader.fields.get(f"{model_file.architecture}.{key}")) is not None:
            setattr(config, field, value.contents())
    config.rope_freq_factors = next((
        [float(x) for x in tensor.data] for tensor in reader.tensors
        if tensor.name == "rope_freqs.weight"), None)
    return config


def _rope_as_llama_cpp(model) -> None:
    """Divide each rotary frequency by its ``rope_freqs`` factor, as llama.cpp's rope does."""
    factors = getattr(model.config, "rope_freq_factors", None)
    if factors:
        rotary = model.model.rotary_emb
        rotary.inv_freq = rotary.inv_freq / torch.tensor(factors, dtype=rotary.inv_freq.dtype)


def read_cache(cache: Path):
    """The dequantised model cached at ``cache``, or None: there is none, or its files do not
    match the checksums written with them (then it is moved aside, never computed with or
    deleted, and the caller rebuilds it; a cache from before the checksums is removed and
    rebuilt)."""
    from transformers import AutoModelForCausalLM

    if not cache.exists():
        return None
    try:
        check_seal(cache)
    except Outdated:
        shutil.rmtree(cache)
        return None
    except BadFile as exc:
        moved = quarantine(cache)
        logging.getLogger(__name__).warning(
            "the training model's cache was set aside to %s and is rebuilt: %s", moved, exc)
        return None
    return AutoModelForCausalLM.from_pretrained(str(cache), dtype=DTYPE)


def write_cache(model, cache: Path) -> None:
    """Save the dequantised model atomically (a crash leaves no half cache), sealed."""
    tmp = temporary(paths.private_dir(cache.parent) / cache.name)
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.quantization_config = None
    model.hf_quantizer = None  # the weights are plain float32 now; transformers refuses otherwise
    model.save_pretrained(str(tmp), safe_serialization=True)
    seal(tmp)
    make_private(tmp)
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
