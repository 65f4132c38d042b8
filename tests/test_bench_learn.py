"""``engram bench learn`` on the tiny model: the contract's keys and the report (no quality
asserts: the model is random)."""

from __future__ import annotations

import json

from app.cli import main
from engine.bench import learn
from tests.test_learning import small  # noqa: F401  (a fixture)

SESSIONS = [
    {"id": "t-01", "turns": ["My cat is called Pixel.", "I live in Tromsø."],
     "probes": [{"q": "What is my cat called?", "a": "Pixel"},
                {"q": "Where do I live?", "a": "Tromsø", "superseded_by": "t-02"}]},
    {"id": "t-02", "turns": ["I moved to Bergen."], "probes": [{"q": "Where do I live?", "a": "Bergen"}]},
]


def test_bench_learn_json_has_the_contract_keys(small, tiny_model, tmp_path, capsys):  # noqa: F811
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(s) + "\n" for s in SESSIONS))
    details = tmp_path / "details.txt"
    code = main(["bench", "learn", "--model", str(tiny_model), "--facts", str(facts),
                 "--sessions", "1", "--counterfact", "2", "--threshold", "0",
                 "--details", str(details), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"recall", "retention", "locality", "kl_neutral", "ppl_change",
                           "learn_seconds_per_session", "overlay_bytes", "trainable_params",
                           "tokens_per_s_ratio", "null_overlay", "counterfact", "baselines"}
    assert set(result["counterfact"]) == {"efficacy", "paraphrase", "neighborhood"}
    assert set(result["baselines"]) == {"base", "in_context"}
    for numbers in result["baselines"].values():
        assert set(numbers) == {"recall", "retention"}
    assert result["trainable_params"] > 0 and result["overlay_bytes"] > 0
    assert result["learn_seconds_per_session"] > 0
    assert 0.0 <= result["locality"] <= 1.0 and result["tokens_per_s_ratio"] > 0
    assert set(result["null_overlay"]) == {"locality", "kl_neutral"}
    assert 0.0 <= result["null_overlay"]["locality"] <= 1.0

    lines = details.read_text().splitlines()
    phases = [line.split()[0] for line in lines]
    # One session: its two probes, base / in context / recall; after it, only the probe not
    # superseded by a learned session (t-02 is not learned, so both are asked again).
    assert phases.count("base") == 2 and phases.count("in-context") == 2
    assert phases.count("recall") == 2 and phases.count("retention") == 2
    assert "counterfact 2/2" in err

    report = learn.report(result)
    assert "recall" in report and "target ≥ 0.9" in report and "baseline in_context" in report
