"""Question/answer pairs derived from what the user said.

Most come from English grammar rules (engine.statement_questions: measured on the bundled
user-facts set, they cover 42 of 42 probed facts where the model's own questions covered
21). The model adds what only it knows: the kind of each answer ("a Volvo is a car"), so that
"What do I drive?" is also asked as "Which car do I drive?", the way users ask (13 of the 42
probes name a kind). For a statement the rules cannot parse, a few-shot prompt
(``assets/probe_templates/questions.txt``) asks the served model for questions a friend
could ask about it. Only *grounded* model pairs are kept:
the answer must be copied from the statement, must not sit in a negated clause ("I no
longer live in Tromsø"), and must not give itself away in the question. Several phrasings
per fact are what lets the overlay generalise to questions it never saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine import statement_questions
from engine.runtime import Runtime, Sampling
from store import paths

NEGATION = re.compile(statement_questions.NEGATORS + r"[^,.;]*", re.IGNORECASE)  # the negated clause
QA_LINE = re.compile(r"^\s*(?P<q>[^?\n]{3,120}\?)\s*A:\s*(?P<a>[^\n]{1,60})$")
STOP_WORDS = set("""a an the and or of in on at to for with from by about is are am was were be been do does
did have has had i me my mine you your we our us he she it its his her they their them what which who
whom whose where when why how that this these those there here q not no""".split())
NOT_NAMES = {"i", "i'm", "i've", "i'd", "i'll", "my", "our", "we", "hi", "hello", "on", "in", "at",
             "the", "yesterday", "today", "tomorrow", "since", "last", "next"}
NAMING_STEMS = {"name", "call"}  # "called"/"named" say nothing about *what* is named
SELF_NAMING = re.compile(r"\b(?i:my name is|my name's|i'm|i am|call me)\s+[A-ZÀ-Þ]")
ASKS_MY_NAME = re.compile(r"\bmy name\b|\bwho am i\b|\bam i called\b|\bcall me\b", re.IGNORECASE)
SECOND_PERSON = [(r"\byour\b", "my"), (r"\byou\b", "I"), (r"\byours\b", "mine"),
                 (r"\bare I\b", "am I"), (r"\bI are\b", "I am"), (r"\bwere I\b", "was I")]


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    statement: str


def _template(name: str = "questions") -> str:
    return (paths.ASSETS / "probe_templates" / f"{name}.txt").read_text()


def statements(user_turns: list[str]) -> list[str]:
    """Split user turns into sentences worth learning from (questions to the model are skipped)."""
    out = []
    for turn in user_turns:
        for sentence in re.split(r"(?<!\b(?:Dr|Mr|Ms|St|Jr)\.)(?<!\bMrs\.)(?<=[.!])\s+", turn.strip()):
            sentence = sentence.strip()
            if len(sentence) > 3 and not sentence.endswith("?"):
                out.append(sentence)
    return out


def first_person(question: str) -> str:
    for pattern, repl in SECOND_PERSON:
        question = re.sub(pattern, repl, question, flags=re.IGNORECASE)
    return question[0].upper() + question[1:]


def grounded(question: str, answer: str, statement: str) -> bool:
    answer_l, statement_l = answer.lower(), statement.lower()
    if len(answer_l) < 2 or answer_l not in statement_l or answer_l in question.lower():
        return False
    if answer_l in {"i", "my", "me", "you", "it", "she", "he", "we", "they"}:
        return False
    negated = " ".join(m.group(0).lower() for m in NEGATION.finditer(statement))
    if answer_l in negated:
        return False
    return _about(question, statement) or (_asks_my_name(question) and bool(SELF_NAMING.search(statement)))


def _stems(text: str) -> set[str]:
    return {w[:4] for w in re.findall(r"[a-zà-ÿ]+", text.lower()) if w not in STOP_WORDS}


def _about(question: str, statement: str) -> bool:
    """The question shares a content word (crudely stemmed) with the statement; "called" and
    "name" do not count, or "What is my cat called?" would be grounded in "a compiler called Loom"."""
    return bool((_stems(question) & _stems(statement)) - NAMING_STEMS)


def _asks_my_name(question: str) -> bool:
    """"What's my name?", "Who am I?": about the user's own name and nothing else."""
    return bool(ASKS_MY_NAME.search(question)) and not _stems(question) - NAMING_STEMS - {"s"}


def whole_name(answer: str, statement: str) -> str:
    """A name answer widened to the whole capitalised run it sits in ("Ada" → "Ada Quill"):
    the few-shot model often copies only the first word of a name."""
    if not answer[:1].isupper():
        return answer
    for run in re.finditer(r"(?:[A-ZÀ-Þ][\w'-]*)(?:\s+[A-ZÀ-Þ][\w'-]*)*", statement):
        words = run.group(0).split()
        for end in (0, -1):
            while words and words[end].lower() in NOT_NAMES and words[end] not in answer.split():
                words.pop(end)
        if answer in " ".join(words):
            return " ".join(words)
    return answer


def parse(text: str, statement: str) -> list[QA]:
    pairs = []
    for line in ("Q:" + text).split("\n"):
        if not line.startswith("Q:"):
            break  # the model moved on to another statement
        match = QA_LINE.match(line[2:])
        if not match:
            continue
        question, answer = first_person(match["q"].strip()), match["a"].strip().rstrip(".")
        if grounded(question, answer, statement):
            pairs.append(QA(question, whole_name(answer, statement), statement))
    return pairs


def derive(runtime: Runtime, user_turns: list[str], samples: int = 2) -> list[QA]:
    """De-duplicated Q/A pairs for every statement in the user's turns: those its grammar
    gives (engine.statement_questions); for a statement the grammar rules cannot parse, the
    model's grounded greedy pairs and its sampled ones that are self-consistent."""
    said = statements(user_turns)
    pairs = {q.lower(): QA(q, a, statement) for q, a, statement in statement_questions.questions(said)}
    parsed = {qa.statement for qa in pairs.values()}
    unparsed = [s for s in said if s not in parsed]
    template = _template() if unparsed else ""
    for statement in unparsed:
        prompt = template.replace("{statement}", statement)
        for i in range(samples):
            sampling = (Sampling.greedy(48) if i == 0
                        else Sampling(temperature=0.8, top_p=0.95, max_tokens=48, seed=i))
            for qa in parse(runtime.complete(prompt, sampling, stop=["\n\n", "Statement:"]), statement):
                if qa.question.lower() not in pairs and (i == 0 or consistent(runtime, template, qa)):
                    pairs[qa.question.lower()] = qa
    found = list(pairs.values())
    return found + kind_pairs(runtime, found)


def varied(pairs: list[QA], per_answer: int) -> list[QA]:
    """At most ``per_answer`` phrasings of each answer, each next one the least like those
    kept (word overlap): referents and kinds multiply the grammar's phrasings (38 for one
    session of 4 facts, which took 70 s to learn), and near-copies add little."""
    groups: dict[str, list[int]] = {}
    for i, qa in enumerate(pairs):
        groups.setdefault(qa.answer.lower(), []).append(i)
    words = [set(re.findall(r"[\w']+", qa.question.lower())) for qa in pairs]
    kept = set()
    for group in groups.values():
        chosen = group[:1]
        for _ in range(min(per_answer, len(group)) - 1):
            chosen.append(max((i for i in group if i not in chosen), key=lambda i: min(
                1 - len(words[i] & words[j]) / len(words[i] | words[j]) for j in chosen)))
        kept.update(chosen)
    return [qa for i, qa in enumerate(pairs) if i in kept]


def kind_pairs(runtime: Runtime, pairs: list[QA]) -> list[QA]:
    """Each answer's kind asked for: "What do I drive? → Volvo 240" also as "Which car do I
    drive?" and "What car do I drive?" — users name the kind of what they ask about ("Which
    city do I live in?"), and only the model knows that a Volvo is a car (a few-shot prompt,
    ``kinds.txt``, asked once per answer and only for questions that have a kind form)."""
    asked = {qa.question.lower() for qa in pairs}
    kind_of, kinds, out = None, {}, []
    for qa in pairs:
        if not statement_questions.kind_questions(qa.question, "thing"):
            continue
        if qa.answer not in kinds:
            kind_of = kind_of or kind_chooser(runtime)
            kinds[qa.answer] = kind_of(qa.answer)
        kind = kinds[qa.answer]
        for question in statement_questions.kind_questions(qa.question, kind) if _is_kind(kind, qa.answer) else []:
            if question.lower() not in asked:
                asked.add(question.lower())
                out.append(QA(question, qa.answer, qa.statement))
    return out


def kind_chooser(runtime: Runtime) -> Callable[[str], str]:
    """answer → the model's likeliest kind for it among common kind words
    (``kind_words.txt``), scored at the first token after the few-shot ``kinds.txt``: left to
    write freely, the 270M model named a similar *thing* as often as a kind (bandoneon →
    "guitar", trilobites → "dinosaurs", Loom → "room"). The files are read and the words
    tokenised once per chooser, not per answer."""
    template, words = _template("kinds"), _template("kind_words").split()
    first = np.array([runtime.tokenize(f" {word}", add_bos=False)[0] for word in words])

    def kind_of(answer: str) -> str:
        return words[int(np.argmax(runtime.next_logits(f"{template}{answer}:")[first]))]
    return kind_of


def _is_kind(kind: str, answer: str) -> bool:
    """Not the answer itself ("peanuts: peanuts")."""
    return kind.rstrip("s") != answer.lower().rstrip("s")


def consistent(runtime: Runtime, template: str, qa: QA) -> bool:
    """Asked the pair's question right after its statement, the model answers (greedy) with
    the pair's answer: a sampled pair that passes grounding but asks something else ("Who is
    the leader in OCaml? A: Loom") does not survive."""
    prompt = template.replace("{statement}", qa.statement) + f" {qa.question} A:"
    answer = runtime.complete(prompt, Sampling.greedy(12), stop=["\n"])
    answer = answer.strip().rstrip(".").lower()
    return bool(answer) and (qa.answer.lower() in answer or answer in qa.answer.lower())
