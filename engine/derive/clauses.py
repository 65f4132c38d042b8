"""What the user said, as clauses a fact can be read from.

A message is split into sentences and each sentence into clauses (at semicolons, dashes,
and commas or conjunctions where a new subject starts). Greetings and discourse markers
that open a clause are dropped, contractions expanded, and a pronoun that refers back to
someone or something of the user's is replaced by it ("She's grey" after "my new kitten" →
"my new kitten is grey"). Clauses that ask the assistant something ("can you suggest …",
"Help me write …") are kept but marked as requests: they still name people and things
("sign it with my name, Aksel"), but their predicates are not facts about the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lemminflect import getAllLemmas

from engine import text

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)|\n+")
CLAUSE_BREAK = re.compile(r"\s*[;:]\s+|\s+[-–—]\s+|\s*,\s*|\s+(?=(?:and|but|so|because|though|"
                          r"although|while|since|when|after|before|until|once|whereas)\s)",
                          re.IGNORECASE)
REQUEST_OPENERS = {"can", "could", "would", "will", "do", "does", "did", "is", "are", "should",
                   "shall", "may", "might", "let", "please"}


@dataclass(frozen=True)
class Clause:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    said: str  # the sentence it came from, as the user wrote it
    request: bool  # asks or tells the assistant something: names in it count, facts not

    @property
    def text(self) -> str:
        return " ".join(self.words)


def sentences(turn: str) -> list[str]:
    """A message's sentences; a period after a title or an initial ("Dr. Ines") ends none."""
    out: list[str] = []
    for piece in SENTENCE_END.split(turn.strip()):
        piece = piece.strip()
        if not piece:
            continue
        last = out[-1].split()[-1].rstrip(".").lower() if out else ""
        if out and out[-1].endswith(".") and (last in text.grammar()["titles"] or len(last) == 1):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _starts_clause(words: list[str], tags: list[str]) -> bool:
    """Whether these words open a clause of their own: a subject (a pronoun, someone's or
    something's noun phrase, a name) followed by its verb."""
    i = 0
    while i < len(words) and tags[i] == "ADV":
        i += 1
    if i >= len(words):
        return False
    if words[i].lower() in text.grammar()["subject_pronouns"]:
        return True
    if tags[i] in {"POSS", "DET", "PROPN", "NOUN"}:
        j = i + 1
        while j < len(words) and tags[j] in {"NOUN", "ADJ", "PROPN", "NUM"}:
            j += 1
        return j < len(words) and tags[j] in {"VERB", "AUX"}
    return False


def _pieces(sentence: str) -> list[list[str]]:
    """A sentence cut where a new clause starts; a cut that would leave a piece without a
    subject of its own (a list, an apposition: "my name, Aksel", "because of its crystals")
    is not made."""
    parts = [p for p in CLAUSE_BREAK.split(sentence) if p and p.strip(" ,.!?;:")]
    out: list[list[str]] = []
    grammar = text.grammar()
    for part in parts:
        words = text.words(text.expand_contractions(part))
        if not words:
            continue
        if out and words[0].lower() in grammar["subordinators"] and _amount(out[-1]):
            out[-1] = out[-1] + words  # "two days after we filled it": the amount's, no clause
            continue
        bare = words
        # a subordinator is dropped inside a sentence only: one that opens it ("When I was
        # young I lived …") would leave two clauses run together where no comma cuts them
        while len(bare) > 1 and (bare[0].lower() in grammar["conjunctions"] or (
                out and bare[0].lower() in grammar["subordinators"])):
            bare = bare[1:]
        bare = _without_openers(bare)
        tags = text.tags(bare)
        if not out or _starts_clause(bare, tags) or _fragment(bare, tags) or _asks(bare, tags) \
                or _elliptical(words, tags):
            out.append(bare)
        else:
            out[-1] = out[-1] + words
    return out


def _elliptical(words: list[str], tags: list[str]) -> bool:
    """Whether a piece (``words``; ``tags``: of its words after the conjunction) is a clause
    with its verb left out, not more of the clause before it: opened by a conjunction that
    joins clauses, not list items, with no verb and no preposition first (", so nothing
    with meat please"; "because of its crystals" is the clause's)."""
    g = text.grammar()
    opener = words[0].lower()
    joins = set(g["conjunctions"]) - set(g["list_conjunctions"]) - set(g["subordinators"]) \
        - set(g["prepositions"])  # not "since 2019", "once a week"
    return opener in joins and not {"VERB", "AUX"} & set(tags) and tags[0] != "PREP"


def _amount(words: list[str]) -> bool:
    """Whether ``words`` end in an amount: a number and a noun ("two days"), or one of a unit
    of time ("a week")."""
    tags, g = text.tags(words), text.grammar()
    return len(words) >= 2 and tags[-1] == "NOUN" and (tags[-2] == "NUM" or (
        words[-2].lower() in g["indefinite_articles"] and words[-1].lower() in g["time_nouns"]))


def _can_be_verb(word: str) -> bool:
    return "VERB" in getAllLemmas(word.lower())


def _fragment(words: list[str], tags: list[str]) -> bool:
    """A verb phrase whose subject is the previous clause's ("…, been doing it 6 years",
    "…, quit in March")."""
    if tags[0] in {"PRON", "POSS", "DET", "PROPN"} or _asks(words, tags):
        return False
    return tags[0] in {"AUX", "VERB"} or (_can_be_verb(words[0]) and len(words) > 1 and tags[1] in {
        "PREP", "DET", "NUM", "PRON", "POSS"})  # "quit in March", not "mint and thyme"


def _perfect(subject: list[str], fragment: list[str]) -> list[str]:
    """The "have" a fragment that opens with a past participle left out with its subject
    ("…, been doing it 6 years" → "I have been doing it"), agreeing with that subject; none
    where the verb can be a past tense ("…, quit in March": "I quit in March")."""
    if not text.past_participle(fragment[0]):
        return []
    last = subject[-1].lower()
    plural = last in {"i", "you", "we", "they"} or last != text.lemma(last, "NOUN")
    return ["have" if plural else "has"]


def _asks(words: list[str], tags: list[str]) -> bool:
    """A question or an instruction to the assistant: "can you …", "what vegetables …",
    "Help me write …", "sign it with …"."""
    if not words:
        return False
    first = words[0].lower()
    if tags[0] == "WH" or first in REQUEST_OPENERS:
        return True
    # an imperative: a verb first, then what it acts on
    return _can_be_verb(words[0]) and tags[0] not in {"PRON", "POSS", "DET", "PROPN", "AUX"} \
        and not first.endswith(("ing", "ed")) and not text.past_participle(first) \
        and len(words) > 1 and tags[1] in {"PRON", "POSS", "DET", "NUM", "ADJ", "NOUN"}


def _without_openers(words: list[str]) -> list[str]:
    """Greetings and discourse markers ("Hi!", "OK", "By the way") dropped from the front,
    and a leading adverbial before the user's own subject ("To celebrate I am running …",
    "On weekends we climb …")."""
    interjections = text.grammar()["interjections"]
    tags = text.tags(words)
    if words and tags[0] in {"PREP", "ADV"}:
        own = next((k for k in range(1, len(words) - 1) if words[k] in {"I", "We", "we"}
                    and tags[k + 1] in {"VERB", "AUX"}), 0)
        words = words[own:]
    i = 0
    while i < len(words) - 1:
        for size in (3, 2, 1):
            if " ".join(words[i:i + size]).lower() in interjections and i + size < len(words) \
                    and words[i + size].lower() not in text.grammar()["auxiliaries"]:
                i += size
                break
        else:
            break
    return words[i:]


def _request(words: list[str], tags: list[str], question: bool) -> bool:
    return _asks(words, tags) or (question and not _starts_clause(words, tags))


@dataclass
class _Referent:
    phrase: list[str]  # "my new kitten", "my sister Noor"


def _noun_phrase_at(words: list[str], tags: list[str], i: int) -> list[str]:
    j = i + 1
    while j < len(words) and tags[j] in {"NOUN", "ADJ", "PROPN", "NUM"}:
        j += 1
    return words[i:j] if j > i + 1 else []


def _referents(words: list[str], tags: list[str]) -> list[list[str]]:
    """The user's people and things a clause introduces ("my new kitten", "our garden")."""
    return [phrase for i, w in enumerate(words)
            if w.lower() in {"my", "our"} for phrase in [_noun_phrase_at(words, tags, i)] if phrase]


def _resolve(words: list[str], tags: list[str], referent: list[str] | None) -> list[str]:
    """Pronouns that point back replaced by the latest referent: subject ("she is grey"),
    object ("call her Biscuit") and possessive ("her name is Pilar") alike. "It" only as a
    subject ("it has four rotors"): as an object it is as often the thing just asked for
    ("suggest a paella … we're cooking it")."""
    if not referent:
        return words
    plural = referent[-1].lower().endswith("s") and not referent[-1][:1].isupper()
    # "My sister Noor", said at the start of a sentence, is "my sister Noor" inside another
    inside = ([referent[0].lower(), *referent[1:]]
              if referent[0].lower() in text.grammar()["possessives"] else referent)
    out: list[str] = []
    for i, (word, tag) in enumerate(zip(words, tags, strict=True)):
        said = inside if i else referent
        lower = word.lower()
        person = lower in {"he", "she", "him", "her", "his"}
        agrees = person or (lower in {"they", "them", "their"} and plural) or (
            lower in {"it", "its"} and not plural)
        if not agrees or (lower == "it" and i > 0):
            out.append(word)
        elif lower in {"his", "its", "their"} or (lower == "her" and tag == "POSS" and i + 1 < len(
                words) and tags[i + 1] in {"NOUN", "ADJ"}):
            out += said[:-1] + [said[-1] + "'s"]
        else:
            out += said
    return out


def _relatives(pieces: list[list[str]]) -> list[list[str]]:
    """Each relative clause about a noun its own clause about it: "I am in a book club that
    meets on Thursdays" → "I am in a book club", "my book club meets on Thursdays"; "My
    sister, who lives in Paris" → "My sister", "My sister lives in Paris"; "I ride a bike
    that I built in 2019" → "I ride a bike", "I built my bike in 2019". A thing the user
    introduces with "a" is theirs ("my book club")."""
    out: list[list[str]] = []
    waiting: list[str] = []  # a subject whose predicate comes after its relative clause
    for words in pieces:
        tags = text.tags(words)
        at = next((r for r in range(len(words) - 1)
                   if words[r].lower() in text.grammar()["subject_relatives"]
                   and _can_be_verb(words[r + 1])
                   and (r > 0 and tags[r - 1] in {"NOUN", "PROPN"} or (r == 0 and out))), None)
        if at is None:
            said = _object_relative(words, tags)
            out += said if said else [
                words if not waiting or _starts_clause(words, tags) else waiting + words]
            waiting = []
            continue
        main = words[:at] if at else out.pop()
        # "My uncle, who farms near Ribe, keeps geese": "My uncle" waits for "keeps geese"
        waiting = main if not at and not {"VERB", "AUX"} & set(text.tags(main)) else []
        out += ([] if waiting else [main]) + [_antecedent(main) + words[at + 1:]]
    return out


def _object_relative(words: list[str], tags: list[str]) -> list[list[str]]:
    """"I ride a bike that I built in 2019" → the main clause and "I built my bike in 2019":
    the noun put back after the relative clause's verb (after an indirect object: "the scarf
    that Noor knitted me" → "Noor knitted me the scarf"; after a preposition left at its
    end: "the town that I grew up in" → "I grew up in the town"). None where the main clause
    has no verb yet ("The book that I read was long"), where the clause has an object of
    its own, after what someone is told ("I told my sister that we moved": english.toml
    telling_verbs) or a noun whose "that" clause is its content ("the news that …":
    content_nouns)."""
    g = text.grammar()
    at = next((r for r in range(1, len(words) - 2) if words[r].lower() in g["object_relatives"]
               and tags[r - 1] in {"NOUN", "PROPN"} and words[r + 1].lower() not in g["adverbs"]
               and words[r - 1].lower() not in g["content_nouns"]
               and _starts_clause(words[r + 1:], text.tags(words[r + 1:]))), None)
    if at is None or not {"VERB", "AUX"} & set(tags[:at]) or any(
            t == "VERB" and text.lemma(w, "VERB") in g["telling_verbs"]
            for w, t in zip(words[:at], tags[:at], strict=True)):
        return []
    tags = tags[:at + 1] + text.tags(words[at + 1:])  # the clause's verb read in its clause
    verb = next((k for k in range(at + 1, len(words)) if tags[k] in {"VERB", "AUX"}), None)
    if verb is None:
        return []  # "the same pizza that you lol"
    end = verb
    while end < len(words) and tags[end] in {"VERB", "AUX", "ADV", "NEG"}:
        end += 1
    while tags[end - 1] == "ADV":
        end -= 1  # "that I read twice": the noun before the adverb
    if end < len(words) and words[end].lower() in {"me", "us", "him", "her", "them"}:
        end += 1
    if end < len(words) and tags[end] in {"DET", "POSS", "NOUN", "PROPN", "NUM", "ADJ"}:
        return []  # the clause has its object: not a relative about the noun
    stranded = [p for p in range(end, len(words)) if tags[p] == "PREP" and (
        p + 1 == len(words) or text.is_relative_time(words[p + 1:p + 3]))]
    end = stranded[-1] + 1 if stranded else end
    main, subject = words[:at], [w.lower() for w in words[at + 1:verb]]
    noun = _antecedent(main)
    if main[len(main) - len(noun)].lower() in g["indefinite_articles"] \
            and subject != [w.lower() for w in main[:next(i for i, t in enumerate(tags)
                                                          if t in {"VERB", "AUX"})]]:
        noun = ["the", *noun[1:]]  # "a guy that my sister dates": not mine
    return [main, words[at + 1:end] + noun + words[end:]]


def _antecedent(words: list[str]) -> list[str]:
    """The noun phrase that ends ``words``, owned as the clause's subject owns things."""
    from engine.derive.questions import templates  # (it reads clauses: imported here)

    tags = text.tags(words)
    i = len(words)
    while i > 0 and tags[i - 1] in {"NOUN", "ADJ", "PROPN", "NUM"}:
        i -= 1
    if i > 0 and tags[i - 1] in {"DET", "POSS"}:
        i -= 1
    phrase = words[i:]
    if phrase and phrase[0].lower() in text.grammar()["indefinite_articles"]:
        owner = templates()["owner"].get(words[0].lower(), "the") if i else "the"
        phrase = [owner, *phrase[1:]]
    elif phrase and phrase[0].lower() in text.grammar()["quantifiers"]:
        phrase = ["the", *phrase[1:]]  # "every book that she wrote": the books she wrote
    return phrase


def clauses(turns: list[str]) -> list[Clause]:
    """Every clause of the user's turns, in order, pronouns resolved."""
    out: list[Clause] = []
    referent: list[str] | None = None
    named = _names(turns)
    for turn in turns:
        for sentence in sentences(turn):
            question = sentence.rstrip().endswith("?")
            subject: list[str] = []
            for words in _relatives(_pieces(sentence)) if not question else _pieces(sentence):
                words = _without_openers(words)
                tags = text.tags(words, named)
                if _fragment(words, tags) and subject:
                    words = subject + _perfect(subject, words) + words
                    tags = text.tags(words, named)
                introduced = _referents(words, tags)
                words = _resolve(words, tags, referent)
                tags = text.tags(words, named)
                referent = introduced[-1] if introduced else referent
                if not words or all(w.lower() in text.grammar()["interjections"] for w in words):
                    continue  # "Hi!", "Thanks"
                verb = next((k for k, t in enumerate(tags) if t in {"VERB", "AUX"}), 0)
                if verb and not _asks(words, tags):
                    subject = words[:verb]
                out.append(Clause(tuple(words), tuple(tags), sentence,
                                  _request(words, tags, question)))
    return out


def _names(turns: list[str]) -> set[str]:
    """The words the user capitalised inside a sentence: names, wherever they stand later
    (a clause that opens with one is not a sentence's capitalised first word: "a cat called
    Pepper who steals bread" → "What does Pepper steal?", not "pepper")."""
    return {w for turn in turns for sentence in sentences(turn)
            for w in text.words(text.expand_contractions(sentence))[1:]
            if w[:1].isupper() and w != "I"}
