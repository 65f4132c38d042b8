"""Questions a clause answers, built from the clause itself.

Every noun phrase, name, number and quality after the clause's verb is a possible answer.
Each is asked back two ways: as an echo question, the clause with the answer replaced by a
question word ("I drive what?"), and with the question word moved to the front ("What do I
drive?", with do-support and the verb's base form from lemminflect). The model's state
where it starts answering is much the same for both and for the ways a user will ask
("What vehicle do I drive at work?"), which is what lets a memory keyed on it generalise.
Names get the templates of ``assets/grammar/questions.toml`` ("my sister Noor" → "Who is
my sister?"). Nothing here knows a particular word beyond English's closed classes.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass

from lemminflect import getAllLemmas, getInflection

from engine import text
from engine.derive.clauses import Clause
from store import paths

KIND = "{kind}"  # where a question names the answer's kind, filled in by the model
# the same, in a question never trained ("What is my {kind}?" for "I am a nurse": the kind
# the model is surest of may name no such thing, "What is my sister's person?")
UNTRAINED_KIND = "{untrained kind}"
NAMING_VERBS = frozenset({"called", "named"})  # "a cat called Mosel": what follows is its name


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # "name" | "number" | "thing" | "quality" | "owner" (asked "whose")


@dataclass(frozen=True)
class Asked:
    question: str
    answer: str
    inferred: bool = False  # asked of the user from what was said of "us": a pair asked
    # directly wins over it (derive.candidates)


@functools.cache
def templates() -> dict:
    return tomllib.loads(paths.asset("grammar", "questions.toml").read_text(encoding="utf-8"))


def _possessive(word: str) -> bool:
    return word.endswith(("'s", "’s"))


def _unpossessed(word: str) -> str:
    """"mum's" → "mum"."""
    return re.sub(r"['’]s$", "", word)


def _is_ordinal(word: str) -> bool:
    return bool(re.search(r"\d(?:st|nd|rd|th)$", word.lower()))


def _is_time(word: str) -> bool:
    g = text.grammar()
    return word.lower() in g["months"] or word.lower() in g["weekdays"]


def verb_group(clause: Clause) -> tuple[int, int] | None:
    """Where the first verb group is: (start, end); None when the clause has no subject
    before it."""
    tags = clause.tags
    start = next((i for i, t in enumerate(tags) if t in {"VERB", "AUX"}), None)
    if not start or not any(t in {"PRON", "NOUN", "PROPN"} for t in tags[:start]):
        return None
    end = start
    words = [w.lower() for w in clause.words]
    while end < len(tags) and (tags[end] in {"AUX", "NEG", "ADV"} or (
            tags[end] == "VERB" and (end == start or tags[end - 1] in {"AUX", "NEG", "ADV"}))):
        if tags[end] == "VERB" and end > start and words[end - 1] in text.grammar()["copulas"] \
                and end + 1 < len(tags) and tags[end + 1] == "NOUN" and not (
                    words[end].endswith("ing") and all(
                        w in text.grammar()["personal_pronouns"] for w in words[:start])):
            # "is dried mango", "my hobby is spinning wool": an adjective, not a passive;
            # but "I am taking evening classes" is what a person is doing
            break
        end += 1
    while end > start + 1 and tags[end - 1] == "ADV":
        end -= 1
    return start, end


def _name_end(words: tuple[str, ...], tags: tuple[str, ...], i: int) -> int:
    """Where the name that starts at word ``i`` ends: "Crumb & Co", "Bank of Åland"."""
    j = i + 1
    while j < len(words) and (tags[j] in {"PROPN", "NUM"} or (
            words[j].lower() in {"of", "&", "de", "la", "van", "von"}
            and j + 1 < len(words) and tags[j + 1] == "PROPN")):
        j += 1
    return j


def spans(clause: Clause, after: int) -> list[Span]:
    """Answer candidates after word ``after``: names (with the common nouns that close them:
    "Ullevål hospital", and the modifiers before them: "a green Volvo estate"), numbers, noun
    phrases without their determiner, an adjective that completes a copula ("is grey"), and
    whose a thing is ("my mum's birthday")."""
    words, tags = clause.words, clause.tags
    out, i = [], after
    while i < len(words):
        tag = tags[i]
        if tag == "PROPN" or (tag == "NUM" and i + 1 < len(words) and tags[i + 1] == "PROPN"
                              and not text.is_number(words[i + 1])):
            j = _name_end(words, tags, i)
            if _owns(words, tags, i, j):
                out.append(Span(i, j, "owner"))  # "Noor's car": whose the car is …
                i = j  # … and the car
                continue
            while j < len(words) and tags[j] == "NOUN" and words[j][:1].islower() and set(
                    getAllLemmas(words[j].lower())) == {"NOUN"}:
                j += 1  # the common noun that closes a name: "Ullevål hospital"
            if tag == "NUM":
                out.append(Span(i, i + 1, "number"))
                i += 1
            the = i > 0 and words[i - 1].lower() == "the" and words[i][:1].isupper()
            out.append(Span(i - the, j, "name"))  # "the Clattery": the article is the name's
        elif tag == "NUM" and not _ordinal_modifier(words, tags, i):
            j = i + 1
            while j < len(words) and tags[j] == "NUM":
                j += 1
            out.append(Span(i, j, "number"))
        elif tag == "NOUN" and i > 0 and tags[i - 1] == "NUM":
            j = i + 1  # the number's unit ("6 years"): asked with the number
        elif tag in {"NOUN", "ADJ", "NUM"} or (
                tag == "VERB" and words[i].lower().endswith(("ed", "ing"))
                and i + 1 < len(words) and tags[i + 1] == "NOUN"):
            j = i + 1
            while j < len(words) and (tags[j] in {"NOUN", "ADJ"} or (
                    tags[j] == "VERB" and words[j].lower().endswith(("ed", "ing"))
                    and j + 1 < len(words) and tags[j + 1] == "NOUN")):
                j += 1
            owner = next((k for k in range(i + 1, j + 1) if _owns(words, tags, i, k)), None)
            if tag != "NUM" and owner:
                out.append(Span(i, owner, "owner"))  # "my mum's birthday": whose it is …
                i = owner  # … and the birthday
                continue
            noun = any(t == "NOUN" for t in tags[i:j])
            after_copula = i > 0 and words[i - 1].lower() in text.grammar()["copulas"]
            relation = j < len(words) and tags[j] == "PROPN" and i > 0 and tags[i - 1] == "POSS"
            kind_of_name = j < len(words) and tags[j] == "PROPN" and not _is_time(words[j]) \
                and i > 0 and (words[i - 1].lower() in text.grammar()["indefinite_articles"]
                               or tags[i - 1] == "NUM")
            if kind_of_name:
                # "a green Volvo estate" is one answer; "the goat Rosa" may be two objects
                j = _name_end(words, tags, j)
                while j < len(words) and tags[j] == "NOUN" and words[j][:1].islower() and set(
                        getAllLemmas(words[j].lower())) == {"NOUN"}:
                    j += 1
                out.append(Span(i, j, "thing"))
                i = j
                continue
            named = j + 1 < len(words) and (
                (words[j].lower() in NAMING_VERBS and (tags[j + 1] == "PROPN" or (
                    j + 2 < len(words) and words[j + 1].lower() == "the"
                    and words[j + 2][:1].isupper())))
                or (words[j].lower() == "of" and tags[j + 1] == "PROPN"))
            if relation or named:
                pass  # "my uncle Ferdinand", "a bakery called Crumb", "the island of Utvær":
                # the name is the answer (_appositives, _named, spans)
            elif noun:
                # "next month", "every week": the word before is the time's, not a determiner
                out.append(Span(i - (i > 0 and text.is_relative_time(words[i - 1:j])), j, "thing"))
            elif after_copula and not (j < len(words) and tags[j] == "PREP"):
                # "is grey"; not "is afraid of the foghorn": there the foghorn is the fact
                out.append(Span(i, j, "quality"))
        else:
            i += 1
            continue
        i = max(j, i + 1)
    return out


def _owns(words: tuple[str, ...], tags: tuple[str, ...], i: int, j: int) -> bool:
    """``words[i:j]`` is a possessor: "mum's" before "70th birthday". Not "is" before a
    quality ("I think Noor's ill"), not a time ("last week's class", "Sainsbury's last
    week"), and not one of a chain ("my friend's sister's wedding": asked as said)."""
    k = j
    while k < len(words) and tags[k] in {"ADJ", "NUM"}:
        k += 1
    owned = k < len(words) and tags[k] == "NOUN" and not _possessive(words[k])
    return _possessive(words[j - 1]) and owned and not text.is_relative_time(words[j:j + 2]) \
        and not any(_timely(_unpossessed(w)) for w in words[i:j])


def _timely(word: str) -> bool:
    """A word that says when: a day, a month, "week", "evening", "today"."""
    g, lower = text.grammar(), word.lower()
    return _is_time(word) or lower in g["time_nouns"] or lower in g["day_parts"] \
        or lower in g["adverbs"]


def _ordinal_modifier(words: tuple[str, ...], tags: tuple[str, ...], i: int) -> bool:
    """An ordinal before a noun qualifies it ("my 70th birthday", "the 3rd floor"); alone it
    is a date ("on the 14th")."""
    return _is_ordinal(words[i]) and i + 1 < len(words) and tags[i + 1] in {"NOUN", "ADJ"}


def _question_word(clause: Clause, span: Span) -> tuple[str, int, int]:
    """The question word for a span, and the words it replaces: (wh, start, end)."""
    words, tags = clause.words, clause.tags
    qw = templates()["question_word"]
    start, end = span.start, span.end
    if words[start].lower() == "the":
        start += 1
    if span.kind == "name" and start > 0 and tags[start - 1] == "NUM":
        start -= 1  # "a 1974 Honda CB550": a number before a name qualifies it
    before = words[start - 1].lower() if start else ""
    determined = before in text.grammar()["determiners"] or before in {"my", "our"} or (
        start > 0 and tags[start - 1] == "POSS" and not (before == "her" and span.kind == "name"))
    if determined:
        start -= 1
    elif _possessive(before):  # whose it is goes with it: "my aunt Rut's old goat"
        start -= 1
        while start and tags[start - 1] in {"PROPN", "NOUN", "ADJ"}:
            start -= 1
        start -= start > 0 and tags[start - 1] in {"POSS", "DET"}
        determined = True
    before = words[start - 1].lower() if start else ""
    first = words[span.start]
    if span.kind == "owner":
        return "whose", start, end
    if span.kind == "number":
        year = re.fullmatch(r"1\d{3}|20\d{2}", first)
        if _is_ordinal(first) or (
                year and before in qw["time_prepositions"] and not determined):
            return "when", start - (before in qw["time_prepositions"]), end
        if year:
            return "what year", start, end
        if end < len(words) and tags[end] == "NOUN":
            return "how many", start, end
        if before in text.grammar()["copulas"]:
            return "how old", start, end
        return "what", start, end
    if text.is_relative_time(words[span.start:end]):
        return "when", span.start, end  # "last spring", "next month"
    if _is_time(first):
        if before in qw["time_prepositions"] or before in text.grammar()["determiners"]:
            start -= 1  # "on Thursdays", "every Thursday evening"
        while end < len(words) and words[end].lower() in text.grammar()["day_parts"]:
            end += 1
        return "when", start, end
    if span.kind == "name" and before == "of" and start >= 4 \
            and words[start - 2].lower() in qw["place_nouns"] \
            and words[start - 3].lower() in text.grammar()["determiners"] \
            and words[start - 4].lower() in qw["place_noun_prepositions"]:
        # "on the island of Utvær", "in the city of Ghent": a place, said as one
        return "where", start - 3 - (words[start - 4].lower() not in qw["kept_prepositions"]), end
    if span.kind == "name" and before in qw["place_prepositions"]:
        if before in qw["kept_prepositions"]:
            return "where", start, end
        return "where", start - 1, end
    if span.kind == "name" and before in qw["agent_prepositions"]:
        return "who", start, end
    if span.kind == "name" and before in text.grammar()["copulas"] and start > 1 and all(
            w.lower() in text.grammar()["personal_pronouns"] for w in words[:start - 1]):
        return "who", start, end  # "I'm Sunniva": who, not what, I am
    return "what", start, end


def _modifiers_from(tags: tuple[str, ...], end: int) -> int:
    """Where the run of adjectives and nouns that ends at ``end`` starts."""
    while end > 0 and tags[end - 1] in {"ADJ", "NOUN"}:
        end -= 1
    return end


def _inside_phrase(clause: Clause, kind: str, wh: str, start: int, end: int) -> bool:
    """The words a question word replaces are only part of a noun phrase: its modifiers
    before a noun that stays ("the old Volvo" → "old") or its noun after modifiers that stay
    ("three small lizards" → "lizards"). English cannot front a part of a phrase ("What do I
    keep three small?"); an echo question, asked in place, can. A day after the phrase is
    not part of it ("Thai food Sundays", "in Bergen last week")."""
    words, tags = clause.words, clause.tags
    if wh not in {"how many", "whose"} and end < len(tags) and tags[end] in {"NOUN", "PROPN"} \
            and not _is_time(words[end]) and not text.is_relative_time(words[end:end + 2]):
        return True  # "how many" takes its noun along: "How many rotors does it have?"
    if tags[start] == "PREP" or kind == "name":
        return False  # a phrase of its own: "… the cherry blossoms in Kyoto", "… the goat Rosa"
    i = _modifiers_from(tags, start)
    # back over the modifiers to an article or a number ("a green Volvo estate"), not to a
    # possessive ("my dog Rex": a dog and its name may be two objects of the verb)
    return i < start and i > 0 and tags[i - 1] in {"DET", "NUM"}


def _echo(clause: Clause, wh: str, start: int, end: int) -> str:
    words = list(clause.words)
    return _sentence(words[:start] + [wh] + words[end:])


def _fronted(clause: Clause, group: tuple[int, int], wh: str, start: int,
             end: int) -> list[str]:
    """The question word first, as said ("What do I drive there?", "How many rotors does my
    drone have?") and as its core, without what the clause adds around the answer ("What do
    I teach?" from "I teach chemistry at a school called Elm Ridge"; "Where do we live?"
    from "We live in a terraced house in Leeds") — the short form is the one users ask, in
    other words, and the one their questions' states lie closest to. A core that would need
    another object of the verb ("What do I teach …?" for Elm Ridge) is not made."""
    words, tags = list(clause.words), clause.tags
    v, g = group
    if start < g:
        return []
    subject = _subject(clause, v)
    unit = end
    while (wh == "how many" and unit < len(words) and tags[unit] == "NOUN") or (
            wh == "whose" and unit < len(words) and tags[unit] in {"NOUN", "ADJ", "NUM"}):
        unit += 1  # the noun goes with it: "How many rotors …", "Whose 70th birthday …"
    moved = [wh] + words[end:unit]
    lower = words[v].lower()
    auxiliary = tags[v] == "AUX" and lower in text.grammar()["finite_auxiliaries"] and not (
        lower in {"have", "has", "had"} and not {"VERB", "AUX"} & set(tags[v + 1:g]))
    if auxiliary:
        front, verbs = [words[v]], words[v + 1:g]
    elif tags[v] == "AUX" and lower not in {"have", "has", "had"}:
        return []  # "been doing it": no finite verb to front
    else:
        aux, base = _do_support(words[v])
        front, verbs = [aux], [base] + words[v + 1:g]
    between = words[g:start]
    out = [_sentence(moved + front + subject + verbs + between + words[unit:])]
    if wh in {"where", "when"}:
        own = between[-1:] if between and between[-1].lower() in templates()["question_word"][
            "kept_prepositions"] else []  # "Where did we move to?"
        core = _without_phrases(between[:len(between) - len(own)], tags[g:start]) + own
    elif any(t in {"NOUN", "PROPN", "NUM", "PRON"} for t in tags[g:start]):
        core = None
    else:
        core = between
    if core is not None:
        out.append(_sentence(moved + front + subject + verbs + core))
        naming = any(w.lower() in NAMING_VERBS for w in verbs + core)
        # "What is my sister? → photographer" has no kind form ("Which person is …" asks
        # who); an adjective does ("Which colour is my kitten?")
        identity = front[0].lower() in text.grammar()["copulas"] and not verbs and not core \
            and tags[end - 1] != "ADJ"
        if identity and wh == "what":
            # … but one of what the subject has: "What is my sister's job?", "What is my job?"
            past = front[0].lower() not in text.grammar()["present_copulas"]
            out.append(_sentence(["what", "was" if past else "is"] + _owner(subject)
                                 + [UNTRAINED_KIND]))
        if wh in {"what", "where"} and tags[end - 1] != "NUM" and not naming and not identity:
            # "Which city do we live in?", "… are we flying from?": the preposition back
            prep = next((words[i] for i in (start, start - 1) if g <= i < len(words)
                         and tags[i] == "PREP"), None) if wh == "where" else None
            if prep and core and core[-1].lower() == prep.lower():
                prep = None  # kept already: "… are we flying from?", never "from from"
            out.append(_sentence(["which", KIND] + front + subject + verbs + core
                                 + ([prep] if prep else [])))
    return out


def _active(clause: Clause, group: tuple[int, int], start: int, end: int) -> list[str]:
    """A passive's agent asked as the doer, as people ask it: "The course is taught by Dr
    Ferreira at TU Delft" → "Who teaches the course at TU Delft?", "Who teaches the
    course?"; "I was raised by my aunt Rut" → "Who raised me?". Not a time ("cleaned by
    Christmas"), nor a verb with a particle ("looked after by"), and what follows the agent
    only where it is a phrase of the clause ("… at TU Delft"; not "by Oskar and Lena")."""
    words, tags = clause.words, clause.tags
    v, g = group
    name = start
    # the agent's relation goes with it: "by my aunt Rut"
    start = next((i for i in range(g, start) if _relation_end(words, tags, i) == start), start)
    if g - v != 2 or words[v].lower() not in text.grammar()["copulas"] or start - 1 != g \
            or words[g].lower() not in templates()["question_word"]["agent_prepositions"] \
            or any(_timely(w) for w in words[name:end]):
        return []
    base = text.lemma(words[v + 1], "VERB")
    if words[v + 1].lower() not in getInflection(base, tag="VBN"):
        return []  # no participle: "is keen by nature"
    past = words[v].lower() not in text.grammar()["present_copulas"]
    verb = getInflection(base, tag="VBD" if past else "VBZ")[0]
    done_to = [templates()["done_to"].get(w.lower(), w) for w in _subject(clause, v)]
    core = _sentence(["who", verb] + done_to)
    if end < len(words) and tags[end] != "PREP":
        return [] if tags[end] == "CONJ" else [core]
    return list(dict.fromkeys([_sentence(["who", verb] + done_to + list(words[end:])), core]))


def _subject(clause: Clause, verb: int) -> list[str]:
    """The words before the verb, as they read inside a question ("My sister" → "my
    sister"; "I" and names keep their capitals)."""
    subject = list(clause.words[:verb])
    if subject and subject[0] != "I" and clause.tags[0] != "PROPN":
        subject[0] = subject[0].lower()
    return subject


def _do_support(verb: str) -> tuple[str, str]:
    """The "do" a question fronts for ``verb`` in its tense, and the verb's base form
    ("repaired" → did, repair; "bakes" → does, bake)."""
    base = text.lemma(verb, "VERB")
    past = (getInflection(base, tag="VBD") or ("",))[0]
    third = (getInflection(base, tag="VBZ") or ("",))[0]
    aux = "did" if verb.lower() == past and past != base else (
        "does" if verb.lower() == third and third != base else "do")
    return aux, base


def _owner(subject: list[str]) -> list[str]:
    """The subject as the owner of a thing: "I" → "my", "my sister" → "my sister's"."""
    pronoun = templates()["owner"].get(subject[0].lower()) if len(subject) == 1 else None
    return [pronoun] if pronoun else subject[:-1] + [f"{subject[-1]}'s"]


def _without_phrases(words: list[str], tags: tuple[str, ...]) -> list[str]:
    """Words up to their first prepositional phrase ("my first half marathon in Gothenburg"
    → "my first half marathon"; "in a terraced house" → nothing). An infinitive's "to" opens
    none: "wants to shoot the blossoms in Kyoto" keeps "to shoot the blossoms" (cut there,
    "Where does she want?" asked nothing)."""
    cut = next((i for i, tag in enumerate(tags) if tag == "PREP"
                and not (i < len(words) and words[i].lower() == "to"
                         and tags[i + 1:i + 2] == ("VERB",))),
               len(words))
    return words[:cut]


def _sentence(words: list[str]) -> str:
    joined = re.sub(r"\s+'s\b", "'s", " ".join(w for w in words if w)).strip()
    return joined[:1].upper() + joined[1:] + "?"


def _appositives(clause: Clause) -> list[Asked]:
    """"my sister Noor" anywhere in a clause (a request's too: "sign it with my name, Aksel"
    names the user), and "my manager is Grete": who the relation is."""
    words = clause.words
    named = [(words[i].lower(), " ".join(words[i + 1:j]), " ".join(words[j:k]))
             for i, j, k in _relations(clause)]
    out = []
    for owner, relation, name in named + list(_said_to_be(clause)):
        name = re.sub(r"'s$", "", name)
        if relation == "name" and owner == "my":
            out += [Asked(q, name) for q in templates()["self_naming"]]
        else:
            out += [Asked(q.format(owner=owner, relation=relation), name)
                    for q in templates()["appositive"]]
    return out


def _named(clause: Clause) -> list[Asked]:
    """"<thing> is called/named <Name>", "a <thing> called <Name>", "I am <Name>",
    "call me <Name>": what the thing (or the user) is called."""
    words, tags = clause.words, clause.tags
    out = []
    for i, word in enumerate(words):
        # "called Rusty", "called the Riverside Sinfonia" (the article is the name's, as in spans)
        at = i + 1 + (i + 2 < len(words) and words[i + 1].lower() == "the"
                      and words[i + 2][:1].isupper())
        if word.lower() not in NAMING_VERBS or at >= len(words) or tags[at] != "PROPN":
            continue
        name = " ".join(words[i + 1:_name_end(words, tags, at)])
        j = i - (words[i - 1].lower() in text.grammar()["copulas"]) if i else 0
        h = _modifiers_from(tags, j)
        if h == j:
            continue
        owner = words[h - 1].lower() if h and tags[h - 1] in {"POSS", "DET"} else ""
        if j == i and owner in {"my", "our"}:
            continue  # "my sister called the Hilton": she phoned it; "my cat is called Mosel"
        things = [" ".join(([owner] if owner in {"my", "our", "the"} else ["my"])
                           + list(words[h:j]))]
        if owner in text.grammar()["indefinite_articles"] and h > 1 \
                and words[h - 2].lower() in text.grammar()["copulas"]:
            # "my dog is a greyhound named Comet": what the subject is, is named so too
            s = _modifiers_from(tags, h - 2)
            if s < h - 2 and s > 0 and words[s - 1].lower() in {"my", "our"}:
                things.append(" ".join(words[s - 1:h - 2]).lower())
        out += [Asked(q.format(thing=thing), name) for thing in things
                for q in templates()["naming"]]
    lower = [w.lower() for w in words]
    if (lower[:2] == ["i", "am"] and len(words) > 2 and tags[2] == "PROPN") or (
            lower[:2] == ["call", "me"] and len(words) > 2 and tags[2] == "PROPN"):
        k = 3
        while k < len(words) and tags[k] == "PROPN":
            k += 1
        out += [Asked(q, " ".join(words[2:k])) for q in templates()["self_naming"]]
    return out


def _relation_end(words: tuple[str, ...], tags: tuple[str, ...], i: int) -> int | None:
    """Where the relation that "my"/"our" at ``i`` opens ends (its modifiers and nouns: "my
    best friend"), or None where no relation follows it."""
    if words[i].lower() not in {"my", "our"}:
        return None
    first = i + 1
    while first < len(words) and tags[first] == "ADJ":
        first += 1  # "my best friend Dario", "my little sister Oda"
    if first >= len(words) or tags[first] != "NOUN":
        return None
    j = first + 1
    while j < len(words) and tags[j] == "NOUN":
        j += 1
    return j


def _relations(clause: Clause) -> Iterator[tuple[int, int, int]]:
    """Where a clause names someone by relation and name, "my best friend Dario": (i, j, k)
    with "my" at i, the relation and its modifiers up to j, the name up to k."""
    words, tags = clause.words, clause.tags
    for i in range(len(words) - 2):
        j = _relation_end(words, tags, i)
        if j is None:
            continue
        k = j
        while k < len(words) and tags[k] == "PROPN":
            k += 1
        if k > j:
            yield i, j, k


def _said_to_be(clause: Clause) -> Iterator[tuple[str, str, str]]:
    """Whom a copula names a relation now, as an apposition does: "my manager there is Grete
    Solberg", "my running buddy is my neighbour Olle" → ("my", "manager", "Grete Solberg").
    Only a relation that is the clause's whole subject (not a name: "my name is …" is asked
    as said, and "Who am I?" asked of it answered "What's my surname?" whole), and a
    person's name that is the whole complement of the copula alone ("is called Kestrel" names
    a thing: _named): a full name, or one a relation gives ("my neighbour Olle"). A single
    capitalised word may be what someone is ("my wife is Norwegian"), not who."""
    words, tags = clause.words, clause.tags
    group = verb_group(clause)
    if group is None or words[group[0]].lower() not in text.grammar()["present_copulas"]:
        return
    v, k = group
    i, j = next(((i, j) for i in range(v) if (j := _relation_end(words, tags, i)) is not None),
                (0, None))
    if j is None or any(t != "ADV" for t in tags[:i] + tags[j:v] + tags[v + 1:k]) \
            or any(_possessive(w) for w in words[i:j]) \
            or words[j - 1].lower() == "name":
        return
    related = _relation_end(words, tags, k) if k < len(words) else None
    k = related or k  # "is my neighbour Olle": the name is Olle
    n = k
    while n < len(words) and tags[n] == "PROPN":
        n += 1
    if n == len(words) and n - k >= (1 if related else 2) and not _is_time(words[k]):
        yield words[i].lower(), " ".join(words[i + 1:j]), " ".join(words[k:n])


def _role(clause: Clause, group: tuple[int, int] | None) -> tuple[int, int] | None:
    """Where a role an activity is done in lies ("as a hobby" in "I restore old motorbikes
    as a hobby"): after a plain verb and its direct object, a noun phrase. None without an
    object ("I work as a nurse", "I work at the hospital as a nurse" say what I work as),
    after a verb whose "as" says what its object is ("I see him as a friend":
    questions.toml [activity] object_role_verbs), or before no noun phrase ("as well as")."""
    words, tags = clause.words, clause.tags
    table = templates()["activity"]
    if group is None or group[1] - group[0] != 1 or tags[group[0]] != "VERB" \
            or text.lemma(words[group[0]], "VERB") in table["object_role_verbs"] \
            or group[1] >= len(words) or tags[group[1]] not in {"DET", "POSS", "NOUN", "ADJ",
                                                                "PROPN", "NUM", "PRON"}:
        return None
    role = next((r for r in range(group[1] + 1, len(words))
                 if words[r].lower() in table["role_prepositions"]), None)
    if role is None or role + 1 >= len(words) \
            or tags[role + 1] not in {"DET", "POSS", "ADJ", "NOUN"} \
            or "PREP" in tags[group[1]:role]:
        return None
    end = next((i + 1 for i in range(role + 1, len(words)) if tags[i] == "NOUN"
                and (i + 1 == len(words) or tags[i + 1] != "NOUN")), None)
    return (role, end) if end else None


def _activity(clause: Clause, v: int, role: tuple[int, int]) -> Asked:
    """What the user does in a role: "What do I do as a hobby? → restore old motorbikes".
    The role itself ("… as what? → hobby") names a kind of thing, not the fact, and is not
    asked: a user asks for the activity."""
    words = clause.words
    question = _sentence(["what", _do_support(words[v])[0]] + _subject(clause, v) + ["do"]
                         + list(words[role[0]:role[1]]))
    return Asked(question, " ".join(words[v:role[0]]))


def _people(clause: Clause) -> Iterator[tuple[str, str]]:
    """Who a clause names by relation and first name: ("my best friend", "Dario")."""
    for i, j, _ in _relations(clause):
        yield " ".join(clause.words[i:j]).lower(), _unpossessed(clause.words[j])


def _referred(asked: Asked, people: list[tuple[str, str]]) -> list[Asked]:
    """A question about "my sister Noor" also asked about "my sister" and about "Noor": the
    user names someone in full once and asks back either way."""
    out = [asked]
    for relation, name in people:
        full = re.compile(re.escape(f"{relation} {name}"), re.IGNORECASE)
        if not full.search(asked.question) or asked.answer in name:
            continue
        # every mention: "my sister Noor lent me my sister Noor's car" reads one way or the other
        out += [Asked(full.sub(who.replace("\\", r"\\"), asked.question), asked.answer)
                for who in (relation, name)]
    return out


def _one_of_us(asked: Asked) -> list[Asked]:
    """A question about "we" also asked about "I": what the user says of us is true of them
    ("We live in Leeds" → "Where do I live?", "Where are we flying from?" → "Where am I
    flying from?"). Not where it is only true of several ("we both", "each other"), and
    never a word of a name ("the band We Are Scientists", "the US")."""
    table = templates()["one_of_us"]
    words = asked.question.rstrip("?").split(" ")
    plain = [w if i and w != w.lower() else w.lower() for i, w in enumerate(words)]
    if not set(plain) & table["pronouns"].keys() or set(plain) & set(table["plural_only"]):
        return [asked]
    adverbs = text.grammar()["adverbs"]

    def beside(i: int, step: int) -> str:
        """The first word from ``i`` on, in the ``step`` direction, that is not an adverb."""
        while 0 <= i < len(plain) and plain[i] in adverbs:
            i += step
        return plain[i] if 0 <= i < len(plain) else ""

    said = [table["pronouns"].get(w) or (
        table["be"].get(w) if table["subject"] in (beside(i - 1, -1), beside(i + 1, 1)) else None)
        or words[i] for i, w in enumerate(plain)]
    return [asked, Asked(_sentence(said), asked.answer, inferred=True)]


def questions(clause: Clause) -> list[Asked]:
    """The (question, answer) pairs a clause gives; none from a negated clause (what the user
    does *not* do is not an answer), only names from a request, and none about a predicate
    whose subject is a pronoun nothing resolved ("it is a long commute": what is?)."""
    out = _appositives(clause)
    negated = any(t == "NEG" for t in clause.tags)
    group = verb_group(clause)
    vague = group is not None and all(
        w.lower() in {"it", "they", "that", "this", "there", "he", "she"}
        for w in clause.words[:group[0]])
    if not clause.request and not negated:
        out += _named(clause)
    if not clause.request and not negated and not vague:
        role = _role(clause, group)
        out += [_activity(clause, group[0], role)] if group and role else []
        for span in spans(clause, group[1] if group else len(clause.words)):
            if role and role[0] < span.start < role[1]:
                continue
            answer = " ".join(clause.words[span.start:span.end])
            answer = _unpossessed(answer) if span.kind == "owner" else answer
            wh, start, end = _question_word(clause, span)
            named = end < len(clause.words) and clause.words[end].lower() in NAMING_VERBS
            # "an old red Volvo called Rusty": what it is called is part of the phrase, asked
            # only by a core question that leaves both out ("What is my car?")
            asked = [] if named else [_echo(clause, wh, start, end)]
            if group and not _inside_phrase(clause, span.kind, wh, start, end):
                asked += _fronted(clause, group, wh, start, end)[named:]
            if wh in {"who", "what"} and span.kind == "name":
                asked += _active(clause, group, start, end) if group else []
                other = "what" if wh == "who" else "who"
                asked.append(_echo(clause, other, start, end))
            out += [Asked(q, answer) for q in asked if q]
    people = list(dict.fromkeys(_people(clause)))
    pairs = [p for a in out for r in _referred(a, people) for p in _one_of_us(r)]
    direct = {pair_key(p) for p in pairs if not p.inferred}  # these win
    seen, kept = set(), []
    for pair in pairs:
        question = pair.question[:1].upper() + pair.question[1:]
        if (pair.inferred and pair_key(pair) in direct) or pair_key(pair) in seen \
                or pair.answer.lower() in question.lower():
            continue
        seen.add(pair_key(pair))
        kept.append(Asked(question, pair.answer, pair.inferred))
    return kept


def pair_key(pair: Asked) -> tuple[str, str]:
    """What makes two pairs one: their question, and the answer too where the question's
    kind is still to fill in ("Which {kind} do we live in?" asks the house as a building and
    Leeds as a city)."""
    unfilled = KIND in pair.question or UNTRAINED_KIND in pair.question
    return pair.question.lower(), pair.answer.lower() if unfilled else ""
