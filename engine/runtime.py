"""The inference runtime: one llama.cpp model and context, streaming replies.

Everything that reaches into llama-cpp-python's private handles lives in
``engine.llama_native``; this module uses only the public ``Llama`` API plus those helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np

from engine.errors import ChatTemplateRefused, EngramError, ModelError
from engine.model_file import ModelFile, open_model
from engine.prompt import (
    ChatTemplate,
    FittedPrompt,
    PlainDialogue,
    PromptFormat,
    Turn,
    fit,
    template_refused,
    turn_texts,
    without_thinking,
)
from engine.replies import LoopWatch

if TYPE_CHECKING:
    from llama_cpp.llama_types import CreateCompletionResponse


OPENING_CANDIDATES = 32  # a reply's likeliest first tokens checked for ending it at once


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    repeat_penalty: float = 1.0  # llama.cpp's: > 1 makes a token just said less likely again

    @classmethod
    def greedy(cls, max_tokens: int = 64) -> Sampling:
        return cls(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None
    n_ctx: int = 0
    dropped_turns: int = 0
    stopped: bool = False  # cancelled before the model finished
    loop_cut: bool = False  # ended where it began to loop (``replies.LoopWatch``)

    @property
    def tokens_per_s(self) -> float:
        gen = self.seconds - (self.first_token_s or 0.0)
        return (self.completion_tokens - 1) / gen if self.completion_tokens > 1 and gen > 0 else 0.0

    @property
    def context_used(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.n_ctx if self.n_ctx else 0.0


@dataclass
class Reply:
    """A reply being generated. Iterate for text pieces (the answer: not the thinking block a
    reasoning model may start with, or start inside after a prompt that opened it: see
    ``prompt.answer``); ``stats`` is final after iteration and counts every token generated."""

    _pieces: Iterator[str]
    stats: ReplyStats
    prefix: str = ""  # the start its prompt gave it (``PromptFormat.reply_prefix``)
    text: str = ""
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def dropped_turns(self) -> int:
        return self.stats.dropped_turns

    def cancel(self) -> None:
        """Stop at the next token (safe from any thread)."""
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        """The answer as the user reads it: ended, and the model stopped, where it begins to
        go round in a loop (``LoopWatch``)."""
        watch = LoopWatch()
        try:
            for piece in without_thinking(self._pieces, self.prefix):
                yield from self._shown(watch.add(piece))
                if watch.looped:
                    return
            yield from self._shown(watch.finish())
        except BaseException:
            self.text += watch.finish()  # a crash or a reader gone keeps all that was said
            raise
        finally:
            self.stats.loop_cut = watch.looped
            if isinstance(self._pieces, Generator):
                self._pieces.close()  # the model stops and its lock is free at once

    def _shown(self, text: str) -> Iterator[str]:
        if text:
            self.text += text
            yield text


@dataclass(frozen=True)
class KvSnapshot:
    """What the context holds: its tokens, llama.cpp's state for them, and the digest of the
    cells (control vector) they were computed with."""

    tokens: list[int]
    data: bytes
    cells_digest: str


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def gpu_layers() -> int:
    """Every layer on the GPU where this llama.cpp build can offload (CUDA, Metal), else none."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


class Runtime:
    """One loaded model. One generation at a time (guarded by a lock). ``thinking``: whether
    a reasoning model may think before it answers (``prompt.ChatTemplate``); off, as a
    profile's default is."""

    def __init__(self, model: str | os.PathLike | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, n_gpu_layers: int | None = None,
                 thinking: bool = False):
        import jinja2
        import llama_cpp

        from engine import llama_native  # noqa: F401  (installs the quiet log callback)

        self.model: ModelFile = open_model(model)
        self.gpu = bool(llama_cpp.llama_supports_gpu_offload())
        self.n_threads = n_threads or default_threads()
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(self.model.path), n_ctx=n_ctx, n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_gpu_layers=gpu_layers() if n_gpu_layers is None else n_gpu_layers,
                verbose=False,
            )
        except jinja2.TemplateError as exc:  # llama-cpp-python compiles the file's templates
            raise template_refused(self.model.path.name, exc) from exc
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"llama.cpp could not load {self.model.path} (architecture "
                f"'{self.model.architecture}'): the file may be damaged, or this llama.cpp "
                "build does not support that architecture"
            ) from exc
        self.n_ctx = self.llm.n_ctx()
        try:
            self.format: PromptFormat = _prompt_format(self.llm, self.model.path.name,
                                                       thinking)
        except ChatTemplateRefused:
            self.llm.close()
            raise
        self._lock = threading.RLock()  # re-entrant: a reply's ``prepare`` calls back in
        self._adapter = None  # the active LoRA adapter (llama.cpp handle), if any
        self.kv_owner: object = None  # whose dialogue the context holds (see ``reply``)
        self.cells_digest = ""  # of the control vector now set ("" for none)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def device(self) -> str:
        return "GPU" if self.gpu else f"CPU×{self.n_threads}"

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """``special``: control-token text (``<end_of_turn>``) becomes that token; never for
        what a user typed."""
        return self.llm.tokenize(text.encode("utf-8", "replace"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", "replace")

    def prompt_tokens(self, text: str) -> list[int]:
        """A prompt rendered in ``format`` as token ids (its control tokens parsed where it
        writes any: a chat template's)."""
        return self.tokenize(text, special=self.format.special)

    def prompt(self, system: str | None, turns: list[Turn]) -> list[int]:
        """The dialogue in the model's prompt format, ending where the reply begins."""
        return self.prompt_tokens(self.format.render(system, turns))

    def answering(self, system: str | None, turns: list[Turn]) -> list[int]:
        """The dialogue up to where the assistant's answer begins, as the format writes a
        finished turn: where the learner reads and trains answers (``PromptFormat.answering``)."""
        return self.prompt_tokens(self.format.answering(system, turns))

    def turn_spans(self, turns: list[Turn]) -> tuple[list[int], list[tuple[int, int]]]:
        """The dialogue's tokens when more turns follow (BOS first where the model has one),
        and each turn's [start, end) among them (``prompt.turn_texts``). Each turn is
        tokenised on its own, so its tokens do not depend on the turns around it; they are
        the chat's prompt's own where no token spans two turns (a chat template's turns meet
        at control tokens, the built-in model's at a line break no token joins to a word)."""

        def tokenize(text: str) -> list[int]:
            return self.tokenize(text, add_bos=False, special=self.format.special)

        tokens, spans = self.tokenize(""), []
        for text in turn_texts(self.format, turns, tokenize):
            piece = tokenize(text)
            spans.append((len(tokens), len(tokens) + len(piece)))
            tokens += piece
        return tokens, spans

    def fit(self, turns: list[Turn], system: str | None, max_tokens: int) -> FittedPrompt:
        budget = self.n_ctx - min(max_tokens, self.n_ctx // 2)
        return fit(self.format, system, turns, self.prompt_tokens, budget)

    def reply(self, turns: list[Turn], system: str | None = None,
              sampling: Sampling | None = None, owner: object = None,
              prepare: Callable[[FittedPrompt], None] | None = None) -> Reply:
        """Start a reply to the dialogue; raises InputTooLong before anything is generated.

        ``owner`` names the session: afterwards the context holds its dialogue (``snapshot``).
        ``prepare(prompt)`` runs under the lock just before generation: where a session sets
        its cells and restores its saved KV cache."""
        sampling = sampling or Sampling()
        prompt = self.fit(turns, system, sampling.max_tokens)
        stats = ReplyStats(prompt_tokens=len(prompt.tokens), n_ctx=self.n_ctx,
                           dropped_turns=prompt.dropped_turns)
        reply = Reply(iter(()), stats, self.format.reply_prefix)
        reply._pieces = self._stream(prompt, sampling, reply, owner, prepare)
        return reply

    def _stream(self, prompt: FittedPrompt, sampling: Sampling, reply: Reply, owner: object,
                prepare: Callable[[FittedPrompt], None] | None) -> Iterator[str]:
        stats, tokens = reply.stats, prompt.tokens
        max_tokens = min(sampling.max_tokens, self.n_ctx - len(tokens))
        with self._lock:
            if prepare is not None:
                prepare(prompt)
            self.kv_owner = owner
            start = time.perf_counter()
            text = ""
            try:
                # A reply that ends before it says anything (its first token ends the turn)
                # is asked once more without that start: a user is never shown nothing.
                for opening in (None, self._saying(len(tokens))):
                    chunks = self._completion(tokens, max_tokens, sampling, opening)
                    for chunk in chunks:
                        piece = chunk["choices"][0]["text"]
                        if stats.first_token_s is None:
                            stats.first_token_s = time.perf_counter() - start
                        if piece:
                            text += piece
                            yield piece
                        if reply._cancel.is_set():
                            stats.stopped = True
                            break
                    if text.strip() or stats.stopped:
                        break
            finally:
                with contextlib.suppress(Exception):
                    chunks.close()
                stats.seconds = time.perf_counter() - start
                stats.completion_tokens = len(self.tokenize(text, add_bos=False)) if text else 0

    def _completion(self, tokens: list[int], max_tokens: int, sampling: Sampling,
                    processor: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
                    ) -> Generator[CreateCompletionResponse, None, None]:
        from llama_cpp import LogitsProcessorList

        # stream=True returns llama-cpp-python's generator of chunks; its annotation is the
        # union of both modes' results
        return cast("Generator[CreateCompletionResponse, None, None]", self.llm.create_completion(
            tokens, max_tokens=max_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, stop=self.format.stop, stream=True, seed=sampling.seed,
            repeat_penalty=sampling.repeat_penalty,
            logits_processor=LogitsProcessorList([processor]) if processor else None))

    def _saying(self, prompt: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A logits processor that, at the first position after a ``prompt`` of that many
        tokens, rules out the likeliest tokens that would end the reply there: the end of
        the turn, whitespace alone, or the start of a stop string."""

        def ends(token: int) -> bool:
            piece = self.llm.detokenize([token]).decode("utf-8", errors="ignore")
            return self.llm.token_eos() == token or not piece.strip() or any(
                stop.startswith(piece) for stop in self.format.stop)

        def processor(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            if len(ids) != prompt:
                return scores
            scores = scores.copy()
            for token in np.argsort(scores)[-OPENING_CANDIDATES:]:
                if ends(int(token)):
                    scores[token] = -np.inf
            return scores

        return processor

    def complete(self, prompt: str, sampling: Sampling | None = None,
                 stop: list[str] | None = None) -> str:
        """Raw continuation of ``prompt`` (no dialogue formatting): for probes and the learner."""
        sampling = sampling or Sampling.greedy()
        with self._lock:
            self.kv_owner = None
            out = self.llm.create_completion(
                self.tokenize(prompt), max_tokens=sampling.max_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p,
                stop=self.format.stop if stop is None else stop, seed=sampling.seed,
            )
        assert isinstance(out, dict)  # not streamed: one response
        return out["choices"][0]["text"]

    def invalidate_cache(self) -> None:
        """Forget reused prefixes: call after the weights (adapters) or control vector change."""
        from engine import llama_native

        with self._lock:
            self.llm.reset()
            llama_native.clear_kv(self.llm)
            self.kv_owner = None

    def set_cells(self, vectors: np.ndarray | None) -> None:
        """Set the control vector (n_layer × n_embd; None: none) for the following steps. A
        different vector invalidates reused prefixes: they were computed without it."""
        from engine import llama_native

        digest = "" if vectors is None else hashlib.sha256(
            np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()
        with self._lock:
            if digest != self.cells_digest:
                llama_native.cvec_set(self.llm, vectors)
                self.cells_digest = digest
                self.invalidate_cache()

    def snapshot(self, owner: object) -> KvSnapshot | None:
        """The context's state if it holds ``owner``'s dialogue (None otherwise)."""
        from engine import llama_native

        with self._lock:
            if owner is None or owner != self.kv_owner or self.llm.n_tokens == 0:
                return None
            tokens, data = llama_native.state_get(self.llm)
            return KvSnapshot(tokens, data, self.cells_digest)

    def restore(self, owner: object, snapshot: KvSnapshot) -> None:
        """Load a snapshot: the next reply whose prompt extends its tokens evaluates only the
        new ones. Raises EngramError (the context is then empty) if it cannot be used."""
        from engine import llama_native

        with self._lock:
            if snapshot.cells_digest != self.cells_digest:
                raise EngramError("it was computed with other cells than the session has now")
            if len(snapshot.tokens) >= self.n_ctx:
                raise EngramError(f"it holds {len(snapshot.tokens)} tokens, more than the "
                                  f"context window ({self.n_ctx})")
            self.invalidate_cache()
            llama_native.state_set(self.llm, snapshot.tokens, snapshot.data)
            self.kv_owner = owner

    def set_overlay(self, path: str | os.PathLike | None, scale: float = 1.0) -> None:
        """Hot-swap the LoRA adapter (None: base weights, bit-identical) without reloading the
        model. Waits for a reply in progress. If loading fails, the previous adapter stays."""
        from engine import llama_native

        with self._lock:
            adapter = None if path is None else llama_native.lora_load(self.llm, path)
            try:
                llama_native.lora_set(self.llm, [adapter] if adapter else [],
                                      [scale] if adapter else [])
            except BaseException:
                if adapter:
                    llama_native.lora_free(adapter)
                raise
            if self._adapter:
                llama_native.lora_free(self._adapter)
            self._adapter = adapter
            self.invalidate_cache()

    def close(self) -> None:
        """Free the model, after a reply in progress (a stopped one ends at its next token):
        llama.cpp must not free what a generation still reads."""
        from engine import llama_native

        with self._lock:
            # An adapter must be freed before its model: llama.cpp crashes the other way round.
            if self._adapter:
                with contextlib.suppress(Exception):
                    llama_native.lora_set(self.llm, [], [])
                llama_native.lora_free(self._adapter)
                self._adapter = None
            with contextlib.suppress(Exception):
                self.llm.close()


def _prompt_format(llm, source: str, thinking: bool) -> PromptFormat:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return PlainDialogue()
    bos, eos = (llm.detokenize([t], special=True).decode("utf-8", "replace") if t >= 0 else ""
                for t in (llm.token_bos(), llm.token_eos()))
    return ChatTemplate(template, bos, eos, source, thinking)
