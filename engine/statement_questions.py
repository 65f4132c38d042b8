"""Questions a first-person statement answers, by English grammar rather than by the model.

The built-in 270M base model writes few usable questions about a statement (it derives a
Q/A pair for about half of the facts users state, and some of those ask something else), so
the learner also turns each clause into the questions its grammar allows: a subject, a verb
and what follows it ("I live in Tromsø" → "Where do I live?"), the naming idioms ("My cat
is called Pixel", "a compiler called Loom", "I named the car Gustav"), a copula ("My
teacher is Osvaldo Ruiz") and a pronoun that points back at the previous statement's subject
("She studies octopuses in Lisbon"), and the idioms a user asks back in other words ("My
favourite colour is teal" → "Which colour do I like best?", "My teacher is …" → "Who
teaches me?", "It was written by …" → "Who wrote The Glass Orchard?", "… is a nurse at
Saint Aldric Hospital" → "Where does she work?"), and someone named in full once is asked
about by name or by relation ("my son Tobias" → "Tobias", "my son"), a cat as a pet and a
novel as a book, "we" as the startup the user named, "it" as "the novel I'm reading", and
"I'm learning to play X" as what the user plays. Every answer is a span of the statement,
so the pairs are grounded by construction; a clause the rules do not parse yields nothing.
"""

from __future__ import annotations

import re

NAME = r"[A-ZÀ-Þ][\w'&.-]*(?:\s+(?:&|of|de|la|van|von|[A-ZÀ-Þ0-9][\w'&.-]*))*"
NUMBER = (r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\w+teen|twenty|"
          r"thirty|forty|fifty|sixty|seventy|eighty|ninety)")
NEGATORS = r"\b(no longer|not|never|n't|used to|formerly)\b"
NEGATED = re.compile(NEGATORS, re.IGNORECASE)
OPENERS = re.compile(r"^(?:(?:hi|hello|hey|oh|well|so|also|correction|by the way|btw)\b[!,:.]*\s*)+",
                     re.IGNORECASE)
CLAUSE_BREAK = re.compile(r",\s*(?:and\s+|but\s+|so\s+)?|\s+(?:and|but|so|because)\s+"
                          r"(?=(?:I|we|she|he|it|they|my|our|his|her|its|their|the)\b)", re.IGNORECASE)
CONTRACTIONS = {"I'm": "I am", "We're": "We are", "I've": "I have", "We've": "We have"}
COPULA = {"am", "is", "are", "was", "were"}
ADVERBS = {"just", "also", "still", "always", "often", "usually", "really", "sometimes", "only",
           "already", "mostly", "recently", "finally"}
PERSONAL_POSSESSIVE = {"I": "my", "we": "our", "he": "his", "she": "her", "it": "its", "they": "their"}
PRONOUNS = {"he", "she", "it", "they", "his", "her", "its", "their"}
OBJECT_PRONOUNS = {"it", "them", "him", "her", "me", "us", "you", "this", "that"}
IRREGULAR_PAST = dict(pair.split(":") for pair in """met:meet grew:grow went:go bought:buy made:make took:take
got:get had:have began:begin found:find left:leave saw:see came:come became:become wrote:write built:build
drove:drive gave:give knew:know taught:teach spent:spend sold:sell told:tell broke:break won:win lost:lose
fell:fall felt:feel kept:keep ran:run sat:sit spoke:speak stood:stand swam:swim thought:think
brought:bring caught:catch flew:fly forgot:forget chose:choose rode:ride sang:sing""".split())
PARTICLES = {"up", "out", "off", "down", "away", "back"}
PARTICIPLE_PAST = dict(pair.split(":") for pair in """written:wrote drawn:drew sung:sang taken:took
given:gave grown:grew driven:drove known:knew shown:showed chosen:chose spoken:spoke begun:began
made:made built:built sold:sold taught:taught run:ran found:found""".split())
AGENTS = {"teacher": "teaches", "manager": "manages", "trainer": "trains", "coach": "coaches",
          "tutor": "tutors", "mentor": "mentors", "supervisor": "supervises", "employer": "employs",
          "instructor": "instructs", "doctor": "treats", "dentist": "treats", "therapist": "treats"}
TAKES_INFINITIVE = {"want", "like", "love", "hate", "need", "try", "plan", "hope", "learn", "start", "begin", "decide"}
DOES_IT = {"learn", "love", "like", "start", "begin"}  # "I'm learning to play X" → "What do I play?"
NAMES_IT = {"learn", "love", "like", "hate"}  # "I'm learning to play X" → "What am I learning?"
HYPERNYMS = {"cat": "pet", "dog": "pet", "rabbit": "pet", "hamster": "pet", "parrot": "pet", "tortoise": "pet",
             "novel": "book", "startup": "company", "firm": "company", "flat": "home", "apartment": "home",
             "husband": "partner", "wife": "partner", "boyfriend": "partner", "girlfriend": "partner"}
GROUPS = {"startup", "company", "firm", "team", "band", "lab", "club", "choir", "orchestra", "family"}  # "we"
AVOIDS = {"allergic", "intolerant"}  # "allergic to hazelnuts" → "What should I avoid?"
STOPS = {"because", "so", "and", "but", "which", "who", "when", "while", "since", "though", "although"}
PLACE_PREPS = {"in", "at", "near", "to", "from"}
PREPS = PLACE_PREPS | {"on", "with", "for", "about", "by", "into", "of", "as"}
TIME = re.compile(r"\b(?:every|each)\s+\w+(?:\s+(?:morning|evening|night|afternoon))?"
                  r"|\b(?:last|next|this)\s+(?:week|month|year|night|weekend|summer|winter|spring|autumn|time)\b"
                  r"|\bat\s+" + NUMBER + r"(?:[:.]\d+)?(?:\s*(?:am|pm|o'clock))?(?:\s+in the (?:morning|evening|afternoon))?"
                  r"|\bon\s+(?:weekends|(?:mon|tues|wednes|thurs|fri|satur|sun)days?)"
                  r"|\b(?:yesterday|today|recently|daily|weekly)\b", re.IGNORECASE)
DATE = re.compile(r"\d|\b(?:january|february|march|april|may|june|july|august|september|october|"
                  r"november|december|monday|tuesday|wednesday|thursday|friday|saturday|sunday)", re.IGNORECASE)
CALLED = re.compile(r"^(?:(?:a|an|the|my|our)\s+)?(?P<kind>[\w-]+(?:\s+[\w-]+){0,2})\s+(?:called|named)\s+(?P<name>.+)$")
NAMED_THING = re.compile(r"\b(?:a|an|the)\s+([a-z-]+)\s+(called|named|(?:I|we) call)\s+((?:the\s+)?" + NAME + ")")
ARTICLE = re.compile(r"^(?:a|an|the)\s+")
MAX_ANSWER_WORDS = 6
APPOSITIVE = re.compile(r"\b(my|our) ([a-z]+) ([A-ZÀ-Þ][\w-]+)(?:(')s?|\b)")  # "my son Tobias", "my sister Mira's"


def questions(statements: list[str]) -> list[tuple[str, str, str]]:
    """(question, answer, statement) for every clause that is not negated; a pronoun refers
    to the latest someone or something of the user's that an earlier statement introduced.
    A negated clause beside an affirmed one ("I no longer live in Tromsø, I moved to
    Bergen") asks its question again with the new answer, so the old fact is corrected."""
    out: dict[str, tuple[str, str, str]] = {}
    antecedents: list[str] = []
    for statement in statements:
        affirmed, negated = [], []
        for said in _clauses(statement):
            resolved = [c for c in (_resolve(said, a) for a in antecedents or [""]) if c]
            meant = (resolved or [said])[0]
            if NEGATED.search(said):
                negated += [q for q, _ in _clause_questions(NEGATED.sub("", meant))]
                continue
            # the pronoun as said too: the user will ask "Where is his workshop?" the same way
            answers = [(q, _answer(a)) for clause in dict.fromkeys([*resolved, said])
                       for q, a in _clause_questions(clause)]
            found = [(q, a) for q, a in answers if a and a.lower() in statement.lower()]
            group = next((a for a in antecedents if a.split()[-1] in GROUPS), "")
            if group and said.split()[0] in {"We", "Our"}:  # "We build soil sensors" said of "my startup"
                found += [(_as_group(q, group), a) for q, a in found if re.search(r"\b(?:we|our)\b", q)]
            affirmed += found
            antecedents = _antecedents(meant) or antecedents
        replaced = [(old, new[0]) for old in negated
                    for new in [[a for q, a in affirmed if q.split()[0] == old.split()[0]]] if new]
        for question, answer in affirmed + replaced:
            for question in _referents(re.sub(r"\s+", " ", question)):
                if answer.lower() not in question.lower():
                    out.setdefault(question.lower(), (question, answer, statement))
    return list(out.values())


def _referents(question: str) -> list[str]:
    """The question, and the same question about "my son Tobias" as "Tobias" and as "my son":
    the user names someone in full once and then asks either way ("What is Tobias obsessed
    with?", "Where is my husband from?"); and about "my cat" as "my pet", "the novel" as "the
    book" (``HYPERNYMS``): the user asks back by the general word as often as by the one said."""
    person = APPOSITIVE.search(question)
    named = [question]
    if person:
        own, relation, name, owns = person.groups()
        named += [question[:person.start()] + (_possessive(who) if owns else who) + question[person.end():]
                  for who in (name, f"{own} {relation}")]
    general = [re.sub(r"\b(my|our|the) (\w+)\b", lambda m: f"{m[1]} {HYPERNYMS.get(m[2], m[2])}", q) for q in named]
    return list(dict.fromkeys(named + general))


def _as_group(question: str, group: str) -> str:
    """A question about "we" asked about the group the user spoke for ("What do we build?" →
    "What does my startup build?")."""
    said = {"do we": f"does {group}", "are we": f"is {group}", "were we": f"was {group}", "we": group,
            "our": _possessive(group)}
    return re.sub(r"\b(?:do we|are we|were we|we|our)\b", lambda m: said[m[0]], question)


def kind_questions(question: str, kind: str) -> list[str]:
    """The question asked about the answer's kind ("What do I drive?" → "Which car do I
    drive?", "What car do I drive?"; "Which place do I live in?" → "Which city …"), or none
    when its grammar has no such form (who, when, names, "What is my sister?")."""
    place = re.match(r"Which place (.+)$", question)
    if place:
        return [f"Which {kind} {place.group(1)}", f"What {kind} {place.group(1)}"]
    what = re.match(r"What (?P<aux>\w+) (?P<rest>.+)\?$", question)
    if (not what or kind in question.lower() or question.endswith(" do?")
            or re.search(r"\b(?:called|name)\b", question)
            or what["aux"] not in {"do", "does", "did", "should", "can"} | COPULA):
        return []
    if what["aux"] in COPULA and not (question.split()[-1].rstrip("?") in PREPS
                                      or re.search(r"\b\w+ing\b", what["rest"])):
        return []
    return [f"{wh} {kind} {what['aux']} {what['rest']}?" for wh in ("Which", "What")]


def _answer(span: str) -> str:
    """A span as an answer: no article, no pronoun, not a whole clause."""
    answer = ARTICLE.sub("", span.strip(" ,.;:!"))
    return answer if answer.lower() not in OBJECT_PRONOUNS and len(answer.split()) <= MAX_ANSWER_WORDS else ""


def _clause_questions(clause: str) -> list[tuple[str, str]]:
    parsed = _subject(clause)
    named = [(q, name) for kind, verb, name in NAMED_THING.findall(clause)
             for q in [f"What is the {kind} called?", f"What is the name of the {kind}?"]
             + ([f"What do {verb.split()[0]} call the {kind}?"] if verb.endswith(" call") else [])]  # "a shed I call …"
    return (_predicate_questions(*parsed) if parsed else []) + named


# -- sentence → clauses → subject and predicate ----------------------------------------------


def _clauses(statement: str) -> list[str]:
    """The statement without openers ("Hi!", "Correction:"), split where a new subject starts;
    a leading adverbial ("On weekends I climb") is dropped."""
    text = OPENERS.sub("", statement.strip().rstrip(".!"))
    out = []
    for part in CLAUSE_BREAK.split(text):
        found = re.search(r"\b(?:I|We|My|Our)\b", part)
        adverbial = part.split()[0].lower() in PREPS | {"after", "before", "during"}
        if found and found.start() and (adverbial or not _subject(part)):
            part = part[found.start():]
        if part:
            out.append(part[0].upper() + part[1:])
    return out


def _subject(clause: str) -> tuple[str, str, str] | None:
    """(subject, verb, rest): "My brother Jonas builds wooden boats" → ("my brother Jonas",
    "builds", "wooden boats"). The subject is a personal pronoun, a name, or a possessive
    phrase that ends before the first copula, adverb, or verb-looking word."""
    for short, long in CONTRACTIONS.items():
        if clause.startswith(short + " "):
            clause = long + clause[len(short):]
    words = clause.split()
    if len(words) < 2:
        return None
    if words[0] in {"I", "We", "He", "She", "It", "They"}:
        return _verb_group(words[0] if words[0] == "I" else words[0].lower(), words[1:])
    if words[0] in {"My", "Our", "His", "Her", "Its", "Their", "The"} or words[0].endswith("'s"):
        end = next((i for i, w in enumerate(words[1:6], 1) if w in COPULA), 0) or next(
            (i for i, w in enumerate(words[2:6], 2) if w in ADVERBS or w in IRREGULAR_PAST
             or re.fullmatch(r"[a-z]+(?:[^s']s|ed)", w)), 0)
        if not end:
            return None
        subject = " ".join(words[:end])
        return _verb_group(subject if words[1][:1].isupper() else subject[0].lower() + subject[1:], words[end:])
    name = re.match(NAME + r"(?=\s)", clause)
    if name and not name.group(0).endswith("."):
        return _verb_group(name.group(0), clause[name.end():].split())
    return None


def _verb_group(subject: str, words: list[str]) -> tuple[str, str, str] | None:
    while words and words[0].lower() in ADVERBS:
        words = words[1:]
    if not words:
        return None
    return subject, words[0], " ".join(words[1:])


def _antecedents(clause: str) -> list[str]:
    """What "he/she/it" in a later clause most likely means: this clause's subject when it
    is someone of the user's ("my sister Mira"), or the thing it named, by its name and by
    what the user does with it ("The Glass Orchard", "the novel I'm reading")."""
    parsed = _subject(clause)
    if parsed and parsed[0].split()[0] in {"my", "our"} and "'" not in parsed[0]:
        return [parsed[0]]
    named = re.search(r"\b(?:called|named)\s+(" + NAME + ")", clause)
    if named:
        done = re.match(r"(?P<who>I|We)(?P<be>'m|'re| am| are)?\s+(?P<verb>\w+(?:\s+(?:on|at|in|for|with))?)"
                        r"\s+(?:a|an)\s+(?P<kind>[a-z]+)\s+(?:called|named)\s", clause)
        described = [f"the {done['kind']} {done['who']}{done['be'] or ''} {done['verb']}"] if done else []
        return [named.group(1)] + described
    renamed = re.search(r"\b(?:named|call|called)\s+(?:the|my|our)\s+([a-z]+)\s+" + NAME, clause)
    return [f"my {renamed.group(1)}"] if renamed else []  # "I named the car Gustav" → "my car"


def _resolve(clause: str, antecedent: str) -> str:
    """A leading pronoun replaced by its antecedent ("Her birthday" → "my sister Mira's birthday")."""
    first, _, rest = clause.partition(" ")
    if first.lower() not in PRONOUNS:
        return clause
    if not antecedent:
        return ""
    possessive = first.lower() in {"his", "its", "their"} or (first.lower() == "her" and rest.split()[:1] != ["is"])
    name = antecedent[0].upper() + antecedent[1:]
    return f"{name}'s {rest}" if possessive else f"{name} {rest}"


# -- predicate → questions -------------------------------------------------------------------


def _predicate_questions(subject: str, verb: str, rest: str) -> list[tuple[str, str]]:
    if subject.endswith("'s name") and verb == "is":  # "My manager's name is Berit Halvorsen"
        return [(f"What is {subject}?", rest), (f"Who is {subject[:-7]}?", rest)] + _agent(subject[:-7], rest)
    if subject.lower() == "my name" and verb == "is":
        return _my_name(rest)
    if verb in COPULA and rest:
        return _copula(subject, verb, rest)
    return _action(subject, verb, rest)


def _copula(subject: str, be: str, rest: str) -> list[tuple[str, str]]:
    """"<subject> is <complement>": names, places, dates, kinds and properties."""
    head = f"{be} {subject}"
    progressive = re.match(r"(?P<verb>\w+ing)\s+(?P<tail>.+)$", rest)
    if progressive:  # "learning to play the bandoneon", "reading a novel called The Glass Orchard"
        verb, tail = progressive["verb"], progressive["tail"]
        to_verb = re.match(r"to\s+(\w+)\s+(.+)$", tail)
        if to_verb:
            return (_object_questions(f"{head} {verb} to {to_verb[1]}", subject, to_verb[2])
                    + _catenative(f"{head} {verb}", subject, _ing_base(verb), to_verb[1], to_verb[2]))
        return _object_questions(f"{head} {verb}", subject, tail)
    called = re.match(r"(?:called|named)\s+(?P<name>.+)$", rest) or CALLED.match(rest)
    if called:  # "My cat is called Pixel", "My dog is a greyhound named Comet"
        name = called.group("name")
        kind = [(f"What {head}?", called["kind"])] if "kind" in called.groupdict() else []
        return kind + [(f"What {head} called?", name), (f"What is the name of {subject}?", name),
                (f"What is {_possessive(subject)} name?", name)]
    if subject == "I" and re.fullmatch(NAME, rest):
        return _my_name(rest)
    first, _, obj = rest.partition(" ")
    if first in PREPS and obj:  # "is in Bergen", "is on the 14th of March", "is from Porto"
        wh = ("When" if DATE.search(obj) and first in {"on", "in", "at"}
              else "Where" if first in PLACE_PREPS | {"on"} else "What")
        suffix = f" {first}" if wh == "What" or first == "from" else ""
        where = [(f"Which place {head} {first}?", _before_pp(obj))] if wh == "Where" else []  # → "Which street …"
        return [(f"{wh} {head}{suffix}?", _before_pp(obj))] + where
    age = re.match(r"(" + NUMBER + r")\s+years?\s+old$", rest)
    if age:
        return [(f"How old {head}?", age.group(1))]
    adjective = re.match(r"(?P<adj>[\w-]+)\s+(?P<prep>to|with|by|in|of|about)\s+(?P<obj>.+)$", rest)
    if adjective and not adjective["adj"].endswith("ing"):  # "allergic to", "written by", "obsessed with"
        adj, prep, obj = adjective["adj"], adjective["prep"], adjective["obj"]
        wh = "Who" if prep == "by" else "When" if DATE.search(obj) else "What"
        past = PARTICIPLE_PAST.get(adj, adj if adj.endswith("ed") else "")
        # "Who wrote The Glass Orchard?" — not "Who wrote it?", which every book question matches
        active = ([(f"Who {past} {subject}?", _before_pp(obj))]
                  if prep == "by" and past and subject.lower() not in PRONOUNS else [])
        avoid = [(f"What should {subject} avoid?", _before_pp(obj))] if adj in AVOIDS else []
        return [(f"{wh} {head} {adj}{'' if wh == 'When' else ' ' + prep}?", _before_pp(obj))] + active + avoid + [
            (f"Where {head} {adj}?", place) for place in [_place(obj)] if place]
    complement = _before_pp(rest)
    out = [(f"What {head}?", complement)]
    if re.fullmatch(NAME, complement) and not DATE.search(complement):
        out += [(f"Who {head}?", complement)] + _agent(subject, complement)
    favourite = re.fullmatch(r"(my|our) (favourite|go-to) ([\w-]+)", subject)
    if favourite:  # "My favourite colour is teal" → "Which colour do I like best?"
        own, kind = favourite[1], favourite[3]
        who = "I" if own == "my" else "we"
        out += [(f"Which {kind} do {who} like best?", complement),
                (f"Which {kind} is {own} favourite?", complement)]
        if favourite[2] == "go-to":  # "My go-to snack is …": what the user asks as a favourite
            out.append((f"What is {own} favourite {kind}?", complement))
    place = _place(rest)
    if re.match(r"(?:a|an)\s", rest) and (subject == "I" or re.search(NAME, subject)):  # "my sister Mira is a ..."
        do = _do(subject)
        out.append((f"What {do} {subject} do?", complement))
        if place:  # "… is a nurse at Saint Aldric Hospital"
            out.append((f"Where {do} {subject} work?", place))
    if place:
        out.append((f"Where {head}?", place))
    return out


def _action(subject: str, verb: str, rest: str) -> list[tuple[str, str]]:
    """"<subject> <verb> <object> <prep phrase> <time>": what, where, when and naming questions."""
    aux, base = _do_support(subject, verb)
    if not aux:
        return []
    if base == "turn" and re.match(NUMBER + r"\b", rest):
        return [(f"How old is {subject}?", rest.split()[0])]
    ask = f"{aux} {subject} {base}"
    times = [m.group(0) for m in TIME.finditer(rest)]
    rest = " ".join(w for w in re.sub(r"\s+", " ", TIME.sub(" ", rest)).split() if not w.endswith("ly"))
    what = f" {_before_pp(rest)}" if rest and rest.split()[0] not in PREPS else ""
    out = [(f"At what time {ask}{what}?", time[3:]) if re.match(r"at\s", time) else (f"When {ask}{what}?", time)
           for time in times]
    named = re.match(r"(?P<thing>(?:the|my|our|his|her|a|an)\s+[\w\s-]+?)\s+(?P<name>" + NAME + ")$", rest)
    if base in {"name", "call"} and named:  # "I named the car Gustav"
        owner = _possessive(subject)
        thing = re.sub(r"^(?:the|a|an|his|her|my|our)\s", "", named["thing"])
        said = named["thing"].split()[0]  # "the car" is the user's own: "What did I name my car?"
        return out + [(f"What {ask} {the} {thing}?", named["name"])
                      for the in dict.fromkeys((said, owner if said == "the" else said))] + [
            (f"What is {owner} {thing} called?", named["name"])]
    return out + _object_questions(ask, subject, rest)


def _object_questions(ask: str, subject: str, rest: str) -> list[tuple[str, str]]:
    """Questions about an object and the prepositional phrase after it: "what do I build",
    "where do I live", "which gym do I climb at", "what is my school called"."""
    if not rest:
        return []
    words = rest.split()
    if words[0] in PARTICLES:  # "broke down", "setting up"
        return _object_questions(f"{ask} {words[0]}", subject, " ".join(words[1:]))
    if words[0] == "to" and len(words) > 2 and _statement_verb(ask) in TAKES_INFINITIVE:  # "want to draw"
        tail = " ".join(words[2:])
        return (_object_questions(f"{ask} to {words[1]}", subject, tail)
                + _catenative(ask, subject, _statement_verb(ask), words[1], tail))
    if words[0] in PREPS:
        obj, prep, pp = "", words[0], " ".join(words[1:])
    else:
        split = next((i for i, w in enumerate(words[1:], 1) if w in PREPS), len(words))
        obj, prep, pp = " ".join(words[:split]), (words[split:] or [""])[0], " ".join(words[split + 1:])
    out = []
    if obj and obj.split()[0].lower() not in OBJECT_PRONOUNS | STOPS:
        called = CALLED.match(obj)
        if called:  # "reading a novel called The Glass Orchard"
            return [(f"Which {called['kind']} {ask}?", called["name"]), (f"What {ask}?", called["name"])]
        out.append((f"What {ask}?", obj))
    if not pp:
        return out
    middle = f"{ask} {obj}".strip()
    called = CALLED.match(pp)
    if called:  # "work on a compiler called Loom", "teach chemistry at a school called Elm Ridge"
        owner = _possessive(subject)
        name = _before_pp(called["name"]) if not re.fullmatch(NAME, called["name"]) else called["name"]
        return out + [(f"Which {called['kind']} {middle} {prep}?", name),
                      (f"What is {owner} {called['kind']} called?", name),
                      (f"What is the {called['kind']} {subject} {_statement_verb(ask)} {prep} called?", name)
                      ] + ([(f"Where {middle}?", name)] if prep in PLACE_PREPS else [])  # "climb at a gym called …"
    target = _before_pp(pp)
    place = _place(pp) or (target if target[:1].isupper() else "")
    if prep in PLACE_PREPS and place:
        out += [(f"Where {middle}{' from' if prep == 'from' else ''}?", place),
                (f"Which place {middle} {prep}?", place)]
    elif prep in {"in", "at"}:
        out.append((f"Where {middle}?", target))
    else:
        out.append((f"What {middle} {prep}?", target))
        if prep == "as" and not obj:  # "works as a dentist"
            out.append((f"What {ask.split()[0]} {subject} do?", target))
    return out


# -- small grammar helpers -------------------------------------------------------------------


def _do_support(subject: str, verb: str) -> tuple[str, str]:
    """The auxiliary a question needs and the verb's base form ("studies" → does, study)."""
    if not re.fullmatch(r"[a-z]+", verb):
        return "", ""
    if verb in IRREGULAR_PAST:
        return "did", IRREGULAR_PAST[verb]
    if verb.endswith("ed") and len(verb) > 4:
        return "did", _past_base(verb)
    if subject in {"I", "we", "they"}:
        return "do", verb
    if not verb.endswith("s") or verb.endswith("ss"):
        return "", ""
    if verb.endswith("ies"):
        return "does", verb[:-3] + "y"
    return "does", verb[:-2] if re.search(r"(?:sh|ch|x|o|ss)es$", verb) else verb[:-1]


def _past_base(verb: str) -> str:
    """"moved" → "move", "worked" → "work", "named" → "name", "studied" → "study"."""
    if verb.endswith("ied"):
        return verb[:-3] + "y"
    stem = verb[:-2]
    if stem[-1] == stem[-2] and stem[-1] not in "ls":
        return stem[:-1]  # "stopped" → "stop"
    if stem[-1] in "vczg" or (stem[-1] in "smkltpn" and stem[-2] in "aeiou" and stem[-3] not in "aeiou"):
        return stem + "e"
    return stem


def _statement_verb(ask: str) -> str:
    """"do I work" → "work", "am I reading" → "am reading": the verb as the statement has it."""
    words = ask.split()
    return words[-1] if words[0] in {"do", "did", "does"} else " ".join([words[0], *words[2:]])


def _catenative(ask: str, subject: str, base: str, inner: str, tail: str) -> list[tuple[str, str]]:
    """"I'm learning to play the bandoneon" (``ask`` "am I learning", ``base`` "learn")
    also says what the user plays ("What do I play?") and what they are learning ("What am
    I learning?")."""
    return ((_object_questions(f"{_do(subject)} {subject} {inner}", subject, tail) if base in DOES_IT else [])
            + (_object_questions(ask, subject, tail) if base in NAMES_IT else []))


def _do(subject: str) -> str:
    return "do" if subject in {"I", "we", "they"} else "does"


def _ing_base(verb: str) -> str:
    """"learning" → "learn", "loving" → "love"."""
    stem = verb[:-3]
    return stem if stem in TAKES_INFINITIVE else stem + "e"


def _my_name(name: str) -> list[tuple[str, str]]:
    return [("What is my name?", name), ("Who am I?", name), ("What's my name?", name)]


def _agent(subject: str, name: str) -> list[tuple[str, str]]:
    """"My teacher is …" → "Who teaches me?": the user asks what the person does for them."""
    role = re.fullmatch(r"(my|our) (\w+)", subject)
    if not role or role[2] not in AGENTS:
        return []
    return [(f"Who {AGENTS[role[2]]} {'me' if role[1] == 'my' else 'us'}?", name)]


def _possessive(subject: str) -> str:
    return PERSONAL_POSSESSIVE.get(subject) or subject + ("'" if subject.endswith("s") else "'s")


def _place(phrase: str) -> str:
    """A named place inside a phrase ("a winery in Mendoza" → "Mendoza")."""
    place = re.search(r"\b(?:in|at|near|from)\s+(" + NAME + ")", phrase)
    return place.group(1) if place else ""


def _before_pp(phrase: str) -> str:
    """A noun phrase up to the next preposition ("Ghent for work" → "Ghent")."""
    words = phrase.split()
    end = next((i for i, w in enumerate(words[1:], 1) if w in STOPS or (
        w in PREPS - {"of"} and not re.fullmatch(NAME, " ".join(words[:i + 2])))), len(words))
    return " ".join(words[:end])
