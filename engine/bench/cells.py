"""``engram bench cells``: do cells recover what fell out of the window, at what cost?

Each case is a conversation whose early turns (facts about the user, or a subject) are
followed by filler turns; the early turns are out of the window. For each probe, the
negative log-likelihood (nats, summed over the expected answer's tokens) with (a) the full
conversation, (b) only the filler turns, (c) the filler turns + the cells written from the
dropped turns exactly as a session writes them, read as a session reads them: with the read
gates learned first on the bundled dev conversations (``--train``, none of them in the eval
set), and only for the questions whose relevance to the cells passes the turn gate.
``gap_recovered`` = (b − c) / (b − a). The same figures at other thresholds of the turn gate
are under ``curve``, and without it under ``ungated``: what the gate costs in recall and
saves in side effects.

Side effects, cells on vs off: perplexity of generic paragraphs and of a general-knowledge
answer asked after the same truncated context; generation speed of the chat runtime.
Then session state: resuming a ~2,000-token session from the store vs re-reading it.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

import numpy as np

from engine import llama_native
from engine.cell_conversations import Case, Probe, asked, cases, dev_cases
from engine.cell_training import GateRecipe
from engine.cells import CellRule, Cells, CellWriter
from engine.prompt import Turn
from engine.runtime import Runtime
from store import paths


class Judge:
    """Answer NLLs from llama.cpp (a second context on the model), the questions asked in the
    model's prompt format as the read is trained (``cell_conversations.asked``): each case's
    dialogue is evaluated once and each probe appended to it; the output head is computed
    only where an answer token is predicted (on a 262k vocabulary it costs more than the
    rest). ``runtime`` formats and tokenises (the same model)."""

    def __init__(self, llm, runtime: Runtime):
        self.llm, self.runtime = llm, runtime

    def set_cells(self, vectors: np.ndarray | None) -> None:
        llama_native.cvec_set(self.llm, vectors)

    def _nll(self, tokens: list[int], start: int, targets: list[int]) -> float:
        """Summed NLL of ``targets`` continuing the cached positions before ``start`` +
        ``tokens`` (targets are the last len(targets) of them)."""
        from engine.scoring import log_softmax

        end = start + len(tokens)
        positions = list(range(end - len(targets) - 1, end - 1))
        llama_native.forget_after(self.llm, start)
        logits = llama_native.decode_at(self.llm, tokens, start, positions)
        return -float(log_softmax(logits)[np.arange(len(targets)), targets].sum())

    def answers(self, turns: list[Turn], probes: list[Probe]) -> list[float]:
        """Summed NLL of each probe's answer after ``turns`` + the question."""
        questions = [asked(self.runtime, turns, probe) for probe in probes]
        shared = list(os.path.commonprefix([self.runtime.turn_spans(turns)[0]]
                                           + [prompt for prompt, _ in questions]))
        llama_native.forget_after(self.llm, 0)
        llama_native.decode_at(self.llm, shared, 0, [])
        return [self._nll(prompt[len(shared):] + answer, len(shared), answer)
                for prompt, answer in questions]

    def text_nll(self, text: str) -> tuple[float, int]:
        """Summed NLL of a text and its token count (for perplexity)."""
        tokens = self.runtime.tokenize(text)
        return self._nll(tokens, 0, tokens[1:]), len(tokens) - 1


def generic_paragraphs() -> list[str]:
    text = paths.eval_data("generic-text.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


TAUS = (0.1, 0.15, 0.2, 0.25, 0.3)  # the turn gate's thresholds the curve is measured at


def score(judge: Judge, writer: CellWriter, all_cases: list[Case], all_cells: list[Cells],
          gates: np.ndarray | None) -> dict:
    """NLLs under (a) full, (b) truncated, (c) truncated + each case's cells; side effects.
    Each text's read is gated as the runtime gates a user's message: at the rule's τ, and
    along a curve of other thresholds (the NLLs with and without cells are measured once)."""
    rule, baseline = writer.rule, writer.baseline()
    # (full, truncated, cells, relevance) per probe
    rows: dict[str, list[tuple[float, float, float, float]]] = {"facts": [], "topic": []}
    neutral, generic = [], []  # (off, on, relevance, tokens) per case
    paragraphs = generic_paragraphs()
    for k, (case, cells) in enumerate(zip(all_cases, all_cells, strict=True)):
        vector = cells.read(gates, baseline)

        def relevance(text: str, cells: Cells = cells, read: bool = vector is not None) -> float:
            return cells.relevance(writer.query(text), rule, baseline) if read else -math.inf

        judge.set_cells(None)
        full = judge.answers(case.dropped + case.kept, case.probes)
        *truncated, neutral_off = judge.answers(case.kept, case.probes + [case.neutral])
        paragraph = paragraphs[k % len(paragraphs)]
        off, n = judge.text_nll(paragraph)
        judge.set_cells(vector)
        *with_cells, neutral_on = judge.answers(case.kept, case.probes + [case.neutral])
        on, _ = judge.text_nll(paragraph)
        judge.set_cells(None)
        rows[case.kind] += [(a, b, c, relevance(p.question)) for a, b, c, p
                            in zip(full, truncated, with_cells, case.probes, strict=True)]
        neutral.append((neutral_off, neutral_on, relevance(case.neutral.question),
                        len(asked(judge.runtime, case.kept, case.neutral)[1])))
        generic.append((off, on, relevance(paragraph), n))

    def figures(tau: float) -> dict:
        out: dict[str, float] = {}
        for kind, suffix in (("facts", ""), ("topic", "_topic")):
            a, b = (statistics.fmean(r[i] for r in rows[kind]) for i in range(2))
            c = statistics.fmean(r[2] if r[3] > tau else r[1] for r in rows[kind])
            out |= {f"gap_recovered{suffix}": round((b - c) / (b - a), 4) if b != a else 0.0,
                    f"nll_full{suffix}": round(a, 3), f"nll_truncated{suffix}": round(b, 3),
                    f"nll_cells{suffix}": round(c, 3)}

        def ppl_change(texts: list[tuple]) -> float:
            on = sum(r[1] if r[2] > tau else r[0] for r in texts)
            return math.exp((on - sum(r[0] for r in texts)) / sum(r[3] for r in texts)) - 1

        generic_change, question_change = ppl_change(generic), ppl_change(neutral)
        opened = {kind: f"{sum(r[-1] > tau for r in rows[kind])}/{len(rows[kind])}"
                  for kind in rows}
        opened |= {kind: f"{sum(r[2] > tau for r in texts)}/{len(texts)}"
                   for kind, texts in (("neutral", neutral), ("generic", generic))}
        return out | {"ppl_change_generic": round(generic_change, 4),
                      "ppl_change_question": round(question_change, 4),
                      "ppl_change_neutral": round(max(generic_change, question_change), 4),
                      "gate_open": opened}

    return figures(rule.tau) | {
        "curve": [{"tau": tau} | figures(tau) for tau in TAUS],
        "ungated": figures(-math.inf)}


def generation_ratio(runtime, vector: np.ndarray, tokens: int = 48, repetitions: int = 3) -> float:
    """Per-token decode speed of the chat context with a cell vector set vs none (alternating,
    medians). The same tokens are fed one at a time with the output head at each, as in
    generation: timing replies instead compares different lengths (with cells the model may
    say more or less), and a short reply's rate is mostly its per-reply overhead."""
    import time

    text = runtime.tokenize(generic_paragraphs()[0])
    prompt, continuation = text[: len(text) - tokens], text[len(text) - tokens:]

    def speed(cells: np.ndarray | None) -> float:
        runtime.set_cells(cells)
        runtime.invalidate_cache()
        llama_native.decode_at(runtime.llm, prompt, 0, [])
        started = time.perf_counter()
        for i, token in enumerate(continuation):
            llama_native.decode_at(runtime.llm, [token], len(prompt) + i, [len(prompt) + i])
        return len(continuation) / (time.perf_counter() - started)

    on, off = [], []
    for _ in range(repetitions):
        off.append(speed(None))
        on.append(speed(vector))
    runtime.set_cells(None)
    runtime.invalidate_cache()
    return statistics.median(on) / statistics.median(off)


RESUME_QUESTION = "Thanks. To sum up, what did we talk about first?"


def _history(runtime: Runtime, target: int) -> list[Turn]:
    """User/assistant pairs from the bench's conversations, about ``target`` tokens long."""
    turns = []
    for case in cases():
        turns += case.dropped + case.kept
        if len(runtime.turn_spans(turns)[0]) >= target:
            break
    return turns


def resume(model: str | None, history_tokens: int = 2000, max_tokens: int = 32) -> dict:
    """Time to the first token of a reply in a stored ~2,000-token session, after a restart:
    restored from its saved state vs re-read; and whether the reply equals the one the
    session gives without a restart (greedy)."""
    import shutil
    import tempfile
    import time

    from engine.engine import Engine
    from engine.runtime import Sampling

    def first_token(home: Path, session_id: int) -> tuple[float, str, int]:
        engine = Engine(home=home, model=model, n_ctx=4096)
        engine.load()
        start = time.perf_counter()
        reply = engine.conversation(session_id).send(RESUME_QUESTION, Sampling.greedy(max_tokens))
        pieces = iter(reply)
        text = next(pieces, "")
        seconds = time.perf_counter() - start
        text += "".join(pieces)
        engine.close()
        return seconds, text, reply.stats.prompt_tokens

    with tempfile.TemporaryDirectory() as tmp:
        homes = [Path(tmp) / name for name in ("live", "restored", "reread")]
        engine = Engine(home=homes[0], model=model, n_ctx=4096)
        runtime = engine.load()
        session = engine.new_session()
        for turn in _history(runtime, history_tokens):
            engine.store.add_message(session.id, turn.role, turn.content)
        conversation = engine.conversation(session)
        list(conversation.send("Thanks, that is all for now.", Sampling.greedy(max_tokens)))
        for home in homes[1:]:
            shutil.copytree(homes[0], home)  # the disk as a restart finds it
        live = "".join(conversation.send(RESUME_QUESTION, Sampling.greedy(max_tokens)))
        engine.close()
        restored_s, restored, prompt_tokens = first_token(homes[1], session.id)
        reread_home = Engine(home=homes[2], model=model)
        reread_home.store.clear_session_kv(session.id)
        reread_home.close()
        reread_s, _, _ = first_token(homes[2], session.id)
    return {"resume_speedup": round(reread_s / restored_s, 2), "resume_identical": live == restored,
            "resume_prompt_tokens": prompt_tokens, "resume_first_token_s": round(restored_s, 3),
            "reread_first_token_s": round(reread_s, 3)}


def run(model: str | None = None, facts: Path | None = None, topics: Path | None = None,
        train: Path | None = None, rule: CellRule | None = None, recipe: GateRecipe | None = None,
        resume_tokens: int = 2000, repetitions: int = 3) -> dict:
    """Learn the read gates on ``train`` (default: the bundled dev conversations), then
    measure on ``facts``/``topics`` (default: the bundled eval sets)."""
    import time

    import llama_cpp

    from engine import cell_training
    from engine.learning.texts import anchor_prose
    from engine.twin import Twin

    runtime = Runtime(model, n_ctx=1024)
    n_layer = llama_native.n_layer(runtime.llm)
    writer = CellWriter(runtime, rule or CellRule())
    rule = writer.rule
    training = dev_cases(train)
    all_cases = cases(facts, topics)
    started = time.perf_counter()
    gates = cell_training.train(Twin.load(runtime.model), writer, training, anchor_prose(), recipe)
    train_seconds = time.perf_counter() - started
    longest = max([len(runtime.turn_spans(c.dropped + c.kept)[0]) for c in all_cases]
                  + [len(runtime.tokenize(text)) for text in generic_paragraphs()])
    judge_llm = llama_cpp.Llama(model_path=str(runtime.model.path), n_ctx=longest + 256,
                                n_threads=runtime.n_threads, n_threads_batch=runtime.n_threads,
                                verbose=False)
    all_cells = [writer.written(case.dropped) for case in all_cases]
    result = {"model": str(runtime.model.path),
              "rule": {"layers": list(rule.resolved_layers), "probe_layer": rule.probe_layer,
                       "tau": rule.tau, "decay": rule.decay},
              "gates": [round(float(g), 4) for g in gates], "train_cases": len(training),
              "train_seconds": round(train_seconds, 1),
              "cases": {kind: sum(c.kind == kind for c in all_cases)
                        for kind in ("facts", "topic")}}
    result |= score(Judge(judge_llm, runtime), writer, all_cases, all_cells, gates)
    vector = next((v for v in (c.read(gates, writer.baseline()) for c in all_cells)
                   if v is not None), np.zeros((n_layer, runtime.llm.n_embd()), np.float32))
    result["tokens_per_s_ratio"] = round(
        generation_ratio(runtime, vector, repetitions=repetitions), 4)
    judge_llm.close()
    writer.close()
    runtime.close()
    result |= resume(model, resume_tokens)
    return result


def report(result: dict) -> str:
    return "\n".join([
        f"model              {result['model']}  cells {result['rule']}",
        f"read gates         learned on {result['train_cases']} conversations in "
        f"{result['train_seconds']:.0f} s; at τ {result['rule']['tau']} open for "
        f"{result['gate_open']}",
        f"facts  NLL full {result['nll_full']:.2f} · truncated {result['nll_truncated']:.2f} · "
        f"cells {result['nll_cells']:.2f}  → gap recovered {result['gap_recovered']:.1%} "
        "(target ≥ 25 %)",
        f"topics NLL full {result['nll_full_topic']:.2f} · truncated "
        f"{result['nll_truncated_topic']:.2f} · cells {result['nll_cells_topic']:.2f}  → gap "
        f"recovered {result['gap_recovered_topic']:.1%}",
        f"perplexity change  generic {result['ppl_change_generic']:+.1%} · neutral question "
        f"{result['ppl_change_question']:+.1%}  (target ≤ 5 %)",
        *[f"{'τ ' + format(row['tau'], '.2f') if 'tau' in row else 'no turn gate':<18} "
          f"facts {row['gap_recovered']:.1%} · topics {row['gap_recovered_topic']:.1%} · "
          f"generic {row['ppl_change_generic']:+.1%} · neutral question "
          f"{row['ppl_change_question']:+.1%} · open {row['gate_open']}"
          for row in result["curve"] + [result["ungated"]]],
        f"tokens/s ratio     {result['tokens_per_s_ratio']:.3f}  (cells on / off, target ≥ 0.97)",
        f"resume             {result['resume_speedup']:.1f}× faster to the first token "
        f"({result['resume_first_token_s']:.2f} s vs "
        f"{result['reread_first_token_s']:.2f} s re-reading "
        f"{result['resume_prompt_tokens']} tokens; target ≥ 20×), same reply: "
        f"{result['resume_identical']}",
    ])
