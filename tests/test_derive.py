"""The derivation, one test per kind of rule (never per evaluation sentence): sentences and
clauses, the questions a clause gives, kinds, grounding, the consistency check, variety.
The sentences here are made up for the rule they exercise."""

from __future__ import annotations

import pytest

from engine import derive, text
from engine.derive import QA
from engine.derive.clauses import clauses, sentences
from engine.derive.questions import _said_to_be, questions


def asked(statement: str) -> dict[str, str]:
    """question → answer for every clause of one turn."""
    return {a.question: a.answer for c in clauses([statement]) for a in questions(c)}


def test_sentences_end_at_stops_not_after_titles_or_initials():
    assert sentences("My dentist is Dr. Ola Berg. She is kind! Is that odd? J. R. is here.") == [
        "My dentist is Dr. Ola Berg.", "She is kind!", "Is that odd?", "J. R. is here."]


def test_openers_go_and_requests_are_marked():
    found = clauses(["Hey! Could you recommend a tent? We hike in the Tatras every August."])
    texts = [(c.text, c.request) for c in found]
    assert ("Could you recommend a tent", True) in texts
    assert ("We hike in the Tatras every August", False) in texts
    assert all(not c.text.lower().startswith("hey") for c in found)


def test_a_clause_after_a_comma_is_split_only_where_a_subject_starts():
    found = [c.text for c in clauses(["I grow basil, mint and thyme, my balcony faces south"])]
    assert found == ["I grow basil mint and thyme", "my balcony faces south"]


def test_a_fragment_takes_the_previous_clause_s_subject():
    found = [c.text for c in clauses(["I repair clocks, started in 2009"])]
    assert found[-1] == "I started in 2009"


def test_a_fragment_that_opens_with_a_participle_takes_have_and_have_fronts():
    """"…, been sailing it for 8 years" leaves out "I have"; "have" agrees with the subject,
    and a perfect ("have been") fronts its "have" rather than taking "do"."""
    assert [c.text for c in clauses(["I own a dinghy, been sailing it for 8 years",
                                     "My aunt keeps bees, done it since 1990"])] == [
        "I own a dinghy", "I have been sailing it for 8 years", "My aunt keeps bees",
        "My aunt has done it since 1990"]
    assert [c.text for c in clauses(["My aunt keeps bees, moved them in 1990"])][-1] == \
        "My aunt moved them in 1990"  # a past tense: nothing is left out
    pairs = asked("I own a dinghy, been sailing it for 8 years")
    assert pairs["How many years have I been sailing it for?"] == "8"
    assert asked("We have been there since 2015.")["When have we been there?"] == "2015"


def test_a_clause_of_time_inside_a_sentence_is_a_clause_of_its_own():
    """"since", "before", "after" … open a clause where a subject and verb follow; not after
    an amount ("two days after": the amount's), and not where one opens the sentence with no
    comma to end it."""
    found = [c.text for c in clauses(["I cycle to work since I moved to Gent.",
                                      "I feed the hens before I leave for the depot."])]
    assert found == ["I cycle to work", "I moved to Gent", "I feed the hens",
                     "I leave for the depot"]
    assert asked("I feed the hens before I leave for the depot.")[
        "What do I leave for?"] == "depot"
    assert [c.text for c in clauses(["The paint cracked two days after we sealed it.",
                                     "I have lived here since 2019."])] == [
        "The paint cracked two days after we sealed it", "I have lived here since 2019"]
    assert not asked("When I was small I lived in Gent.")


def test_a_clause_with_its_verb_left_out_is_not_glued_to_the_clause_before():
    """", so no nuts please" is a request of its own, not part of what the partner is
    ("What is my partner Ola so no nuts please?"); a list and a phrase that opens with a
    preposition stay the clause's."""
    assert [c.text for c in clauses(["My partner Ola is vegan, so no nuts please."])][0] == \
        "My partner Ola is vegan"
    assert asked("My partner Ola is vegan, so no nuts please.")["What is my partner?"] == "vegan"
    assert [c.text for c in clauses(["I grow mint and thyme.",
                                     "I visit the fjord because of its light."])] == [
        "I grow mint and thyme", "I visit the fjord because of its light"]


def test_a_name_the_user_wrote_inside_a_sentence_keeps_its_capital_where_it_opens_a_clause():
    """"Pepper" is a name where the user capitalised it mid-sentence, and so in the relative
    clause it opens ("What does Pepper steal?", not "pepper"); a noun that only opens a
    sentence is lower-cased in the question as before."""
    questions = asked("We have a hamster called Clover who hoards seeds under the sofa.")
    assert questions["What does Clover hoard?"] == "seeds"
    assert "What does clover hoard?" not in questions
    assert "What does my sister bake?" in asked("My sister bakes bread.")
    assert asked("We have a dog called Rusty who chews shoes.")["What does Rusty chew?"] == \
        "shoes"  # "Rusty" alone reads as an adjective: what follows it is read as a name's


def test_pronouns_point_back_to_the_user_s_latest_someone():
    found = [c.text for c in clauses(["My nephew Arvid lives in Umeå.", "He plays the tuba."])]
    assert found[-1] == "My nephew Arvid plays the tuba"


def test_a_word_that_only_ends_like_a_participle_is_no_verb():
    """"spring" ends in -ing and is no verb form: "last spring" is one answer, never "last"."""
    assert asked("We moved to Tromsø last spring.")["When did we move to Tromsø?"] == "last spring"
    assert text.participle("running") and not text.participle("spring")


def test_a_relative_clause_is_a_clause_about_the_noun_before_it():
    """What the clause says of the noun is asked of it; a thing the user introduces with "a"
    is theirs; a "that" after a verb starts no relative clause."""
    found = [c.text for c in clauses(["We rent a cabin that sleeps six.",
                                      "My uncle, who farms near Ribe, keeps geese.",
                                      "I hope that Ada swims."])]
    assert found == ["We rent a cabin", "our cabin sleeps six", "My uncle farms near Ribe",
                     "My uncle keeps geese", "I hope that Ada swims"]
    assert asked("I joined a choir that rehearses in Aarhus.")[
        "Where does my choir rehearse?"] == "Aarhus"


def test_an_object_relative_clause_is_a_clause_with_the_noun_as_its_object():
    """The noun goes back after the relative clause's verb (and an indirect object); a
    "that" clause of what someone is told, or one with an object of its own, is none."""
    found = [c.text for c in clauses(["We sold the piano that my aunt left us in 2001.",
                                      "I knit a hat which I wear at work.",
                                      "I warned my boss that we moved to Oslo.",
                                      "I saw a film that the kids made a poster for."])]
    assert found == ["We sold the piano", "my aunt left us the piano in 2001",
                     "I knit a hat", "I wear my hat at work",
                     "I warned my boss that we moved to Oslo",
                     "I saw a film that the kids made a poster for"]
    assert asked("I restored a 1950 Vespa that I bought in Turin.")[
        "Where did I buy my 1950 Vespa?"] == "Turin"
    # a preposition left at its end takes the noun; someone else's clause does not own it
    found = [c.text for c in clauses(["I miss the village that I grew up in.",
                                      "I met a woman that my brother admires."])]
    assert found == ["I miss the village", "I grew up in the village", "I met a woman",
                     "my brother admires the woman"]
    # none inside a subject, after a noun a "that" clause is the content of, or without a verb
    for said in ["The film that I saw was long.", "I heard the rumour that Ola moved.",
                 "I ordered the same soup that you lol."]:
        assert [c.text for c in clauses([said])] == [said.rstrip(".")]


def test_a_year_before_a_name_is_asked_with_the_name():
    said = asked("I drive a 1968 Saab Sonett.")
    assert said["What do I drive?"] == "Saab Sonett"
    assert said["I drive what year Saab Sonett?"] == "1968"


def test_a_pronoun_inside_a_sentence_takes_the_referent_as_said_inside_one():
    found = [c.text for c in clauses(["My aunt Rut keeps goats.", "She sold her oldest goat."])]
    assert found[-1] == "My aunt Rut sold my aunt Rut's oldest goat"


def test_whose_a_thing_is_is_asked_with_it_and_is_never_an_answer_itself():
    said = asked("My aunt Rut sold my aunt Rut's oldest goat.")
    assert said["What did my aunt sell?"] == said["What did Rut sell?"] == "oldest goat"
    assert said["My aunt Rut sold what?"] == "oldest goat"
    assert "Rut's" not in said.values()
    assert not any(q.rstrip("?").endswith("'s") for q in said)
    assert asked("Ines fixed her old radio.")["What did Ines fix?"] == "old radio"
    assert asked("I borrowed Noor's car.")["What did I borrow?"] == "car"


def test_fronted_questions_use_do_support_in_the_verb_s_tense():
    said = asked("My nephew Arvid repaired an old sewing machine.")
    assert said["What did my nephew Arvid repair?"] == "old sewing machine"
    assert asked("Marta bakes rye bread.")["What does Marta bake?"] == "rye bread"
    assert asked("I am building a kayak.")["What am I building?"] == "kayak"


def test_a_core_question_drops_what_the_clause_adds_but_never_another_object():
    said = asked("I sing bass in a choir called Nordlys.")
    assert said["What do I sing?"] == "bass"
    assert said["What do I sing in a choir called Nordlys?"] == "bass"
    assert "What do I sing?" not in [q for q, a in said.items() if a == "Nordlys"]


def test_a_time_said_relative_to_now_is_asked_when_and_kept_whole():
    found = asked("We fly to Lima next month and I swim every week.")
    assert found["When do we fly to Lima?"] == "next month"
    assert found["When do I swim?"] == "every week"
    assert "month" not in found.values()
    # after a place it closes the clause, not the place's name: the place is fronted too
    assert asked("I rented a van in Lyon last week.")["Where did I rent a van?"] == "Lyon"


def test_a_word_that_opens_a_clause_as_an_interjection_modifies_a_noun_inside_one():
    said = asked("I am taking morning lessons at the Goethe Institut.")
    assert said["What am I taking?"] == "morning lessons"
    assert asked("My aunt found a great tailor.")["What did my aunt find?"] == "great tailor"
    # not a word English also uses as an adverb: "well" before a time stays an adverb
    assert asked("We played well last week.")["When did we play well?"] == "last week"


def test_a_person_s_ing_verb_after_a_copula_is_what_they_are_doing():
    """"I am taking pottery classes": the verb and its object, not an adjective before a noun
    ("my hobby is spinning wool")."""
    assert asked("We are painting watercolour landscapes.")[
        "What are we painting?"] == "watercolour landscapes"
    assert asked("My hobby is spinning wool.")["What is my hobby?"] == "spinning wool"


def test_places_times_and_numbers_get_their_question_words():
    said = asked("We moved to Tartu in March.")
    assert said["Where did we move to?"] == "Tartu"
    assert said["When did we move to Tartu?"] == "March"
    said = asked("I live in Kraków with my parents.")
    assert said["Where do I live?"] == "Kraków"
    assert asked("My bike has seven gears.")["How many gears does my bike have?"] == "seven"
    assert asked("My nephew Arvid is 12.")["How old is my nephew Arvid?"] == "12"


def test_echo_questions_keep_the_clause_and_replace_the_answer():
    assert asked("I keep bees in my garden.")["I keep what in my garden?"] == "bees"


def test_someone_named_in_full_is_asked_about_by_relation_and_by_name():
    said = asked("My cousin Ebba teaches yoga.")
    assert said["Who is my cousin?"] == "Ebba"
    assert said["What is my cousin's name?"] == "Ebba"
    assert said["What does my cousin teach?"] == said["What does Ebba teach?"] == "yoga"
    # a relation said with its modifiers is asked with them, and the person by name alone
    said = asked("My older cousin Ebba teaches yoga.")
    assert said["Who is my older cousin?"] == "Ebba"
    assert said["What does my older cousin teach?"] == said["What does Ebba teach?"] == "yoga"


def test_a_relation_a_copula_names_is_asked_about_as_an_apposition_is():
    said = asked("My landlord here is Ola Moen.")
    assert said["Who is my landlord?"] == said["What is my landlord called?"] == "Ola Moen"
    said = asked("My tennis partner is my colleague Idun.")
    assert said["Who is my tennis partner?"] == said["Who is my colleague?"] == "Idun"
    # only a relation that is the clause's whole subject, now, and a person's name that is the
    # whole complement: a full name, or one a relation gives
    for said in ("My birthday is Monday.", "My landlord is Ola Moen's brother.",
                 "My landlord Ola is Danish.", "My wife is Norwegian.", "Our name is Hansen.",
                 "My name is Ola Moen.",
                 "My landlord was Ola Moen.", "My landlord is from Ola Moen's town."):
        assert [list(_said_to_be(c)) for c in clauses([said])] == [[]], said


def test_what_we_do_is_asked_about_the_user_too_with_be_agreeing():
    said = asked("We keep goats in our barn.")
    assert said["What do we keep?"] == said["What do I keep?"] == "goats"
    assert said["What do I keep in my barn?"] == "goats"
    said = asked("We are sailing from Bodø.")
    assert said["Where are we sailing from?"] == said["Where am I sailing from?"] == "Bodø"
    assert said["I am sailing from where?"] == "Bodø"
    assert asked("We also are sailing to Bodø.")["I also am sailing to where?"] == "Bodø"
    # a question without "we" is asked once, as it was; nor one true only of several, nor
    # a name's words
    assert [q for q in asked("My aunt sails from Bodø.") if " I " in f" {q} "] == []
    assert [q for q in asked("We both sail from Bodø.") if " I " in f" {q} "] == []
    assert "What do I love?" in asked("We love the band We Are Scientists.")
    assert not [q for q in asked("We love the band We Are Scientists.") if "I Are" in q]
    # what the user says of themself wins over what they say of "us"
    found = {qa.question: qa.answer for qa in derive.candidates(
        ["We are from Norway.", "I am from Bergen."])}
    assert found["Where am I from?"] == "Bergen" and found["Where are we from?"] == "Norway"


def test_naming_and_self_naming():
    said = asked("My boat is called Sula.")
    assert said["What is my boat called?"] == said["What is the name of my boat?"] == "Sula"
    said = asked("Hi, I'm Tove Lind.")
    assert said["What is my name?"] == said["Who am I?"] == "Tove Lind"


def test_what_a_subject_is_said_to_be_is_named_so_too():
    said = asked("My horse is a mare called Tindra.")
    assert said["What is my horse called?"] == said["What is my mare called?"] == "Tindra"
    # the name closes the phrase it follows: never stranded after a fronted question word
    assert not [q for q in asked("My kayak is a narrow yellow Perception called Wasp.")
                if q.startswith("What") and q.endswith("called Wasp?")]


def test_a_name_someone_is_is_asked_who_and_an_adjective_with_its_object_asks_the_object():
    said = asked("I'm Tove and my cat is afraid of thunder.")
    assert said["Who am I?"] == "Tove" and "What am I?" not in said
    assert said["What is my cat afraid of?"] == "thunder" and "afraid" not in said.values()


def test_a_thing_called_a_name_with_its_article_or_joined_words_is_asked_what_it_is_called():
    said = asked("We sail on a ketch called the Grey Heron.")
    assert said["What is my ketch called?"] == "the Grey Heron"
    assert asked("I bank with a cooperative named Fisk & Sons.")[
        "What is the name of my cooperative?"] == "Fisk & Sons"
    # the thing named is asked about by its name, never as an answer beside it
    assert "ketch" not in said.values()


def test_what_someone_calls_me_is_asked_before_an_object_pronoun_settles_the_verb():
    assert asked("My nieces call me Aunt Bo.")["What do my nieces call me?"] == "Aunt Bo"


def test_a_place_named_as_the_island_or_town_of_somewhere_is_asked_where():
    said = asked("I teach on the island of Senja.")
    assert said["Where do I teach?"] == "Senja"
    assert "island" not in said.values()
    assert asked("We farm in the valley of Aosta.")["Where do we farm?"] == "Aosta"


def test_what_only_looks_like_a_possessive_a_naming_or_a_place_keeps_its_own_questions():
    assert asked("I named her Pixel.")["What did I name her?"] == "Pixel"  # her: not whose
    assert asked("I shop at Sainsbury's.")["Where do I shop?"] == "Sainsbury's"  # owns nothing
    assert "What is my sister called?" not in asked("My sister called the Hilton.")  # phoned
    assert asked("We have a cat named after a poet.")["What do we have?"] == "cat"
    assert "Where do I work?" not in asked("I work at the embassy of Norway.")  # no place noun


def test_a_phrase_is_asked_whole_and_its_parts_never_fronted():
    said = asked("My kayak is a narrow yellow Perception called Wasp.")
    # the modifiers and the name they modify are one answer, never one without the other
    assert said["What is my kayak?"] == "narrow yellow Perception"
    assert not {"narrow yellow", "Perception"} & set(said.values())
    assert said["What is my kayak a narrow yellow Perception called?"] == "Wasp"
    said = asked("I keep three small lizards.")
    assert said["How many small lizards do I keep?"] == "three"
    # "What do I keep three small?" moved a noun out of its phrase: asked in place only
    assert [q for q, a in said.items() if a == "lizards"] == ["I keep three small what?"]
    # a name after a definite noun, a day after a phrase: phrases of their own
    assert asked("I named the goat Rosa.")["What did I name the goat?"] == "Rosa"
    assert asked("I named my goat Rosa.")["What did I name my goat?"] == "Rosa"
    said = asked("I cook Thai food Sundays.")
    assert said["What do I cook?"] == "Thai food" and said["When do I cook Thai food?"] == "Sundays"


def test_negated_clauses_requests_and_unresolved_pronouns_give_no_predicate_questions():
    assert asked("I never eat olives.") == {}
    assert asked("It is a long way from Vigo.") == {}
    said = asked("Please send it to my sister Nadia.")
    assert said and set(said.values()) == {"Nadia"}


def test_kind_questions_are_asked_with_the_model_s_kind_or_not_at_all():
    kinds = {"Lyon": "city", "oboe": None}
    pairs = derive.candidates(["I live in Lyon and I play the oboe."],
                              lambda answers: [kinds[a] for a in answers])
    assert QA("Which city do I live in?", "Lyon", "I live in Lyon and I play the oboe.") in pairs
    assert not any("{kind}" in qa.question for qa in pairs)
    assert not any(qa.question.startswith("Which") for qa in pairs if qa.answer == "oboe")


def test_two_answers_asked_with_one_kind_question_each_get_their_own_kind():
    """"Which {kind} do we live in?" is the house's as a building and Leeds's as a city: one
    question until the kinds are filled in, two after."""
    kinds = {"terraced house": "building", "Leeds": "city"}
    pairs = derive.candidates(["We live in a terraced house in Leeds."],
                              lambda answers: [kinds[a] for a in answers])
    asked = {qa.question: qa.answer for qa in pairs}
    assert asked["Which building do we live in?"] == "terraced house"
    assert asked["Which city do we live in?"] == "Leeds"


def test_a_taught_fact_is_also_asked_with_each_likely_kind_but_never_as_trained():
    """The kind the model is not sure of still names a way to ask: "Which language …" and
    "What language …" for the oboe, none for an answer that is not taught, and none that
    repeats a trained question."""
    said = ["I live in Lyon and I play the oboe."]
    taught = [QA("What do I play?", "oboe", said[0]),
              QA("Which city do I live in?", "Lyon", said[0])]
    likely = {"oboe": ["instrument", "language"], "Lyon": ["city", "town"]}
    extra, _ = derive.asked_by_kind(said, lambda answers: [likely[a] for a in answers], taught)
    questions = {qa.question: qa.answer for qa in extra}

    assert {"Which instrument do I play?", "What instrument do I play?",
            "Which language do I play?", "What language do I play?"} <= set(questions)
    assert questions["What city do I live in?"] == "Lyon"
    assert "Which city do I live in?" not in questions  # trained already
    assert derive.asked_by_kind(said, lambda answers: [likely[a] for a in answers],
                                taught[:1])[0] == [qa for qa in extra if qa.answer == "oboe"]


def test_a_kind_phrasing_asked_of_a_neighbouring_kind_is_fitted_silent():
    """Beside "What instrument do I play?" the detector is shown "What tool do I play?": a
    neighbour of the kind, but neither the answer's other likely kind nor a word the user
    said, nor a trained question."""
    said = ["I play the oboe and I fix bikes."]
    taught = [QA("What do I play?", "oboe", said[0]), QA("Which tool do I play?", "oboe", said[0])]
    near = {"instrument": ["tool", "language", "bike", "weapon"], "language": ["dialect"]}
    _, unlike = derive.asked_by_kind(said, lambda answers: [["instrument", "language"]],
                                     taught, near.__getitem__, {"bike"})
    assert set(unlike) == {"Which weapon do I play?", "What weapon do I play?",
                           "What tool do I play?", "Which dialect do I play?",
                           "What dialect do I play?"}
    assert derive.asked_by_kind(said, lambda answers: [["instrument"]], taught)[1] == []


def test_a_neighbouring_word_the_model_takes_for_the_answer_s_kind_is_no_contrast():
    """"What music does my daughter play?" asks of the bassoon too: a neighbour of its kind
    "song" that the model ``fits`` to the answer stays unasked."""
    said = ["My daughter plays the bassoon."]
    taught = [QA("What does my daughter play?", "bassoon", said[0])]
    near = {"instrument": ["tool"], "song": ["music", "concert"]}
    fitting = {"bassoon": {"music"}}
    _, unlike = derive.asked_by_kind(
        said, lambda answers: [["instrument", "song"]], taught, near.__getitem__, set(),
        lambda answer, words: [word in fitting[answer] for word in words])
    assert set(unlike) == {"Which tool does my daughter play?", "What tool does my daughter play?",
                           "Which concert does my daughter play?",
                           "What concert does my daughter play?"}


def test_an_identity_is_asked_as_what_the_subject_has_but_never_trained():
    """"What is my sister's {kind}?": the kind the model is surest of for a photographer is
    "person", so the question only joins the detector's phrasings."""
    said = ["My sister is a photographer."]
    taught = derive.candidates(said, lambda answers: ["person"] * len(answers))
    assert not any("'s" in qa.question for qa in taught)
    extra, _ = derive.asked_by_kind(said, lambda answers: [["job"]] * len(answers), taught)
    assert [qa.question for qa in extra] == ["What is my sister's job?"]
    mine, _ = derive.asked_by_kind(["I was a pilot."], lambda answers: [["job"]] * len(answers),
                                derive.candidates(["I was a pilot."]))
    assert [qa.question for qa in mine] == ["What was my job?"]


def test_an_activity_done_in_a_role_is_asked_and_the_role_alone_is_not_an_answer():
    said = asked("My aunt knits wool socks as a side business.")
    assert said["What does my aunt do as a side business?"] == "knits wool socks"
    assert said["What does my aunt knit?"] == "wool socks"
    assert "business" not in said.values() and "side business" not in said.values()
    assert asked("We baked bread as a treat.")["What did we do as a treat?"] == "baked bread"
    # without a direct object the role is what the subject is: asked as an answer, no
    # activity; nor where the verb's "as" says what its object is, or no noun follows it
    for said, role in [("I work as a ferry pilot.", "ferry pilot"),
                       ("I work at the port as a ferry pilot.", "ferry pilot"),
                       ("I treat my bike as a toy.", "toy")]:
        assert role in asked(said).values()
        assert not any(q.startswith(("What do I do", "What did I do")) for q in asked(said))
    assert not any(q.startswith("What do I do") for q in asked("I bake bread as well as cakes."))


def test_whose_a_thing_is_is_asked_whose_and_an_ordinal_before_a_noun_is_no_date():
    said = asked("We are driving to my brother's 40th birthday party.")
    assert said["Whose 40th birthday party are we driving to?"] == "brother"
    assert said["What are we driving to?"] == "40th birthday party"
    assert "40th" not in said.values() and "brother's" not in said.values()
    assert asked("I fixed Noor's old bike.")["Whose old bike did I fix?"] == "Noor"
    assert asked("I am selling my late husband's car.")["What am I selling?"] == "car"
    assert not any(q.startswith("Whose") for q in asked("I visited Noor's in Oslo."))
    # a time is no owner; of a chain, no one part
    for said in ["I missed last week's class.", "I shop at Sainsbury's on Mondays.",
                 "I went to my friend's sister's wedding."]:
        assert not any(q.startswith("Whose") for q in asked(said)), said
    assert asked("I work on the 5th floor.")["What do I work on?"] == "5th floor"
    assert asked("My exam is on the 3rd.")["When is my exam?"] == "3rd"


def test_a_passive_s_agent_is_asked_as_the_doer():
    said = asked("My kayak was designed by Anders Holm in Bergen.")
    assert said["Who designed my kayak in Bergen?"] == "Anders Holm"
    assert said["Who designed my kayak?"] == "Anders Holm"
    assert asked("The choir is led by my cousin Ada.")["Who leads the choir?"] == "Ada"
    assert asked("I was raised by Tove.")["Who raised me?"] == "Tove"
    assert asked("My bike was fixed by Tom the plumber.")["Who fixed my bike?"] == "Tom"
    assert "Who fixed my bike the plumber?" not in asked("My bike was fixed by Tom the plumber.")
    # a place or a time after the agent's relation is not the agent; no participle, a
    # particle, an agent of several or a deadline: nothing asked as done
    assert not any(v == "Bergen" and q.startswith("Who ")
                   for q, v in asked("The dog was adopted by my parents in Bergen.").items())
    for said in ["My flat is near Tove's bakery.", "I am known in Bergen.",
                 "The kids were looked after by Grandma.",
                 "My flat was renovated by Oskar and Lena.", "The report was finished by Friday."]:
        assert not any(q.startswith(("Who looked", "Who renovated", "Who finished", "Who knows"))
                       for q in asked(said)), said


def test_a_where_question_keeps_the_infinitive_it_needs():
    questions = set(asked("My sister wants to shoot the cherry blossoms in Kyoto."))
    assert "Where does my sister want to shoot the cherry blossoms?" in questions
    assert "Where does my sister want?" not in questions


def test_a_kind_question_keeps_its_preposition_once():
    pairs = derive.candidates(["We're flying from Oporto."],
                              lambda answers: ["city"] * len(answers))
    assert "Which city are we flying from?" in {qa.question for qa in pairs}
    assert not any("from from" in qa.question for qa in pairs)


@pytest.mark.parametrize("question, answer, statement, kept", [
    ("What do I play?", "oboe", "I play the oboe.", True),
    ("What is my dog called?", "Rex", "I play the oboe.", False),  # not said
    ("What do I play, the oboe?", "oboe", "I play the oboe.", False),  # given away
    ("Where do I live?", "Lyon", "I no longer live in Lyon.", False),  # negated
    ("Who is it?", "it", "It is mine.", False),  # a pronoun is no answer
    ("Who teaches me?", "Dr Ola Berg", "My teacher is Dr. Ola Berg.", True),
    ("Whose car did I sell?", "dad", "I sold my dad's car.", True),  # said as whose
    ("Who sold a car?", "dad", "I sold my dad's car.", False),  # no "whose": the dad is not
])
def test_a_pair_is_grounded_in_its_statement(question, answer, statement, kept):
    assert derive.grounded(QA(question, answer, statement)) is kept


def test_the_check_keeps_the_answer_the_model_prefers_reading_the_statement():
    said = "I play the oboe in Lyon."
    pairs = [QA("What do I play?", "oboe", said), QA("What do I play?", "Lyon", said),
             QA("Where do I play?", "Lyon", said), QA("Who am I?", "Tove", "I'm Tove.")]

    def prefers(items):  # the "model": answers where for "Where", what otherwise
        return [{answers.index("Lyon" if question.startswith("Where") else "oboe")}
                for _, question, answers in items]

    assert derive.checked(pairs, prefers) == [pairs[0], pairs[2], pairs[3]]


def test_the_check_weighs_a_pair_only_against_its_own_clause_s_answers():
    """A name elsewhere in the sentence is no rival: the model copies names from anywhere
    in its context, and the clause about the foghorn would lose every time."""
    pairs = derive.candidates(["My cat is called Mosel and she is afraid of the foghorn."])

    def prefers(items):  # the "model": the first capitalised answer it is offered, if any
        return [{next((i for i, a in enumerate(answers) if a[:1].isupper()), 0)}
                for _, _, answers in items]

    kept = {(qa.question, qa.answer) for qa in derive.checked(pairs, prefers)}
    assert ("What is my cat afraid of?", "foghorn") in kept
    assert ("What is my cat called?", "Mosel") in kept


def test_varied_keeps_the_least_alike_phrasings_of_each_answer():
    said = "I play the oboe."
    pairs = [QA(q, "oboe", said) for q in ("What do I play?", "What do I play now?",
                                             "Which instrument is mine?")]
    kept = [qa.question for qa in derive.varied(pairs, 2)]
    assert kept == ["What do I play?", "Which instrument is mine?"]
    assert derive.varied(pairs, 5) == pairs


def test_a_contrast_asks_the_same_question_about_each_near_thing_the_user_did_not_mention():
    qa = QA("What are my cats called?", "Pixel and Mo", "My cats are called Pixel and Mo.")

    def neighbours(word):  # the "model": what it places near each noun
        return {"cats": ["dogs", "kitten", "horse"]}.get(word, [])

    said = text.content_lemmas("My cats are called Pixel and Mo. I also have a kitten.")
    assert derive.contrasts(qa, neighbours, said) == ["What are my dogs called?",
                                                      "What are my horses called?"]
    assert derive.contrasts(QA("Where do I live?", "Leeds", "I live in Leeds."),
                            lambda word: ["stay"], set()) == []  # only nouns are swapped


def test_a_verb_after_a_question_s_subject_is_never_swapped_as_a_noun():
    """Out of context "pick" is a noun; after "did my son Mateo" it is the verb, and its
    neighbours ("choose") ask the same question, so it is no contrast."""
    qa = QA("What did my son Mateo pick?", "tank", "My son Mateo picked the tank.")

    def neighbours(word):
        return {"son": ["daughter"], "pick": ["choose"]}.get(word, [])

    assert derive.contrasts(qa, neighbours, set()) == ["What did my daughter Mateo pick?"]
    assert text.tags(text.words("When does my book club meet?"))[-1] == "VERB"
    assert text.tags(text.words("How many rotors does my drone have?"))[-2] == "NOUN"


def test_a_contrast_keeps_the_word_s_capitals():
    qa = QA("Cat food is what?", "fish", "Cat food is fish.")
    assert derive.contrasts(qa, lambda word: ["dog"] if word == "Cat" else [], set()) == [
        "Dog food is what?"]


def test_a_question_is_fronted_when_it_opens_with_its_question_word():
    said = asked("My dog Rusty is scared of thunder.")
    fronted = [q for q in said if text.fronted(q)]
    in_place = [q for q in said if not text.fronted(q)]
    assert fronted and in_place  # each answer is asked both ways
    assert all(q.split()[0].lower() in {"what", "who", "which", "how", "where", "when"}
               for q in fronted)
    assert all(q.rstrip("?").split()[-1].lower() in {"what", "who"} for q in in_place)
    assert text.fronted("How many hives do I keep?") and not text.fronted("I keep how many?")
    assert not text.fronted("")
