"""``engram bench locomo`` on the tiny model: a LoCoMo conversation is shared in the third
person, learned session by session, and only questions the learned sessions answer are
asked; LoCoMo's own scoring (normalisation, token F1 over Porter stems, contains)."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from engine.bench import locomo
from engine.errors import EngramError
from tests.test_learning import small  # noqa: F401  (a fixture)

CONVERSATION = {
    "conversation": {
        "speaker_a": "Jon", "speaker_b": "Gina",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Jon", "dia_id": "D1:1", "text": "What is my dog called?|Rex"},
            {"speaker": "Gina", "dia_id": "D1:2", "text": "Where do I dance?|Oslo"}],
        "session_2_date_time": "2:00 pm on 9 May, 2023",
        "session_2": [{"speaker": "Jon", "dia_id": "D2:1", "text": "What do I sell?|shoes"}],
    },
    "qa": [
        {"question": "What is Jon's dog called?", "answer": "Rex", "evidence": ["D1:1"],
         "category": 4},
        {"question": "What does Jon sell?", "answer": "shoes", "evidence": ["D2:1"],
         "category": 4},
        {"question": "Where do Jon and Gina live?", "answer": "Oslo",
         "evidence": ["D1:2", "D2:1"], "category": 4},
        {"question": "When did Jon get Rex?", "answer": "2020", "evidence": ["D1:1"],
         "category": 2},
    ],
}


def test_a_partial_run_asks_only_what_its_sessions_answer(small, tiny_model, tmp_path,  # noqa: F811
                                                          capsys):
    path = tmp_path / "conversation.json"
    path.write_text(json.dumps(CONVERSATION))
    details = tmp_path / "details.txt"
    code = main(["bench", "locomo", "--model", str(tiny_model), str(path), "--sessions", "1",
                 "--details", str(details), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [result] = json.loads(out)
    assert result["sessions"] == 1 and result["questions"] == 1
    assert "locomo session 1/1" in err and "locomo session 2" not in err
    asked = {line.split(" expected ")[0].split(maxsplit=2)[2] for line in
             details.read_text().splitlines()}
    assert asked == {"\"What is Jon's dog called?\""}  # by Engram, the base and retrieval

    code = main(["bench", "locomo", "--model", str(tiny_model), str(path), "--json",
                 "--questions", "0"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)[0]["sessions"] == 2


def test_a_question_is_answerable_when_every_turn_it_cites_was_learned():
    assert locomo.answerable({"evidence": ["D1:3", "D2:7"]}, [1, 2])
    assert not locomo.answerable({"evidence": ["D1:3", "D2:7"]}, [1])
    assert locomo.answerable({"evidence": ["D8:6; D9:17"]}, [8, 9, 10])  # as LoCoMo writes some
    assert not locomo.answerable({"evidence": []}, [1])


def test_a_turn_is_shared_in_the_third_person():
    assert locomo.third_person("I love my dog", "Jon", "Gina") == "Jon loves Jon's dog"
    assert locomo.third_person("I'm glad you came", "Jon", "Gina") == "Jon is glad Gina came"
    assert locomo.third_person("I went to your show", "Jon", "Gina") == "Jon went to Gina's show"


def test_answers_are_scored_as_locomo_scores_them():
    assert locomo.normalise("The Red, Bicycle!") == "red bicycle"
    assert locomo.f1("He was running in the park", "ran in park") == pytest.approx(
        2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))  # "in" and "park"; "running" ≠ "ran"
    assert locomo.f1("jumping", "jumps") == 1.0  # both stem to "jump"
    assert locomo.f1("nothing alike", "Oslo") == 0.0
    assert locomo.contains("She dances in Oslo, Norway.", "oslo")
    assert not locomo.contains("Osl", "Oslo")


def test_a_file_that_is_not_a_conversation_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"conversation": {"speaker_a": "Jon"}}))
    with pytest.raises(EngramError, match="is not a LoCoMo conversation file"):
        locomo.load(bad)
