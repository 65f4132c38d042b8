"""Per-position logits from llama.cpp (the served weights, overlay included) for metrics.

A second llama.cpp context on the same file with ``logits_all``; the chat runtime keeps
only last-token logits and must not be disturbed by evaluation.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np

from engine import llama_native


class Scorer:
    def __init__(self, model_path: Path, n_ctx: int = 1024, n_threads: int | None = None):
        from engine.runtime import default_threads

        self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, logits_all=True,
                                   n_threads=n_threads or default_threads(),
                                   n_threads_batch=n_threads or default_threads(), verbose=False)
        self._adapter = None
        self._cached: list[int] = []  # the tokens whose keys/values the context holds

    def set_overlay(self, lora_path: Path | None, scale: float = 1.0) -> None:
        """Score with this GGUF LoRA (None: the base weights)."""
        if self._adapter is not None:
            llama_native.lora_set(self.llm, [], [])
            llama_native.lora_free(self._adapter)
            self._adapter = None
        if lora_path is not None:
            self._adapter = llama_native.lora_load(self.llm, lora_path)
            llama_native.lora_set(self.llm, [self._adapter], [scale])
        self.llm.reset()
        llama_native.clear_kv(self.llm)
        self._cached = []

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), vocab) next-token logits at every position."""
        self.llm.reset()
        llama_native.clear_kv(self.llm)
        self._cached = []
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def logits_at(self, tokens: list[int], positions: list[int]) -> np.ndarray:
        """(len(positions), vocab) next-token logits at some positions only, reusing the
        cached prefix shared with the previous call (prompts that start with the same system
        prompt share most of their tokens)."""
        keep = 0
        limit = min([len(tokens) - 1, *positions])
        while keep < min(limit, len(self._cached)) and self._cached[keep] == tokens[keep]:
            keep += 1
        llama_native.forget_after(self.llm, keep)
        self._cached = []  # unknown until the decode succeeds
        logits = llama_native.decode_at(self.llm, tokens[keep:], keep, positions)
        self._cached = list(tokens)
        return logits

    def greedy(self, tokens: list[int], max_tokens: int, stop: list[str]) -> tuple[str, bool]:
        """The greedy continuation of ``tokens`` (cut at the first ``stop`` string) and whether
        it ran to ``max_tokens``: what a probe's reply would be, without the chat's context."""
        generated: list[int] = []
        text = ""
        for _ in range(max_tokens):
            sequence = tokens + generated
            generated.append(int(self.logits_at(sequence, [len(sequence) - 1])[0].argmax()))
            if generated[-1] == self.llm.token_eos():
                return text, False
            text = self.llm.detokenize(generated).decode("utf-8", "replace")
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                return text[:cut], False
        return text, True

    def close(self) -> None:
        if self._adapter is not None:
            llama_native.lora_free(self._adapter)
        self.llm.close()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
