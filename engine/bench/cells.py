"""``engram bench cells``: do cells recover what fell out of the window, at what cost?

Each case is a conversation whose early turns (facts about the user, or a subject) are
followed by filler turns; the early turns are out of the window. For each probe, the
negative log-likelihood (nats, summed over the expected answer's tokens) with (a) the full
conversation, (b) only the filler turns, (c) the filler turns + the cells written from the
dropped turns exactly as a session writes them. ``gap_recovered`` = (b − c) / (b − a).

Side effects, cells on vs off: perplexity of generic paragraphs and of a general-knowledge
answer asked after the same truncated context; generation speed of the chat runtime.
Then session state: resuming a ~2,000-token session from the store vs re-reading it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import llama_native
from engine.cells import CellRule, Cells, CellWriter
from engine.errors import EngramError
from store import paths

FILLER_PER_CASE = 4
ACKS = ("Got it.", "Noted, thanks for telling me.", "Good to know!")


@dataclass(frozen=True)
class Probe:
    question: str
    answer: str


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "facts" | "topic"
    dropped: list[tuple[str, str]]  # (speaker, text): the turns out of the window
    kept: list[tuple[str, str]]  # the filler turns still in it
    probes: list[Probe]
    neutral: Probe  # a general-knowledge question asked after the same context


def _jsonl(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as exc:
        raise EngramError(f"cannot read {path}: {exc}") from None


def cases(facts: Path | None = None, topics: Path | None = None) -> list[Case]:
    """Fact and topic conversations (``user-facts.jsonl`` format) padded with filler turns."""
    filler = [(("User", f["turns"][0]), ("Assistant", f["turns"][1]))
              for f in _jsonl(paths.eval_data("filler-turns.jsonl"))]
    world = _jsonl(paths.eval_data("world-facts.jsonl"))
    out = []
    records = [(r, "facts") for r in _jsonl(facts or paths.eval_data("user-facts.jsonl"))]
    records += [(r, r.get("kind", "topic")) for r in
                _jsonl(topics or paths.eval_data("topic-conversations.jsonl"))]
    for i, (record, kind) in enumerate(records):
        dropped = []
        for j, text in enumerate(record["turns"]):
            dropped += [("User", text), ("Assistant", ACKS[(i + j) % len(ACKS)])]
        kept = [turn for k in range(FILLER_PER_CASE)
                for turn in filler[(i * FILLER_PER_CASE + k) % len(filler)]]
        probes = [Probe(p["q"], p["a"]) for p in record["probes"]]
        neutral = world[i % len(world)]
        out.append(Case(record["id"], kind, dropped, kept, probes,
                        Probe(neutral["question"], neutral["answer"])))
    return out


def render(turns: list[tuple[str, str]]) -> str:
    """The runtime's plain dialogue format (the built-in base model has no chat template)."""
    return "\n".join(f"{speaker}: {text}" for speaker, text in turns)


def cells_for(case: Case, writer: CellWriter, rule: CellRule, n_layer: int) -> Cells:
    """The cells a session holds once ``case.dropped`` has left its window."""
    cells = Cells.empty(rule, n_layer, writer.llm.n_embd(), writer.model_sha256)
    writer.fold(cells, case.dropped, 0, len(case.dropped))
    return cells


class Judge:
    """Answer NLLs from llama.cpp (a second context on the model): each case's context is
    evaluated once and each probe appended to it; the output head is computed only where an
    answer token is predicted (on a 262k vocabulary it costs more than the rest)."""

    def __init__(self, llm):
        self.llm = llm

    def tokens(self, text: str, bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=bos, special=False)

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

    def answers(self, context: str, probes: list[Probe]) -> list[float]:
        """Summed NLL of each probe's answer after ``context`` + the question."""
        prefix = self.tokens(context, bos=True)
        llama_native.forget_after(self.llm, 0)
        llama_native.decode_at(self.llm, prefix, 0, [])
        out = []
        for probe in probes:
            answer = self.tokens(f" {probe.answer}")
            question = self.tokens(f"\nUser: {probe.question}\nAssistant:")
            out.append(self._nll(question + answer, len(prefix), answer))
        return out

    def text_nll(self, text: str) -> tuple[float, int]:
        """Summed NLL of a text and its token count (for perplexity)."""
        tokens = self.tokens(text, bos=True)
        return self._nll(tokens, 0, tokens[1:]), len(tokens) - 1


def generic_paragraphs() -> list[str]:
    text = paths.eval_data("generic-text.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def score(judge: Judge, all_cases: list[Case], vectors: list[np.ndarray | None]) -> dict:
    """NLLs under (a) full, (b) truncated, (c) truncated + each case's vector; side effects."""
    rows = {"facts": [], "topic": []}
    neutral_off = neutral_on = 0.0
    neutral_tokens = 0
    paragraphs = generic_paragraphs()
    generic_off, generic_on, generic_tokens = 0.0, 0.0, 0
    for case, vector in zip(all_cases, vectors):
        judge.set_cells(None)
        full = judge.answers(render(case.dropped + case.kept), case.probes)
        *truncated, neutral_a = judge.answers(render(case.kept), case.probes + [case.neutral])
        paragraph = paragraphs[len(rows["facts"] + rows["topic"]) % len(paragraphs)]
        off, n = judge.text_nll(paragraph)
        judge.set_cells(vector)
        *with_cells, neutral_b = judge.answers(render(case.kept), case.probes + [case.neutral])
        on, _ = judge.text_nll(paragraph)
        judge.set_cells(None)
        rows[case.kind] += list(zip(full, truncated, with_cells))
        neutral_off, neutral_on = neutral_off + neutral_a, neutral_on + neutral_b
        neutral_tokens += len(judge.tokens(f" {case.neutral.answer}"))
        generic_off, generic_on, generic_tokens = generic_off + off, generic_on + on, generic_tokens + n
    result = {}
    for kind, suffix in (("facts", ""), ("topic", "_topic")):
        a, b, c = (statistics.fmean(r[k] for r in rows[kind]) for k in range(3))
        result |= {f"gap_recovered{suffix}": round((b - c) / (b - a), 4) if b != a else 0.0,
                   f"nll_full{suffix}": round(a, 3), f"nll_truncated{suffix}": round(b, 3),
                   f"nll_cells{suffix}": round(c, 3)}
    generic = math.exp((generic_on - generic_off) / generic_tokens) - 1
    question = math.exp((neutral_on - neutral_off) / neutral_tokens) - 1
    result |= {"ppl_change_generic": round(generic, 4), "ppl_change_question": round(question, 4),
               "ppl_change_neutral": round(max(generic, question), 4)}
    return result


def generation_ratio(runtime, vector: np.ndarray, tokens: int = 48, repetitions: int = 3) -> float:
    """Tokens/s of the chat runtime with a cell vector set vs none (alternating, medians)."""
    from engine.prompt import Turn
    from engine.runtime import Sampling

    def speed(cells: np.ndarray | None) -> float:
        runtime.set_cells(cells)
        runtime.invalidate_cache()
        reply = runtime.reply([Turn("user", "Tell me about the history of the bicycle.")], None,
                              Sampling.greedy(tokens))
        for _ in reply:
            pass
        return reply.stats.tokens_per_s

    on, off = [], []
    for _ in range(repetitions):
        off.append(speed(None))
        on.append(speed(vector))
    runtime.set_cells(None)
    return statistics.median(on) / statistics.median(off)


RESUME_QUESTION = "Thanks. To sum up, what did we talk about first?"


def _history(tokenize, target: int) -> list[tuple[str, str]]:
    """User/assistant pairs from the bench's conversations, about ``target`` tokens long."""
    turns = []
    for case in cases():
        turns += case.dropped + case.kept
        if len(tokenize(render(turns))) >= target:
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
        engine.load()
        session = engine.new_session()
        for speaker, text in _history(engine.runtime.tokenize, history_tokens):
            engine.store.add_message(session.id, speaker.lower(), text)
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
        rule: CellRule | None = None, resume_tokens: int = 2000, repetitions: int = 3) -> dict:
    import llama_cpp

    from engine.runtime import Runtime

    runtime = Runtime(model, n_ctx=1024)
    n_layer = llama_native.n_layer(runtime.llm)
    rule = (rule or CellRule()).resolve(n_layer)
    writer = CellWriter(runtime.llm, runtime.model.sha256, rule)
    all_cases = cases(facts, topics)
    longest = max(len(runtime.tokenize(text)) for text in
                  [render(c.dropped + c.kept) for c in all_cases] + generic_paragraphs())
    judge_llm = llama_cpp.Llama(model_path=str(runtime.model.path), n_ctx=longest + 256,
                                n_threads=runtime.n_threads, n_threads_batch=runtime.n_threads,
                                verbose=False)
    vectors = [cells_for(case, writer, rule, n_layer).read(rule, writer.baseline())
               for case in all_cases]
    result = {"model": str(runtime.model.path), "rule": {"layers": list(rule.layers),
              "alpha": rule.alpha, "decay": rule.decay, "centre": rule.centre},
              "cases": {kind: sum(c.kind == kind for c in all_cases) for kind in ("facts", "topic")}}
    result |= score(Judge(judge_llm), all_cases, vectors)
    result["tokens_per_s_ratio"] = round(
        generation_ratio(runtime, vectors[0], repetitions=repetitions), 4)
    judge_llm.close()
    writer.close()
    runtime.close()
    result |= resume(model, resume_tokens)
    return result


def report(result: dict) -> str:
    return "\n".join([
        f"model              {result['model']}  cells {result['rule']}",
        f"facts  NLL full {result['nll_full']:.2f} · truncated {result['nll_truncated']:.2f} · "
        f"cells {result['nll_cells']:.2f}  → gap recovered {result['gap_recovered']:.1%} "
        "(target ≥ 25 %)",
        f"topics NLL full {result['nll_full_topic']:.2f} · truncated "
        f"{result['nll_truncated_topic']:.2f} · cells {result['nll_cells_topic']:.2f}  → gap "
        f"recovered {result['gap_recovered_topic']:.1%}",
        f"perplexity change  generic {result['ppl_change_generic']:+.1%} · neutral question "
        f"{result['ppl_change_question']:+.1%}  (target ≤ 5 %)",
        f"tokens/s ratio     {result['tokens_per_s_ratio']:.3f}  (cells on / off, target ≥ 0.97)",
        f"resume             {result['resume_speedup']:.1f}× faster to the first token "
        f"({result['resume_first_token_s']:.2f} s vs {result['reread_first_token_s']:.2f} s re-reading "
        f"{result['resume_prompt_tokens']} tokens; target ≥ 20×), same reply: "
        f"{result['resume_identical']}",
    ])
