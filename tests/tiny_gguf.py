"""Write a tiny random-weight Gemma 3 GGUF (with a small SentencePiece-style vocab) for fast tests.

Same architecture and tensor names as the built-in model, so llama.cpp, the torch twin
and the overlay code paths are all exercised, in milliseconds instead of seconds.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_FF, N_LAYER, N_HEAD, N_KV, HEAD_DIM = 64, 128, 4, 2, 1, 32
WORDS = ("the a of and to in is you that it he was for on are as with his they I at be this "
         "have from or one had by word but not what all were we when your can said there use an "
         "each which she do how their if will up other about out many then them these so some "
         "her would make like him into time has look two more write go see number no way could "
         "people my than first water been call who oil its now find long down day did get come "
         "made may part name cat live town Hello hello User Assistant hi").split()


def vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"]
    types = [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
             gguf.TokenType.UNKNOWN]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + [chr(c) for c in range(33, 127)] + ["▁" + w for w in WORDS] + WORDS
    pieces = list(dict.fromkeys(pieces))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # Longer pieces score higher so the SPM merger prefers whole words.
    scores = [0.0] * 260 + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gemma3(path: Path, seed: int = 0, arch: str = "gemma3",
                      chat_template: str | None = None) -> Path:
    """``arch="llama"`` leaves out Gemma's extra norms: a Llama-shaped model llama.cpp loads
    and the twin does not learn on. Any other ``arch`` but gemma3 makes a file llama.cpp must
    refuse. ``chat_template`` adds one."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab()
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name("tiny-gemma3-test")
    w.add_context_length(512)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if arch != "llama":
        w.add_sliding_window(64)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    def t(name: str, *shape: int, scale: float = 0.08) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32))

    t("token_embd.weight", len(tokens), N_EMBD, scale=0.5)
    norm("output_norm.weight", N_EMBD)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", N_EMBD)
        t(p + "attn_q.weight", N_HEAD * HEAD_DIM, N_EMBD)
        t(p + "attn_k.weight", N_KV * HEAD_DIM, N_EMBD)
        t(p + "attn_v.weight", N_KV * HEAD_DIM, N_EMBD)
        t(p + "attn_output.weight", N_EMBD, N_HEAD * HEAD_DIM)
        if arch != "llama":  # in this order: the gemma3 file stays byte for byte the same
            norm(p + "attn_q_norm.weight", HEAD_DIM)
            norm(p + "attn_k_norm.weight", HEAD_DIM)
            norm(p + "post_attention_norm.weight", N_EMBD)
        norm(p + "ffn_norm.weight", N_EMBD)
        t(p + "ffn_gate.weight", N_FF, N_EMBD)
        t(p + "ffn_up.weight", N_FF, N_EMBD)
        t(p + "ffn_down.weight", N_EMBD, N_FF)
        if arch != "llama":
            norm(p + "post_ffw_norm.weight", N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
