"""The GGUF architectures Engram learns on, and what each needs so that the torch twin computes
what llama.cpp serves.

transformers' GGUF loader already maps each architecture's tensor names, undoes llama.cpp's
q/k row order for Llama and Gemma's norm offset; what it leaves different from llama.cpp is
written here as data, read by ``engine/twin.py``. Every learnable architecture has SwiGLU/GeGLU
FFNs with ``ffn_gate``/``ffn_up``/``ffn_down``, which is what the overlay edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _gemma_query_scalar(layers_of_27b: int) -> Callable[[object], int]:
    """llama.cpp scales Gemma 2's and 3's attention by 1/√head_dim, or 1/√(d_model/heads) for
    the 27B, which it knows by its layer count (``llama-model.cpp``). transformers scales by
    1/√query_pre_attn_scalar, which its GGUF loader leaves at the default 256: the same on
    the released sizes with head_dim 256 except the 27B, and on no other head size."""
    def scalar(config) -> int:
        if config.num_hidden_layers == layers_of_27b:
            return config.hidden_size // config.num_attention_heads
        return config.head_dim
    return scalar


@dataclass(frozen=True)
class Architecture:
    # Gemma 3's rotary embedding keeps a table per attention kind (local and global bases)
    # and takes the kind as an argument; the others have one table for every layer.
    rope_per_layer_type: bool = False
    # The attention scale is 1/√(this of the config) in llama.cpp; None: transformers agrees.
    query_pre_attn_scalar: Callable[[object], int] | None = None
    # GGUF metadata (keys after the architecture's prefix) that transformers' GGUF loader
    # leaves at its config's default, and the config field each one sets.
    config_from_gguf: tuple[tuple[str, str], ...] = ()
    # transformers' attention function: sdpa, or eager where sdpa cannot compute it (Gemma 2
    # soft-caps the attention scores)
    attention: str = "sdpa"
    # The GGUF's ffn_up holds the gate's rows then the up rows, and there is no ffn_gate
    # (Phi 3; transformers' gate_up_proj). The twin splits it into gate_proj and up_proj, the
    # projections the learner edits; the overlay's LoRA addresses the fused tensor.
    gate_up_fused: bool = False


ARCHITECTURES = {
    "gemma2": Architecture(
        query_pre_attn_scalar=_gemma_query_scalar(46),
        config_from_gguf=(("attn_logit_softcapping", "attn_logit_softcapping"),
                          ("final_logit_softcapping", "final_logit_softcapping")),
        attention="eager"),
    "gemma3": Architecture(rope_per_layer_type=True,
                           query_pre_attn_scalar=_gemma_query_scalar(62)),
    "llama": Architecture(),  # Llama 2/3.x, Mistral (llama.cpp calls them all llama)
    # Phi 3: fused qkv (transformers splits it as llama.cpp does) and fused gate and up
    "phi3": Architecture(gate_up_fused=True),
    "qwen2": Architecture(),
    # Qwen 3's head size is not d_model/heads on most sizes; the loader assumes 128
    "qwen3": Architecture(config_from_gguf=(("attention.key_length", "head_dim"),)),
}
LEARNABLE_ARCHITECTURES = frozenset(ARCHITECTURES)


def gate_up_fused(architecture: str) -> bool:
    """Whether ``architecture``'s GGUF holds the FFN's gate and up in one ``ffn_up``."""
    known = ARCHITECTURES.get(architecture)
    return known is not None and known.gate_up_fused
