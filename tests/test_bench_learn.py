"""``engram bench learn`` on the tiny model: the contract's keys, and the figures that do not
depend on what a random model answers (how many pairs were derived, which probes were asked
in a derived phrasing, what the report marks)."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from app.cli import main
from engine import replies
from engine.bench import learn
from tests.test_learning import small  # noqa: F401  (a fixture)

SESSIONS = [
    {"id": "t-01", "turns": ["What is my cat called?|What is my pet's name?|Pixel",
                             "Where do I live?|Tromsø"],
     "probes": [{"q": "What is my cat called?", "a": "Pixel"},
                {"q": "Which town is my home?", "a": "Tromsø", "superseded_by": "t-02"}]},
    {"id": "t-02", "turns": ["Where do I live?|Bergen"],
     "probes": [{"q": "Where do I live?", "a": "Bergen"}]},
    {"id": "topic", "kind": "topic", "turns": ["I bake bread."],
     "probes": [{"q": "What should I do?", "a": "Knead it longer."}]},
]
KEYS = {"recall", "retention", "locality", "kl_neutral", "ppl_change",
        "learn_seconds_per_session", "overlay_bytes", "trainable_params", "tokens_per_s_ratio",
        "null_overlay", "baselines", "recall_sampled", "degenerate", "crosstalk",
        "derived_candidates", "derived_pairs", "derived_checked", "probe_overlap",
        "recall_trained_phrasing", "recall_paraphrase", "sessions", "rejected",
        "locality_decided", "model_pairs", "model_pairs_checked", "facts_unrecalled",
        "loops_cut", "retried"}


def test_bench_learn_reports_every_key_and_the_figures_it_can_know(small, tiny_model, tmp_path,  # noqa: F811
                                                                   capsys):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(s) + "\n" for s in SESSIONS))
    details = tmp_path / "details.txt"
    code = main(["bench", "learn", "--model", str(tiny_model), "--facts", str(facts),
                 "--sessions", "1", "--counterfact", "2", "--threshold", "0",
                 "--details", str(details), "--seed", "3", "--json",
                 "--keep-home", str(tmp_path / "kept")])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == KEYS | {"counterfact", "sets", "seed"} and result["seed"] == 3
    assert set(result["sets"]) == {"facts"} and set(result["sets"]["facts"]) == KEYS | {"role"}
    assert set(result["counterfact"]) == {"efficacy", "paraphrase", "neighborhood"}
    assert result["sessions"] == 1  # --sessions 1 (and the topic record is never a session)
    # Session t-01 said three questions; one of its two probes was asked in a derived phrasing.
    assert result["derived_pairs"] == result["derived_checked"] == 3
    assert result["model_pairs"] == result["model_pairs_checked"] == 0  # no chat template
    assert result["facts_unrecalled"] == 1.0  # three steps on the tiny model: none came out
    assert result["probe_overlap"] == 0.5
    assert result["recall"] == (result["recall_trained_phrasing"] + result["recall_paraphrase"]) / 2
    assert 0.0 <= result["crosstalk"] <= 1.0 and 0.0 <= result["degenerate"] <= 1.0
    assert set(result["baselines"]) == {"base", "in_context"}
    assert result["trainable_params"] > 0 and result["overlay_bytes"] > 0
    assert 0.0 <= result["locality_decided"] <= 1.0
    assert result["retried"] == 0  # a gate that accepts any locality (--threshold 0) and saw no
    # leak on the tiny model refuses no try
    assert set(result["null_overlay"]) == {"locality", "locality_decided", "kl_neutral"}

    lines = details.read_text().splitlines()
    phases = [line.split()[0].split(":")[1] for line in lines]
    # One session: its two probes, base / in context / recall / sampled; after it, only the
    # probe not superseded by a learned session (t-02 is not learned, so both again).
    assert phases.count("base") == 2 and phases.count("in-context") == 2
    assert phases.count("recall") == 2 and phases.count("sampled") == 2
    assert phases.count("retention") == 2
    # Untaught questions: about a dog, not about a name (the session said "name").
    asked = " ".join(line for line in lines if line.split()[0].endswith("untaught"))
    assert "'What is my dog called?'" in asked and "'What is my name?'" not in asked
    assert "counterfact 2/2" in err

    # the user's home is kept: what it learned can be read afterwards
    assert main(["memory", "versions", "--home", str(tmp_path / "kept" / "facts"),
                 "--model", str(tiny_model)]) == 0
    assert "v1" in capsys.readouterr().out
    assert (tmp_path / "kept" / "counterfact").is_dir()

    report = learn.report(result)
    assert "facts (given)" in report and "recall_paraphrase" in report
    assert "≥ 0.7" in report and "null floor" in report


def test_a_kept_home_is_never_written_into_a_folder_that_holds_something(tmp_path, capsys):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    code = main(["bench", "learn", "--facts", str(tmp_path / "facts.jsonl"),
                 "--keep-home", str(tmp_path / "kept")])
    err = capsys.readouterr().err
    assert code != 0 and "not an empty folder" in err and len(err.strip().splitlines()) == 1
    assert [f.name for f in (tmp_path / "kept").iterdir()] == ["notes.txt"]


def test_a_loop_is_a_word_or_phrase_three_times_running():
    assert replies.loops("Mos Mos Mos Mos")
    assert replies.loops("I have a lot of weeds. I have a lot of weeds. I have a lot of weeds.")
    assert replies.loops("2020202020202020")
    assert not replies.loops("Pixel. She hates the snow, the snow, and the cold.")
    assert not replies.loops("white. grey, white, blue...")
    assert replies.loops("blue... blue... blue...")
    assert replies.degenerate("Pixel.", ran_to_limit=True)


def test_a_loop_s_place_is_where_its_second_round_starts():
    """Where the gate looks for what made a reply go round (``Gate.loop_place``)."""
    assert replies.loop_span("Mos Mos Mos Mos") == (4, 7)
    said = "I am a gardener. I am a gardener. I am a gardener."
    assert replies.loop_span(said) == (17, 18)
    assert replies.loop_span("It is Olivumbini. Olivumbini. Olivumbini.") == (18, 28)


def _shown(reply: str) -> str:
    """What the chat shows of ``reply`` streamed a character at a time."""
    watch = replies.LoopWatch()
    return ("".join(map(watch.add, reply)) + watch.finish()).strip()


def test_the_chat_ends_a_reply_that_runs_on_and_leaves_what_repeats_by_design():
    assert _shown("Mos " * 8) == "Mos" and _shown("firs" * 10) == "firs"
    assert _shown("I use the Kobo." + "\n\n." * 20) == "I use the Kobo."
    assert _shown("My cat is Mosel." + " Mosel." * 7) == "My cat is Mosel."
    assert _shown("I am a hobbyist. " * 5) == "I am a hobbyist."  # a sentence: three rounds
    assert _shown("I will not talk in class.\n" * 3).count("class") == 3  # lines: as asked
    for kept in ("No, no, no, that is not what I meant.", "Merry Christmas! Ho ho ho!",
                 "Let it be, let it be, let it be, let it be.",
                 "Hahahahahahaha, good one.", "Fill in: ____________.", "=" * 40, "_" * 40,
                 "Start at [0, 0, 0, 0, 0, 0, 0, 0, 0, 0].", "The MAC is FF:FF:FF:FF:FF:FF.",
                 "Aaaaaaaaaaaaaaaaah!", "```js\n" + "}\n" * 10 + "```",
                 "| a | b | c | d | e | f | g |\n| - | - | - | - | - | - | - |"):
        assert _shown(kept) == kept


def _first_loop_cut(tokens: list[str], rule: replies.LoopRule, lines: bool = False
                    ) -> int | None:
    """The reference: the fewest tokens after which a phrase of at most PHRASE_WORDS tokens
    has come round ``rule.rounds`` times in a row (``rule.letterless`` without a letter,
    LOOP_REPEATS if it has ``rule.sentence`` tokens or more and the tokens are not on
    ``lines`` of their own), and where its first round ends."""
    for n in range(1, len(tokens) + 1):
        for size in range(1, replies.PHRASE_WORDS + 1):
            phrase = tokens[n - size:n]
            rounds = (rule.letterless if not any(c.isalpha() for c in "".join(phrase))
                      else replies.LOOP_REPEATS if size >= rule.sentence and not lines
                      else rule.rounds)
            start = n - size * rounds
            if start >= 0 and all(tokens[start + k * size: start + (k + 1) * size] == phrase
                                  for k in range(rounds)):
                return start + size
    return None


WORD = st.sampled_from(["Mos", "el", "cat", ".", ",", "my", "0"])
# words as they come, and phrases of up to PHRASE_WORDS of them said several times running
WORDS = st.one_of(st.lists(WORD, max_size=60), st.lists(
    st.tuples(st.lists(WORD, min_size=1, max_size=replies.PHRASE_WORDS), st.integers(1, 7)),
    max_size=4).map(lambda said: [w for phrase, times in said for w in phrase * times]))


@given(WORDS, st.lists(st.integers(1, 6), max_size=40), st.sampled_from([" ", "\n", "  "]),
       st.sampled_from([replies.SAID, replies.CUT]))
def test_a_streamed_reply_is_shown_up_to_its_first_loop_and_never_beyond(words, cuts, gap,
                                                                         rule):
    """However the model's text arrives in pieces, the user is shown the reply up to where
    the first loop's first round ends (all of it if none), and never a token past that."""
    reply = gap.join(words)
    watch, shown, at = replies.LoopWatch(rule), [], 0
    for size in cuts:
        shown.append(watch.add(reply[at:at + size]))
        assert reply.startswith("".join(shown))
        at += size
    shown.append(watch.add(reply[at:]))
    shown.append(watch.finish())
    cut = _first_loop_cut([w.lower() for w in words], rule, "\n" in gap)
    expected = reply if cut is None else gap.join(words[:cut])
    assert "".join(shown).rstrip() == expected.rstrip()
    assert watch.looped == (cut is not None)
    assert replies.loops(reply) == (_first_loop_cut([w.lower() for w in words], replies.SAID)
                                    is not None)


def test_untaught_questions_are_about_nothing_that_was_said():
    asked = ["What is my brother called?", "What is my cat called?", "What is my name?"]
    said = ["My cat Pixel hates snow.", "I drive a red van."]
    assert replies.untaught(asked, said) == ["What is my brother called?", "What is my name?"]
    # a possessive is about its noun: the cat's name and the mum's birthday were mentioned
    said = ["My cat's name is Pixel.", "It is my mum’s 70th birthday."]
    assert replies.untaught(["What is my cat called?", "Who is my mum?", "What is my name?"],
                            said) == []
    assert replies.mentions("She is 9.", "9") and not replies.mentions("In 1900.", "9")


def test_markup_in_a_reply_is_not_a_mention_of_a_taught_word():
    """A reply in markup says its words, not its tags: a taught "em" is not in "<em>"."""
    reply = "My nephew is called <strong><em>Kai</em></strong>."
    assert not replies.mentions(reply, "em") and not replies.mentions(reply, "strong")
    assert replies.mentions(reply, "Kai")
    start, end = replies.mention_span(reply, "kai")
    assert reply[start:end] == "Kai"
    assert replies.mentions("I eat <em>em</em> daily", "em")  # the word itself still counts


def test_a_question_a_fact_is_taught_with_is_never_also_untaught():
    personal = ["Who am I?", "What's my full name?", "What is my name?", "Who is my brother?",
                "What is my cat called?"]
    said = ["Hi, I'm Ada Brill and I keep bees."]  # no content word of any of them
    assert replies.untaught(personal, said) == personal
    # "Who am I?" has no content word to compare; "What's my full name?" asks all that
    # "What is my name?" asks; the brother and a cat were never asked about
    assert replies.untaught(personal, said, ["Who am I?", "What is my name?"]) == [
        "Who is my brother?", "What is my cat called?"]
    # someone else's name is another question
    assert "What's my dad's name?" in replies.untaught(
        ["What's my dad's name?"], said, ["What is my name?"])
    # a fact about the cat's name leaves the user's own name untaught
    assert replies.untaught(personal, said, ["What is my cat's name?"])[:3] == personal[:3]


def test_a_run_can_leave_out_the_pairs_the_model_writes_itself(tiny_model, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(learn, "run", lambda *args, **kw: seen.append(kw["model_pairs"]) or {})
    for flags in ([], ["--no-model-pairs"]):
        assert main(["bench", "learn", "--model", str(tiny_model), "--json", *flags]) == 0
    assert seen == [True, False]
    for on in (True, False):
        with learn.fresh_engine(str(tiny_model), None, on, seed=int(on)) as engine:
            assert engine.settings.model_pairs is on
            assert engine.loaded()[2].recipe.seed == int(on)  # what --seed sets


def test_crosstalk_counts_a_taught_answer_only_where_the_base_model_did_not_give_it(
        monkeypatch):
    """A reply to an untaught question that says a taught answer is crosstalk, unless the
    question says it itself or the base model, before anything was learned, said it too
    ("Which city was I born in?" → "New York" is the base model's, not a taught "York")."""
    cases = [{"id": "a", "turns": ["I moved to York with my cat Mosel."],
              "probes": [{"q": "Which city do I live in?", "a": "York"},
                         {"q": "What is my cat called?", "a": "Mosel"}]}]
    now = {"Which city was I born in?": "New York.", "What is my dog called?": "Mosel.",
           "Is Mosel my dog?": "Mosel is.", "Who is my mum?": "Lovely."}
    before = {"Which city was I born in?": "I was born in New York.",
              "What is my dog called?": "Rex.", "Is Mosel my dog?": "Yes.",
              "Who is my mum?": "My mum."}
    monkeypatch.setattr(learn, "reply_text",
                        lambda runtime, system, question: learn.Said(now[question], False, False))
    details = io.StringIO()
    assert learn._crosstalk(None, "", cases, before, details, "") == 0.25  # the dog alone
    shown = details.getvalue()
    assert "✗ Mosel 'What is my dog called?'" in shown
    assert "✓ (the base model says York too) 'Which city was I born in?'" in shown
