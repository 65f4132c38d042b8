"""English text as the learner and the benchmarks read it: words, coarse word classes,
lemmas and content words. Closed classes come from ``assets/grammar/english.toml``; open
classes (noun, verb, adjective) from lemminflect's lexicon, so no word list here grows
with the sentences it meets."""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Collection, Sequence

from lemminflect import getAllLemmas, getInflection

from store import paths

CONTENT_CLASSES = frozenset({"NOUN", "PROPN", "ADJ", "VERB", "NUM"})
WORD = re.compile(r"(?:[A-Za-z]\.){2,}|\d+(?:[.,:/]\d+)*\w*|[\w][\w'’&-]*|&")


@functools.cache
def grammar() -> dict[str, frozenset[str]]:
    """The closed word classes (lower case)."""
    raw = tomllib.loads(paths.asset("grammar", "english.toml").read_text(encoding="utf-8"))
    return {name: frozenset(w for w in words if isinstance(w, str))
            for name, words in raw.items() if name != "contractions"}


@functools.cache
def contractions() -> tuple[tuple[str, str], ...]:
    raw = tomllib.loads(paths.asset("grammar", "english.toml").read_text(encoding="utf-8"))
    return tuple((short, long) for short, long in raw["contractions"])


def expand_contractions(text: str) -> str:
    """"I'm" → "I am", "can't" → "cannot"; "'s" stays (is, has or a possessive)."""
    text = text.replace("’", "'")
    for short, long in contractions():
        if short.startswith("'") or short == "n't":
            text = re.sub(rf"(?<=\w){re.escape(short)}\b", long, text, flags=re.IGNORECASE)
        else:
            def cased(m: re.Match[str], long: str = long) -> str:
                return m[0][0] + long[1:]

            text = re.sub(rf"\b{re.escape(short)}\b", cased, text, flags=re.IGNORECASE)
    return text


def words(text: str) -> list[str]:
    return WORD.findall(text)


def is_number(word: str) -> bool:
    return bool(re.fullmatch(r"\d[\d.,:/]*(?:st|nd|rd|th|s|am|pm|k|km|kg|m)?", word.lower())) \
        or word.lower() in grammar()["number_words"]


def is_relative_time(words: Sequence[str]) -> bool:
    """A time said relative to now: "last spring", "next month", "every week"."""
    return len(words) == 2 and words[0].lower() in grammar()["time_deictics"] \
        and words[1].lower() in grammar()["time_nouns"]


def participle(word: str) -> bool:
    """A verb's -ing or -ed form ("running", "dried"), whose verb lemma is another word; not
    one that only ends so ("spring", "need", "shed")."""
    lower = word.lower()
    return lower.endswith(("ing", "ed")) and getAllLemmas(lower).get("VERB", (lower,))[0] != lower


def past_participle(word: str) -> bool:
    """A past participle that is no past tense ("been", "done"; not "kept", "worked")."""
    lower = word.lower()
    verb = lemma(lower, "VERB")
    return lower in (getInflection(verb, tag="VBN") or ()) \
        and lower not in (getInflection(verb, tag="VBD") or ())


@functools.cache
def tag(word: str) -> str:
    """A coarse word class: DET POSS PRON PREP AUX NEG CONJ WH NUM PROPN NOUN VERB ADJ ADV.
    Without a parser a word has its likeliest class out of context; a capitalised word the
    lexicon does not know is a name."""
    g, lower = grammar(), word.lower()
    for name, cls in (("possessives", "POSS"), ("determiners", "DET"),
                      ("subject_pronouns", "PRON"), ("object_pronouns", "PRON"),
                      ("auxiliaries", "AUX"), ("negations", "NEG"),
                      ("question_words", "WH"), ("prepositions", "PREP"),
                      ("conjunctions", "CONJ"), ("relatives", "CONJ")):
        if lower in g[name]:
            return cls
    if is_number(word):
        return "NUM"
    if lower in g["adverbs"] or lower in g["interjections"]:
        return "ADV"
    lexicon = getAllLemmas(lower)
    if word[:1].isupper() and word != "I" and not lexicon:
        return "PROPN"  # (a capitalised word the lexicon knows is a name inside a sentence: tags)
    if not lexicon:
        return "NOUN"  # a word the lexicon lacks is most often a rare noun ("tetras")
    if "VERB" in lexicon and (participle(lower) or not {"NOUN", "ADJ"} & set(lexicon)):
        return "VERB"
    for cls in ("NOUN", "ADJ", "VERB", "ADV"):
        if cls in lexicon:
            return cls
    return "NOUN"


def tags(sentence: list[str], names: Collection[str] = ()) -> list[str]:
    """``tag`` of each word, with the one piece of context that settles most noun/verb
    ambiguity: after a subject pronoun, an auxiliary or an infinitive "to", or before an
    object pronoun, a word the lexicon knows as a verb is one ("I drive", "wants to call",
    "everyone calls me"); after a determiner or a possessive it is not ("my drive"). A first
    word among ``names`` (capitalised by the user elsewhere) is a name, as any capitalised
    word after it is."""
    out = [tag(w) for w in sentence]
    if out and sentence[0] in names and out[0] in {"NOUN", "ADJ", "VERB"}:
        out[0] = "PROPN"
    verb_seen = bool(out) and out[0] in {"VERB", "AUX"}
    for i in range(1, len(sentence)):
        word = sentence[i]
        if word[:1].isupper() and out[i] in {"NOUN", "ADJ", "VERB"}:
            out[i] = "PROPN"  # capitalised inside a sentence: a name ("called Rusty")
        lexicon = getAllLemmas(word.lower())
        if out[i] == "ADV" and word.lower() not in grammar()["adverbs"] \
                and "ADV" not in lexicon and i + 1 < len(sentence) \
                and tag(sentence[i + 1]) == "NOUN":
            # an interjection only opens a clause: inside one before a noun it is the
            # noun's modifier ("evening classes", "a great teacher"); not a word English
            # also uses as an adverb ("slept well last night")
            out[i] = next((c for c in ("NOUN", "ADJ") if c in lexicon), out[i])
        k = i - 1
        while k > 0 and out[k] == "ADV":
            k -= 1  # "I always check": what comes before the adverbs
        before = sentence[k].lower()
        if (before in grammar()["copulas"] and "ADJ" in lexicon
                and out[i] in {"NOUN", "ADJ", "VERB"}
                and not participle(word)):
            out[i] = "ADJ"  # "she is grey"
        elif out[i] in {"NOUN", "ADJ"} and "VERB" in lexicon and (
                before in grammar()["subject_pronouns"] or out[k] in {"AUX", "NEG"}
                or (before == "to" and k > 0 and out[k - 1] == "VERB")
                or (not verb_seen and out[k] in {"NOUN", "PROPN"}
                    and word.lower().endswith(("s", "ed")))  # "my brother Jonas builds"
                or (not verb_seen and i + 1 < len(sentence)  # "my students call me"
                    and sentence[i + 1].lower() in {"me", "us", "him", "them"})):
            out[i] = "VERB"
        elif out[i] == "VERB" and out[k] in {"DET", "POSS"} and (
                {"NOUN", "ADJ"} & set(lexicon)):
            out[i] = "NOUN" if "NOUN" in lexicon else "ADJ"
        verb_seen = verb_seen or out[i] in {"VERB", "AUX"}
    return _do_supported(sentence, out)


SUBJECT_TAGS = frozenset({"DET", "POSS", "NOUN", "PROPN", "ADJ", "NUM", "ADV"})


def _do_supported(sentence: list[str], out: list[str]) -> list[str]:
    """A question's "do" before its subject says the verb comes after the subject: the first
    word after it that English uses as a verb and that no noun follows ("What did my son
    Mateo pick?", "Where does my book club meet?"; out of context "pick" and "club" are
    nouns)."""
    for d, word in enumerate(sentence):
        if out[d] == "VERB":
            return out
        if out[d] == "AUX" and lemma(word, "VERB") == "do" and (d == 0 or "WH" in out[:d]):
            break
    else:
        return out
    before = d + 1  # the word before the one looked at, adverbs passed over
    for i in range(d + 2, len(sentence)):
        if out[i] not in SUBJECT_TAGS:
            break
        if out[i] == "ADV":
            continue
        if (out[i] in {"NOUN", "ADJ"} and out[before] not in {"DET", "POSS"}
                and "VERB" in getAllLemmas(sentence[i].lower())
                and (i + 1 == len(sentence) or out[i + 1] not in {"NOUN", "ADJ"})):
            out[i] = "VERB"
            break
        before = i
    return out


@functools.cache
def lemma(word: str, cls: str | None = None) -> str:
    """The dictionary form, as a ``cls`` ("VERB", "NOUN", …) when given."""
    lower = word.lower()
    lexicon = getAllLemmas(lower)
    for c in ((cls,) if cls in lexicon else ()) + ("NOUN", "VERB", "ADJ", "ADV"):
        if c in lexicon:
            return lexicon[c][0]
    return lower


def can_modify(word: str) -> bool:
    """English uses the word as an adjective ("full", "favourite"; not "dad")."""
    return "ADJ" in getAllLemmas(word.lower())


def content_lemmas(text: str) -> set[str]:
    """Lemmas of the words that say what a text is about: not closed-class words, not
    light verbs ("What is my brother called?" → {"brother"}); a possessive is its noun's
    ("my cat's name" is about the cat)."""
    sentence = _without_possessives(words(expand_contractions(text)))
    return {base for word, cls in zip(sentence, tags(sentence), strict=True)
            if (base := _content_lemma(word, cls))}


def about_spans(question: str, statement: str, answer: str,
                classes: frozenset[str] = CONTENT_CLASSES) -> list[tuple[int, int]]:
    """Where ``question`` names what it asks about: the character spans of its content words
    (of ``classes``) that the statement it was derived from also uses, the answer's excepted
    ("What's my cat's name?" from "My cat is called Mosel" → "cat")."""
    wanted = content_lemmas(statement) - content_lemmas(answer)
    found = list(WORD.finditer(question))
    sentence = _without_possessives([m[0] for m in found])
    return [(m.start(), m.start() + len(word))
            for m, word, cls in zip(found, sentence, tags(sentence), strict=True)
            if cls in classes and _content_lemma(word, cls) in wanted]


def _without_possessives(sentence: list[str]) -> list[str]:
    return [re.sub(r"['’]s?$", "", w) or w for w in sentence]


def _content_lemma(word: str, cls: str) -> str | None:
    """The word's lemma if it is a content word (a light verb is not), else None."""
    if cls not in CONTENT_CLASSES:
        return None
    base = lemma(word, cls)
    return None if cls == "VERB" and base in grammar()["light_verbs"] else base


def fronted(question: str) -> bool:
    """Whether ``question`` opens with its question word, as people ask ("What is my cat
    afraid of?"), rather than asking in place ("My cat is afraid of what?")."""
    said = words(question)
    return bool(said) and said[0].lower() in grammar()["question_words"]


def question_key(question: str) -> frozenset[str]:
    """What a question asks: its content lemmas and its question words ("Where do I live
    now?" → {where, live}; "When did I move?" → {when, move}). Nothing for a question with
    no content word ("What am I?", "What did we go with?": light verbs say nothing): keyed
    {what}, the two were one question, and a new answer to the first was trained onto every
    phrasing of the second."""
    content = content_lemmas(question)
    if not content:
        return frozenset()
    said = [w.lower() for w in words(question)]
    asked = {w for w in said if w in grammar()["question_words"]}
    return frozenset(content | asked | _slot_preposition(said))


def _slot_preposition(said: list[str]) -> set[str]:
    """The preposition whose object a question asks for, stranded at its end or before its
    question word ("What do I need a name for?", "I need a name for what?"): part of what
    is asked. Without it those two were "What is my name?" ({what, name}), and a user's own
    name was trained onto the kitten they needed one for."""
    prepositions, question_words = grammar()["prepositions"], grammar()["question_words"]
    return {w for w, after in zip(said, [*said[1:], ""], strict=True)
            if w in prepositions and (not after or after in question_words)}


def normalise(text: str) -> str:
    """For word-for-word comparison: lower case, words only ("What's my cat's name?" →
    "what's my cat's name")."""
    return " ".join(w.lower() for w in words(text.replace("’", "'")))
