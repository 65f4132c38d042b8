"""The one place that touches llama-cpp-python's private handles and low-level C API.

``Llama`` keeps the model at ``llm._model.model`` and the context at ``llm._ctx.ctx``;
adapters (LoRA) and control vectors are set through them. Anything that changes what
the weights compute must be followed by ``Runtime.invalidate_cache``.
"""

from __future__ import annotations

import ctypes
import os
import sys

import llama_cpp
import numpy as np

from engine.errors import EngramError

GGML_LOG_ERROR, GGML_LOG_CONT = 4, 5
_last_level = 0


@llama_cpp.llama_log_callback
def _errors_only(level: int, text: bytes, _user_data) -> None:
    """llama.cpp's log, errors only (llama-cpp-python's own filter maps levels wrongly)."""
    global _last_level
    if level != GGML_LOG_CONT:
        _last_level = level
    if _last_level == GGML_LOG_ERROR:
        sys.stderr.write(text.decode("utf-8", "replace"))


llama_cpp.llama_log_set(_errors_only, ctypes.c_void_p(0))


def _has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " amx_int8" in line for line in cpuinfo)
    except OSError:
        return False


def _without_extra_buffers(default_params):
    def params():
        out = default_params()
        out.use_extra_bufts = False
        return out
    return params


# On CPUs with AMX, a native build puts quantised weights in ggml's AMX buffers, whose
# matrix multiply crashes (SIGSEGV in ggml_backend_amx_mul_mat) on Gemma 3 with
# llama-cpp-python 0.3.36. Every ``Llama`` in the process (the runtime, the scorer, the
# benchmarks' bare baselines) then keeps its weights in plain CPU buffers instead.
if _has_amx() and hasattr(llama_cpp.llama_model_params, "use_extra_bufts"):
    llama_cpp.llama_cpp.llama_model_default_params = _without_extra_buffers(
        llama_cpp.llama_cpp.llama_model_default_params)


def _model(llm):
    return llm._model.model


def _ctx(llm):
    return llm._ctx.ctx


def n_layer(llm) -> int:
    return llama_cpp.llama_model_n_layer(_model(llm))


def n_embd(llm) -> int:
    return llama_cpp.llama_model_n_embd(_model(llm))


def clear_kv(llm) -> None:
    """Drop every cached key/value (prefix reuse must not mix old and new weights)."""
    llm._ctx.kv_cache_clear()


def last_logits(llm) -> np.ndarray:
    """Logits after the last evaluated token (``Llama.scores`` keeps them only with logits_all)."""
    ptr = llama_cpp.llama_get_logits_ith(_ctx(llm), -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def forget_after(llm, position: int) -> None:
    """Drop sequence 0's cached keys/values from ``position`` on (keep the prefix before it)."""
    llm._ctx.kv_cache_seq_rm(0, position, -1)


def decode_at(llm, tokens: list[int], start: int, outputs: list[int]) -> np.ndarray:
    """Decode ``tokens`` at positions ``start…`` of sequence 0, whose cache must hold exactly
    the positions before ``start``; return the logits at the absolute positions ``outputs``
    only (on a large vocabulary the output head costs more than the whole rest of the model)."""
    ctx, vocab, width = _ctx(llm), llm.n_vocab(), llm.n_batch
    out = []
    for first in range(0, len(tokens), width):
        chunk = tokens[first:first + width]
        batch = llama_cpp.llama_batch_init(len(chunk), 0, 1)
        try:
            batch.n_tokens = len(chunk)
            wanted = []
            for i, token in enumerate(chunk):
                position = start + first + i
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = position in outputs
                if batch.logits[i]:
                    wanted.append(i)
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise EngramError(f"llama.cpp could not evaluate {len(chunk)} tokens (code {rc})")
            out += [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i),
                                          shape=(vocab,)).copy() for i in wanted]
        finally:
            llama_cpp.llama_batch_free(batch)
    return np.stack(out) if out else np.zeros((0, vocab), dtype=np.float32)


def lora_load(llm, path: str | os.PathLike):
    """Load a GGUF LoRA adapter for this model (ms for a few MB)."""
    adapter = llama_cpp.llama_adapter_lora_init(_model(llm), os.fsencode(path))
    if not adapter:
        raise EngramError(f"llama.cpp refused the adapter {path} (wrong base model or damaged)")
    return adapter


def lora_free(adapter) -> None:
    llama_cpp.llama_adapter_lora_free(adapter)


def lora_set(llm, adapters: list, scales: list[float]) -> None:
    """Make exactly these adapters active (an empty list restores the base weights)."""
    n = len(adapters)
    if n == 0:
        rc = llama_cpp.llama_set_adapters_lora(_ctx(llm), None, 0, None)
    else:
        rc = llama_cpp.llama_set_adapters_lora(
            _ctx(llm), (llama_cpp.llama_adapter_lora_p_ctypes * n)(*adapters), n,
            (ctypes.c_float * n)(*scales),
        )
    if rc != 0:
        raise EngramError(f"llama.cpp could not set adapters (code {rc})")


def cvec_set(llm, vectors: np.ndarray | None, il_start: int = 1, il_end: int | None = None) -> None:
    """Add one vector per layer to the residual stream (``vectors``: n_layer × n_embd; row 0 is
    unused because llama.cpp's control vector starts at layer 1). ``None`` clears it exactly."""
    if vectors is None:
        rc = llama_cpp.llama_set_adapter_cvec(_ctx(llm), None, 0, n_embd(llm), 0, 0)
    else:
        data = np.ascontiguousarray(vectors[1:], dtype=np.float32)
        rc = llama_cpp.llama_set_adapter_cvec(
            _ctx(llm), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size,
            data.shape[1], il_start, n_layer(llm) - 1 if il_end is None else il_end,
        )
    if rc != 0:
        raise EngramError(f"llama.cpp could not set the control vector (code {rc})")


# -- saved state ------------------------------------------------------------------------------
# The whole-context state, not llama_state_seq_*: the per-sequence snapshot keeps only the
# sliding window of Gemma 3's SWA layers, so rolling a restored prefix back (as prefix reuse
# does when the next prompt differs in its last tokens) would compute different logits.


def state_get(llm) -> tuple[list[int], bytes]:
    """The tokens in the context and llama.cpp's state (KV cache of every layer, last logits).

    Not ``Llama.save_state``: that also copies the n_batch × n_vocab score buffer (512 MB
    for a 262k vocabulary)."""
    size = llama_cpp.llama_state_get_size(_ctx(llm))
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_get_data(_ctx(llm), buffer, size)
    return llm.input_ids[: llm.n_tokens].tolist(), bytes(memoryview(buffer)[:written])


def state_set(llm, tokens: list[int], data: bytes) -> None:
    """Load a state from ``state_get`` and make llama-cpp-python's prefix matching reuse it:
    the next ``create_completion`` evaluates only what its prompt adds to ``tokens``."""
    llm.reset()
    clear_kv(llm)
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if llama_cpp.llama_state_set_data(_ctx(llm), buffer, len(data)) != len(data):
        clear_kv(llm)
        raise EngramError(
            "llama.cpp could not load the saved state (another build or context size)")
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    llm._requires_eval = True  # the restored logits are not a live decode: replay the last token


# -- hidden states ----------------------------------------------------------------------------

_ggml = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
_ggml.ggml_get_name.argtypes, _ggml.ggml_get_name.restype = [ctypes.c_void_p], ctypes.c_char_p
_ggml.ggml_nelements.argtypes, _ggml.ggml_nelements.restype = [ctypes.c_void_p], ctypes.c_int64
_ggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                          ctypes.c_size_t]
_ggml.ggml_backend_tensor_get.restype = None


class HiddenStates:
    """Layer outputs (``l_out-N``) of a second context on the chat's model.

    The high-level ``Llama`` has no eval callback, and one on the chat's own context would
    run Python for every graph node of every generated token; a second context shares the
    weights and costs only its own (small) KV cache. The last layer keeps only the output
    row, so ask for layers below ``n_layer - 1``.
    """

    def __init__(self, llm, layers: list[int], n_ctx: int = 512, n_threads: int | None = None):
        self.n_embd = n_embd(llm)
        self._wanted = {f"l_out-{layer}".encode(): layer for layer in layers}
        self._rows: dict[int, list[np.ndarray]] = {}
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._observe)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = n_threads or os.cpu_count() or 1
        params.cb_eval = self._callback
        self.n_ctx = n_ctx
        self._ctx = llama_cpp.llama_init_from_model(_model(llm), params)
        if not self._ctx:
            raise EngramError("llama.cpp could not create a context for hidden states")

    def _observe(self, tensor, ask: bool, _user_data) -> bool:
        layer = self._wanted.get(_ggml.ggml_get_name(tensor))
        if ask or layer is None:
            return layer is not None
        rows = np.empty(_ggml.ggml_nelements(tensor), dtype=np.float32)
        _ggml.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, rows.nbytes)
        self._rows.setdefault(layer, []).append(rows.reshape(-1, self.n_embd))
        return True

    def __call__(self, tokens: list[int]) -> dict[int, np.ndarray]:
        """Each wanted layer's output for every token (n_tokens × n_embd); text longer than the
        context is read in independent windows."""
        self._rows = {}
        memory = llama_cpp.llama_get_memory(self._ctx)
        for start in range(0, len(tokens), self.n_ctx):
            window = tokens[start: start + self.n_ctx]
            llama_cpp.llama_memory_clear(memory, True)
            array = (llama_cpp.llama_token * len(window))(*window)
            if llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, len(window))):
                raise EngramError("llama.cpp could not evaluate the text for hidden states")
        return {layer: np.concatenate(rows) for layer, rows in self._rows.items()}

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
