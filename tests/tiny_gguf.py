"""Write tiny random-weight GGUFs (float32, a small vocab of the architecture's kind) for tests.

Each architecture gets its real tensor names, metadata keys and tokenizer model, so llama.cpp,
the torch twin and the overlay code paths are all exercised, in milliseconds instead of
seconds: Gemma 2 and 3 with a SentencePiece-style vocab like the built-in model's, Phi 3 with
one and its chat's control tokens, Llama 3 and Qwen 2 and 3 with a byte-level BPE vocab
(``gpt2`` tokenizer model, merges and all); all but Gemma with their instruction-tuned chat
templates (Qwen 3's with its thinking blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen 3's, cut to what a chat without tools meets: an assistant turn after the last user
# turn opens with its thinking block (an empty one where it did no thinking), earlier ones are
# their answers alone, and the generation prompt leaves the model to think or not, unless told
# ``enable_thinking=False``: then it ends with the empty thinking block
QWEN3_TURNS = (
    "{% set ns = namespace(last_user=-1) %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}"
    "{% endfor %}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% set answer = message['content'].split('</think>')[-1].lstrip('\n') %}"
    "{{ '<|im_start|>assistant\n' }}{% if loop.index0 > ns.last_user %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{{ answer + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endif %}{% endfor %}")
QWEN3_TEMPLATE = QWEN3_TURNS + (
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}")
# Qwen 3 Thinking's (2507): the same turns, and a generation prompt that opens the thinking
# block whatever it is told, so that a reply starts inside it
QWEN3_THINKING_TEMPLATE = QWEN3_TURNS + (
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}")

PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
    "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
    "{% else %}{{ eos_token }}{% endif %}")


@dataclass(frozen=True)
class Bpe:
    """A byte-level BPE vocab (``gpt2`` tokenizer model) and the chat format that goes with it."""

    pre: str  # tokenizer.ggml.pre: llama.cpp's pre-tokenizer regex of the real models
    controls: tuple[str, ...]
    bos: str
    end_of_turn: str  # the eos of the instruction-tuned models
    add_bos: bool
    template: str


@dataclass(frozen=True)
class SpmChat:
    """The control tokens a SentencePiece vocab adds for its chat format, and the format."""

    controls: tuple[str, ...]
    bos: str
    end_of_turn: str
    template: str


@dataclass(frozen=True)
class Kind:
    """What a tiny model of one architecture holds beyond the Llama layer."""

    attention_norms: tuple[str, ...] = ()  # after attn_output (Gemma's q/k and sandwich norms)
    ffn_norms: tuple[str, ...] = ()  # after ffn_down
    qkv_bias: bool = False  # Qwen 2's attention biases
    # Llama 3.1+'s long-context rotary scaling: llama.cpp divides each frequency by its factor
    rope_freqs: bool = False
    sliding_window: bool = False
    # Gemma 2's attention and final logit soft caps: low, so that the tiny model's small
    # scores reach them, and not transformers' defaults, so that the twin must read them
    softcapping: tuple[float, float] | None = None
    # Phi 3's fused tensors: attn_qkv (q, k, v rows stacked) and ffn_up holding the gate's
    # rows then the up rows; and its own output head (the others tie it to the embedding)
    fused: bool = False
    spm_chat: SpmChat | None = None  # the SentencePiece vocab's chat format, if any
    bpe: Bpe | None = None  # None: the SentencePiece vocab


QWEN_BPE = Bpe("qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
               "<|endoftext|>", "<|im_end|>", False, CHATML_TEMPLATE)

KINDS = {
    "gemma2": Kind(("post_attention_norm",), ("post_ffw_norm",), sliding_window=True,
                   softcapping=(2.0, 15.0)),
    "gemma3": Kind(("attn_q_norm", "attn_k_norm", "post_attention_norm"), ("post_ffw_norm",),
                   sliding_window=True),
    "llama": Kind(rope_freqs=True, bpe=Bpe(
        "llama-bpe", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                      "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>", "<|eot_id|>", True, LLAMA3_TEMPLATE)),
    # llama.cpp looks up Llama 2's <s> and </s> in any vocab of a model named like Phi 3
    "phi3": Kind(fused=True, spm_chat=SpmChat(
        ("<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"),
        "<s>", "<|end|>", PHI3_TEMPLATE)),
    "qwen2": Kind(qkv_bias=True, bpe=QWEN_BPE),
    "qwen3": Kind(("attn_q_norm", "attn_k_norm"), bpe=replace(QWEN_BPE,
                                                               template=QWEN3_TEMPLATE)),
}
ARCHITECTURES = tuple(KINDS)  # every architecture a tiny model is written for


def vocab(controls: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", *controls]
    types = [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
             gguf.TokenType.UNKNOWN, *[gguf.TokenType.CONTROL] * len(controls)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + [chr(c) for c in range(33, 127)] + ["▁" + w for w in WORDS] + WORDS
    pieces = list(dict.fromkeys(pieces))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # Longer pieces score higher so the SPM merger prefers whole words.
    scores = [0.0] * (260 + len(controls)) + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def byte_level(data: bytes) -> str:
    """GPT-2's byte-to-character map, which byte-level BPE vocabularies are written in: bytes
    that print stand for themselves, the others for characters from U+0100 on (space: Ġ)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)}
    return "".join(chr(b) if b in printable else extra[b] for b in data)


def bpe_vocab(controls: tuple[str, ...]) -> tuple[list[str], list[str], list[int]]:
    """Every byte, each word with and without a leading space built up one character at a time
    by merges (a merge's result must be a token), then the control tokens."""
    tokens = [byte_level(bytes([b])) for b in range(256)]
    merges: list[str] = []
    for word in [byte_level(f" {w}".encode()) for w in WORDS] + WORDS:
        for end in range(2, len(word) + 1):
            if word[:end] not in tokens:
                merges.append(f"{word[:end - 1]} {word[end - 1]}")
                tokens.append(word[:end])
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(controls)
    return tokens + list(controls), merges, [int(t) for t in types]


def write_tiny_model(path: Path, arch: str = "gemma3", seed: int = 0,
                     chat_template: str | None = None, layers_like: str | None = None,
                     rope_factors: bool = False, n_layer: int = N_LAYER) -> Path:
    """A tiny ``arch`` model. ``layers_like`` names the architecture whose tensors and vocab
    it holds when ``arch`` is not in ``KINDS`` (one Engram does not learn on, or one llama.cpp
    does not know). ``chat_template`` replaces (or, on Gemma, adds) one. ``rope_factors``:
    Phi 3 128k's long-context rotary factors, long and short. ``n_layer``: other depths, for
    what depends on it (the layers learning edits)."""
    kind = KINDS[layers_like or arch]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(f"tiny-{arch}-test")
    w.add_context_length(512)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if kind.sliding_window:
        w.add_sliding_window(64)
    else:
        w.add_rope_dimension_count(HEAD_DIM)  # transformers reads Llama's head_dim from it
    if kind.softcapping:
        w.add_attn_logit_softcapping(kind.softcapping[0])
        w.add_final_logit_softcapping(kind.softcapping[1])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if kind.bpe is None:
        chat = kind.spm_chat
        tokens, scores, types = vocab(chat.controls if chat else ())
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(tokens.index(chat.bos) if chat else 2)
        w.add_eos_token_id(tokens.index(chat.end_of_turn) if chat else 1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        chat_template = chat_template or (chat.template if chat else None)
    else:
        tokens, merges, types = bpe_vocab(kind.bpe.controls)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(kind.bpe.pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index(kind.bpe.bos))
        w.add_eos_token_id(tokens.index(kind.bpe.end_of_turn))
        w.add_add_bos_token(kind.bpe.add_bos)
        chat_template = chat_template or kind.bpe.template
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    def t(name: str, *shape: int, scale: float = 0.08) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32))

    t("token_embd.weight", len(tokens), N_EMBD, scale=0.5)
    norm("output_norm.weight", N_EMBD)
    if kind.fused:
        t("output.weight", len(tokens), N_EMBD, scale=0.5)
    if kind.rope_freqs:
        w.add_tensor("rope_freqs.weight", np.linspace(1.0, 8.0, HEAD_DIM // 2, dtype=np.float32))
    for name in ("rope_factors_long", "rope_factors_short") if rope_factors else ():
        w.add_tensor(f"{name}.weight", np.linspace(1.0, 4.0, HEAD_DIM // 2, dtype=np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", N_EMBD)
        if kind.fused:
            t(p + "attn_qkv.weight", (N_HEAD + 2 * N_KV) * HEAD_DIM, N_EMBD)
        for name, rows in (("attn_q", N_HEAD), ("attn_k", N_KV), ("attn_v", N_KV)):
            if not kind.fused:
                t(p + name + ".weight", rows * HEAD_DIM, N_EMBD)
            if kind.qkv_bias:
                t(p + name + ".bias", rows * HEAD_DIM)
        t(p + "attn_output.weight", N_EMBD, N_HEAD * HEAD_DIM)
        for name in kind.attention_norms:
            norm(p + name + ".weight", HEAD_DIM if name in ("attn_q_norm", "attn_k_norm")
                 else N_EMBD)
        norm(p + "ffn_norm.weight", N_EMBD)
        if kind.fused:
            t(p + "ffn_up.weight", 2 * N_FF, N_EMBD)
        else:
            t(p + "ffn_gate.weight", N_FF, N_EMBD)
            t(p + "ffn_up.weight", N_FF, N_EMBD)
        t(p + "ffn_down.weight", N_EMBD, N_FF)
        for name in kind.ffn_norms:
            norm(p + name + ".weight", N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
