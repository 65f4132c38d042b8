"""``engram bench locomo FILE``: LoCoMo, the public long-term conversational memory benchmark.

A LoCoMo conversation (two people over many sessions) is shared with Engram the way a user
would paste it: each of its sessions becomes an Engram session whose messages are the
conversation's turns, said in the third person ("I lost my job" by Jon → "Jon lost Jon's
job"), learned in order. Then its single-hop questions (category 4) are asked in a fresh
session, greedily, of Engram (the learned memory), of the base model, and of the base model
with a retrieval baseline in its context (the top-k earlier turns BM25 finds for the
question, via ``bm25s``). Scored with LoCoMo's token F1 (its normalisation and Porter
stemming) and ``contains`` (the reply contains the whole normalised answer). The data is
never shipped with Engram: pass the file.
"""

from __future__ import annotations

import json
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from lemminflect import getAllLemmas, getInflection

from engine import text
from engine.bench.learn import fresh_engine, reply_text
from engine.engine import Engine
from engine.errors import EngramError
from engine.prompt import Turn
from engine.runtime import Sampling

CATEGORY = 4  # single-hop
ANSWER_TOKENS = 48
RETRIEVED = 5  # turns the retrieval baseline puts in the context
FIRST_PERSON = {"i": "{name}", "me": "{name}", "my": "{name}'s", "mine": "{name}'s",
                "myself": "{name}"}


def load(path: str | Path) -> dict:
    """A LoCoMo conversation file: speakers, sessions in order (lists of turns), questions."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        talk = data.get("conversation", data)
        sessions = sorted(((int(m[1]), turns) for key, turns in talk.items()
                           for m in [re.fullmatch(r"session_(\d+)", key)] if m and turns),
                          key=lambda pair: pair[0])
        return {"speakers": (talk["speaker_a"], talk["speaker_b"]),
                "sessions": [turns for _, turns in sessions],
                "numbers": [number for number, _ in sessions], "qa": data["qa"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngramError(f"{path} is not a LoCoMo conversation file ({exc})") from None


def third_person(said: str, speaker: str, other: str) -> str:
    """A turn as someone sharing the conversation would say it: the speaker's "I", "my"
    and "me" become their name, "you" the other person's, and a verb after either agrees
    ("I love" → "Jon loves", "I'm" → "Jon is")."""
    words = re.findall(r"\w+(?:'\w+)?|\W+", text.expand_contractions(said))
    out = []
    for i, word in enumerate(words):
        lower = word.lower()
        if lower in FIRST_PERSON:
            out.append(FIRST_PERSON[lower].format(name=speaker))
        elif lower in {"you", "your", "yours", "yourself"}:
            out.append(other + ("'s" if lower in {"your", "yours"} else ""))
        elif i >= 2 and words[i - 2].lower() in {"i", "you"} and words[i - 1].isspace():
            out.append(_agreeing(word))
        else:
            out.append(word)
    return "".join(out)


def _agreeing(verb: str) -> str:
    """The third person singular of a verb said after "I" or "you" (am, are → is; have →
    has; go → goes)."""
    lower = verb.lower()
    if lower in {"am", "are", "were"}:
        return {"am": "is", "are": "is", "were": "was"}[lower]
    if lower in text.grammar()["finite_auxiliaries"] - {"have", "do"} or (
            "VERB" not in getAllLemmas(lower)):
        return verb
    if lower != text.lemma(verb, "VERB"):
        return verb  # already past or a participle ("I went")
    return (getInflection(lower, tag="VBZ") or (verb,))[0]


def normalise(answer: str) -> str:
    """LoCoMo's answer normalisation: no commas, articles, "and" or punctuation; lower case."""
    answer = str(answer).replace(",", "")
    answer = re.sub(r"\b(a|an|the|and)\b", " ", answer, flags=re.IGNORECASE)
    answer = "".join(ch for ch in answer if ch not in string.punctuation)
    return " ".join(answer.lower().split())


def f1(prediction: str, truth: str) -> float:
    """LoCoMo's token F1 over Porter stems."""
    from nltk.stem import PorterStemmer

    stem = PorterStemmer().stem
    predicted = [stem(w) for w in normalise(prediction).split()]
    expected = [stem(w) for w in normalise(truth).split()]
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, truth: str) -> bool:
    return normalise(truth) in normalise(prediction)


def run(path: str | Path, model: str | None = None, sessions: int | None = None,
        questions: int | None = None, details: TextIO = sys.stderr,
        log: Callable[[str], None] | None = None) -> dict:
    """The conversation learned session by session with the shipped gate, then its
    single-hop questions for Engram, the base model and the retrieval baseline."""
    import bm25s

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    talk = load(path)
    a, b = talk["speakers"]
    chosen = talk["sessions"][:sessions]
    asked = [q for q in talk["qa"] if q.get("category") == CATEGORY
             and answerable(q, talk["numbers"][:sessions])][:questions]
    shared = [third_person(t["text"], t["speaker"], b if t["speaker"] == a else a)
              for turns in chosen for t in turns if t.get("text")]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(shared, show_progress=False), show_progress=False)
    with fresh_engine(model, None) as engine:
        engine.load()
        learn_seconds = []
        for n, turns in enumerate(chosen, 1):
            session = engine.new_session()
            for t in turns:
                if t.get("text"):
                    engine.store.add_message(session.id, "user", third_person(
                        t["text"], t["speaker"], b if t["speaker"] == a else a))
            started = time.perf_counter()
            [result] = engine.loaded()[2].run(session_ids=[session.id])
            learn_seconds.append(time.perf_counter() - started)
            log(f"locomo session {n}/{len(chosen)}: {result.summary()}")
        scores: dict[str, list[tuple[float, bool]]] = {"engram": [], "base": [], "retrieval": []}
        for q in asked:
            hits, _ = retriever.retrieve(bm25s.tokenize([q["question"]], show_progress=False),
                                         k=min(RETRIEVED, len(shared)), show_progress=False)
            context = [Turn("user", shared[i]) for i in hits[0].tolist()]
            replies = {"engram": _ask(engine, q["question"]),
                       "retrieval": _ask(engine, q["question"], context, base=True),
                       "base": _ask(engine, q["question"], base=True)}
            for name, reply in replies.items():
                scores[name].append((f1(reply, q["answer"]), contains(reply, q["answer"])))
                print(f"{name:<10} {f1(reply, q['answer']):.2f} {q['question']!r} expected "
                      f"{q['answer']!r}: {reply!r}", file=details, flush=True)
    return {"file": Path(path).name, "sessions": len(chosen), "questions": len(asked),
            "learn_seconds_per_session": round(sum(learn_seconds) / max(len(chosen), 1), 2),
            **{name: {"f1": round(sum(s for s, _ in rows) / max(len(rows), 1), 4),
                      "contains": round(sum(c for _, c in rows) / max(len(rows), 1), 4)}
               for name, rows in scores.items()}}


def answerable(question: dict, learned: Sequence[int]) -> bool:
    """Whether every turn ``question``'s evidence cites ("D3:7": session 3, turn 7) lies in
    the ``learned`` sessions (their numbers): with ``--sessions N``, a question about a
    later session is not asked, or a partial run would score what was never shared."""
    cited = {int(n) for n in re.findall(r"D(\d+):", " ".join(map(str, question.get(
        "evidence") or [])))}
    return bool(cited) and cited <= set(learned)


def _ask(engine: Engine, question: str, before: Sequence[Turn] = (),
         base: bool = False) -> str:
    """Greedy reply in a fresh context: with the learned memory, or on the base weights."""
    runtime, memory, _, _ = engine.loaded()

    def reply() -> str:
        return reply_text(runtime, engine.settings.system_prompt, question, before,
                          Sampling.greedy(ANSWER_TOKENS)).text
    if base and memory.applied:
        with memory.trying(None):
            return reply()
    return reply()


def report(results: list[dict]) -> str:
    lines = [f"{'conversation':<16}{'sessions':>9}{'questions':>10}"
             + "".join(f"{name + ' f1':>15}{name + ' contains':>20}"
                       for name in ("engram", "base", "retrieval"))]
    for r in results:
        lines.append(f"{r['file']:<16}{r['sessions']:>9}{r['questions']:>10}" + "".join(
            f"{r[name]['f1']:>15.4f}{r[name]['contains']:>20.4f}"
            for name in ("engram", "base", "retrieval")))
    return "\n".join(lines)
