"""``engram bench generate``: Engram's runtime vs bare llama-cpp-python, same run.

Same model file, prompts, threads, context size and greedy sampling; repetitions
alternate between the two so drift in machine load hits both alike. The rate is decoding
speed: tokens after the first, over the time after the first. Also measures
launch-to-first-token: a fresh ``engram chat --plain`` process, from spawn to the
first byte of the reply on stdout.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from engine.prompt import Turn
from engine.runtime import Runtime, Sampling, gpu_layers

PROMPTS = (  # the base model answers each in a few dozen tokens: several, summed, steady the rate
    "Tell me about the history of the bicycle.",
    "How does a steam engine work?",
    "What should I pack for a week of hiking in the mountains?",
    "Why is the sky blue?",
)
PROMPT = PROMPTS[0]


def _bare_decode(llm, tokens: list[int], n: int, stop: list[str]) -> tuple[int, float]:
    """Tokens after the first and the seconds they took (only chunks that carry text count,
    as in Engram's reply: the closing chunk is empty)."""
    llm.reset()
    first, count = None, 0
    for chunk in llm.create_completion(tokens, max_tokens=n, temperature=0.0, top_p=1.0,
                                       stream=True, seed=0, stop=stop):
        if chunk["choices"][0]["text"]:
            count += 1
            first = first or time.perf_counter()
    return max(count - 1, 0), time.perf_counter() - first if first else 0.0


def _engram_decode(runtime: Runtime, prompt: str, n: int) -> tuple[int, float]:
    runtime.invalidate_cache()
    reply = runtime.reply([Turn("user", prompt)], None, Sampling.greedy(n))
    for _ in reply:
        pass
    stats = reply.stats
    return max(stats.completion_tokens - 1, 0), stats.seconds - (stats.first_token_s or 0.0)


def launch_to_first_token(model: str | None) -> float:
    """Seconds from spawning ``engram chat --plain`` to the first reply byte on stdout."""
    with tempfile.TemporaryDirectory() as home:
        cmd = [sys.executable, "-m", "app.cli", "--home", home, "chat", "--plain"]
        if model:
            cmd += ["--model", model]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env={**os.environ})
        assert proc.stdin is not None and proc.stdout is not None  # both are PIPE
        proc.stdin.write(b"Hello!\n")
        proc.stdin.flush()
        first = proc.stdout.read(1)
        elapsed = time.perf_counter() - start
        proc.stdin.close()
        proc.kill()
        proc.wait()
    return elapsed if first else float("nan")


def run(model: str | None, tokens: int = 128, repetitions: int = 5) -> dict:
    import llama_cpp

    runtime = Runtime(model, n_ctx=2048)
    bare = llama_cpp.Llama(model_path=str(runtime.model.path), n_ctx=2048,
                           n_threads=runtime.n_threads, n_threads_batch=runtime.n_threads,
                           n_gpu_layers=gpu_layers(), verbose=False)
    prompts = [(p, runtime.fit([Turn("user", p)], None, tokens).tokens) for p in PROMPTS]
    # Same stop sequences for both so both generate the same greedy text; the two alternate
    # in every repetition so drift in machine load hits both alike.
    engram_runs, bare_runs = [], []
    for _ in range(repetitions):
        ours_now = [_engram_decode(runtime, text, tokens) for text, _ in prompts]
        theirs = [_bare_decode(bare, ids, tokens, runtime.format.stop) for _, ids in prompts]
        engram_runs.append(sum(n for n, _ in ours_now) / sum(t for _, t in ours_now))
        bare_runs.append(sum(n for n, _ in theirs) / sum(t for _, t in theirs))
    bare.close()
    runtime.close()
    ours, base = statistics.median(engram_runs), statistics.median(bare_runs)
    return {
        "model": str(runtime.model.path),
        "device": runtime.device,
        "repetitions": repetitions,
        "max_tokens": tokens,
        "tokens_per_s": round(ours, 2),
        "baseline_tokens_per_s": round(base, 2),
        "ratio": round(ours / base, 4) if base else None,
        "first_token_s": round(launch_to_first_token(model), 3),
    }


def report(result: dict) -> str:
    return "\n".join([
        f"model            {result['model']} ({result['device']})",
        f"engram           {result['tokens_per_s']:.1f} tok/s (median of {result['repetitions']})",
        f"bare llama-cpp   {result['baseline_tokens_per_s']:.1f} tok/s",
        f"ratio            {result['ratio']:.3f}  (target ≥ 0.97)",
        f"launch→1st token {result['first_token_s']:.2f} s  (target ≤ 2 s)",
    ])
