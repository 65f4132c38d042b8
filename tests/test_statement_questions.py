"""The grammar rules that turn what the user said into questions it answers."""

from __future__ import annotations

import numpy as np
import pytest

from engine import facts, statement_questions
from engine.statement_questions import questions
from store import paths


def asked(*statements: str) -> dict[str, str]:
    return {q: a for q, a, _ in questions(list(statements))}


@pytest.mark.parametrize("statements, question, answer", [
    (["Hi! I'm Jonas Berg."], "What is my name?", "Jonas Berg"),
    (["I live in Graz, near the river."], "Where do I live?", "Graz"),
    (["My dog is called Biscuit."], "What is my dog called?", "Biscuit"),
    (["I work at a bakery called Crumb & Co."], "What is the bakery called?", "Crumb & Co"),
    (["My brother Karl works as a dentist."], "What does my brother Karl do?", "dentist"),
    (["My wife's name is Sara."], "Who is my wife?", "Sara"),
    (["I named my bike Rocket."], "What is my bike called?", "Rocket"),
    (["I practise every evening at 7 pm."], "At what time do I practise?", "7 pm"),
    (["Our son Leo was born in 2015."], "When was our son Leo born?", "2015"),
    (["I grew up in Lima."], "Where did I grow up?", "Lima"),
    (["On weekends I climb at a gym called Boulder Barn."], "Which gym do I climb at?", "Boulder Barn"),
    (["My favourite season is autumn."], "Which season do I like best?", "autumn"),
    (["Our favourite cafe is Kaffebar."], "Which cafe is our favourite?", "Kaffebar"),
    (["My coach is Lina Park."], "Who coaches me?", "Lina Park"),
    (["My tutor's name is Ivo Petrov."], "Who tutors me?", "Ivo Petrov"),
    (["The song was sung by Nora Vik."], "Who sang the song?", "Nora Vik"),
    (["My house was designed by my grandfather."], "Who designed my house?", "my grandfather"),
    (["My daughter Ana plays the flute."], "What does Ana play?", "flute"),
    (["My daughter Ana plays the flute."], "What does my daughter play?", "flute"),
    (["My niece Clara's school is in Graz."], "Where is my niece's school?", "Graz"),
    (["My uncle Pedro is a baker at Sol Bakery."], "Where does my uncle work?", "Sol Bakery"),
    (["My office is on Dock Lane."], "Which place is my office on?", "Dock Lane"),
    (["I named the boat Wave."], "What did I name my boat?", "Wave"),
    (["I sleep in a tent I call the Palace."], "What do I call the tent?", "Palace"),
    (["My go-to drink is mint tea."], "What is my favourite drink?", "mint tea"),
    (["I'm learning to play the cello."], "What do I play?", "cello"),
    (["I'm learning to play the cello."], "What am I learning?", "cello"),
    (["I love to bake sourdough."], "What do I bake?", "sourdough"),
    (["I swim at a pool called Blue Lagoon."], "Where do I swim?", "Blue Lagoon"),
    (["I'm allergic to peanuts."], "What should I avoid?", "peanuts"),
    (["My dog is called Biscuit."], "What is the name of my pet?", "Biscuit"),
    (["I'm writing a novel called Salt Roads.", "It was edited by Ada Lind."],
     "Who edited the book I'm writing?", "Ada Lind"),
    (["Our band is called The Moths.", "We rehearse in Leeds."], "Where does our band rehearse?", "Leeds"),
])
def test_a_clause_becomes_the_questions_its_grammar_allows(statements, question, answer):
    assert asked(*statements)[question] == answer


def test_a_role_without_a_verb_is_not_turned_into_one():
    assert set(asked("My landlord is Tom Berg.")) == {"What is my landlord?", "Who is my landlord?"}


def test_a_pronoun_is_asked_as_said_and_as_resolved():
    got = asked("My sister Ana is a pilot.", "She lives in Porto.", "Her birthday is on the 3rd of May.")
    assert got["Where does my sister Ana live?"] == got["Where does she live?"] == "Porto"
    assert got["When is her birthday?"] == got["When is my sister Ana's birthday?"] == "3rd of May"


def test_only_what_the_user_does_is_asked_of_an_infinitive_they_only_want():
    got = asked("I want to visit Japan.")
    assert "What do I visit?" not in got and "What do I want?" not in got


def test_we_is_asked_as_the_group_only_after_the_user_named_one():
    assert "What does my sister build?" not in asked("My sister Ana is a pilot.", "We build kites.")
    assert asked("My team is called Blue Owls.", "We build kites.")["What does my team build?"] == "kites"


def test_a_negated_clause_is_not_learned_but_its_question_takes_the_new_answer():
    assert asked("I don't eat meat.") == {}
    got = asked("Correction: I no longer live in Graz, I moved to Linz last year.")
    assert got["Where do I live?"] == got["Where did I move?"] == "Linz"
    assert "Graz" not in got.values()


def test_every_answer_is_a_span_of_its_statement():
    said = ["I drive an old blue Saab.", "It broke down near Umeå.", "My favourite food is ramen."]
    for question, answer, statement in questions(said):
        assert answer.lower() in statement.lower(), (question, answer)


class KindsOnly:
    """A runtime that knows only what kind of thing something is (an animal, or a similar
    thing that is no kind: a "wolf"), and records what it was asked."""

    words = ["wolf", *(paths.ASSETS / "probe_templates" / "kind_words.txt").read_text().split()]

    def __init__(self):
        self.asked = []

    def tokenize(self, text, add_bos=True):
        return [self.words.index(text.strip())]

    def next_logits(self, prompt):
        self.asked.append(prompt)
        logits = np.zeros(len(self.words))
        logits[self.words.index("wolf")], logits[self.words.index("animal")] = 2.0, 1.0
        return logits


def test_a_parsed_statement_asks_the_model_only_for_its_answers_kinds():
    runtime = KindsOnly()
    pairs = facts.derive(runtime, ["My cat is called Pixel and she hates the snow."])
    found = {(qa.question, qa.answer) for qa in pairs}
    assert ("What is my cat called?", "Pixel") in found
    assert ("Which animal does my cat hate?", "snow") in found
    assert runtime.asked and all(p.endswith("snow:") for p in runtime.asked)


@pytest.mark.parametrize("question, kind, expected", [
    ("What do I drive?", "car", "Which car do I drive?"),
    ("Which place did we meet at?", "city", "Which city did we meet at?"),
    ("Which place is my office on?", "street", "Which street is my office on?"),
    ("What is Loom written in?", "language", "Which language is Loom written in?"),
    ("What am I learning to play?", "instrument", "Which instrument am I learning to play?"),
    ("What is my sister?", "job", None),  # what she is, not which one
    ("What does my sister do?", "job", None),
    ("What is my cat called?", "animal", None),  # a name is asked for as a name
    ("What is my favourite colour?", "colour", None),  # the kind is already asked
    ("Who is my teacher?", "person", None),
    ("When do we rehearse?", "day", None),
])
def test_a_question_about_a_thing_is_also_asked_by_its_kind(question, kind, expected):
    got = statement_questions.kind_questions(question, kind)
    if expected is None:
        assert got == []
    else:  # "Which car …" and "What car …"
        assert got == [expected, "What" + expected[len("Which"):]]


def test_a_fact_is_taught_in_its_first_phrasing_and_the_least_alike_others():
    said = "My husband Rui is from Porto."
    pairs = [facts.QA(q, a, said) for q, a in [
        ("Where is my husband Rui from?", "Porto"), ("Where is Rui from?", "Porto"),
        ("Who is my husband?", "Rui"), ("Which city is my husband from?", "Porto"),
        ("Where is my husband from?", "Porto")]]
    kept = [qa.question for qa in facts.varied(pairs, 2)]
    assert kept == ["Where is my husband Rui from?", "Who is my husband?", "Which city is my husband from?"]
    assert facts.varied(pairs, 5) == pairs
