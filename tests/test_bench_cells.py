"""``engram bench cells`` on the tiny model: the contract's keys and the report (no quality
asserts: the model is random)."""

from __future__ import annotations

import json

from app.cli import main
from engine.bench import cells
from engine.cell_training import GateRecipe
from tests.tiny_gguf import N_LAYER

KEYS = {"gap_recovered", "gap_recovered_topic", "nll_full", "nll_truncated", "nll_cells",
        "ppl_change_neutral", "tokens_per_s_ratio", "resume_speedup", "resume_identical"}


def _files(tmp_path):
    facts, topics = tmp_path / "facts.jsonl", tmp_path / "topics.jsonl"
    facts.write_text(json.dumps({"id": "f", "turns": ["My cat is called Pixel."],
                                 "probes": [{"q": "What is my cat called?", "a": "Pixel"}]}) + "\n")
    topics.write_text(json.dumps({"id": "t", "turns": ["I bake bread at home."],
                                  "probes": [{"q": "Any tips?", "a": "Knead the dough."}]}) + "\n")
    return facts, topics


def test_bench_cells_has_the_contract_keys(tiny_model, tmp_path):
    facts, topics = _files(tmp_path)
    result = cells.run(str(tiny_model), facts, topics, train=facts, recipe=GateRecipe(steps=2),
                       resume_tokens=100, repetitions=1)
    assert KEYS <= set(result)
    assert result["cases"] == {"facts": 1, "topic": 1} and result["train_cases"] == 1
    assert len(result["gates"]) == N_LAYER and set(result["gate_open"]) == {
        "facts", "topic", "neutral", "generic"}
    assert {"gap_recovered", "ppl_change_neutral"} <= set(result["ungated"])
    assert result["resume_identical"] is True and result["resume_speedup"] > 0
    assert result["tokens_per_s_ratio"] > 0
    assert "gap recovered" in cells.report(result)


def test_cli_prints_the_json(tiny_model, tmp_path, capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr(cells, "run", lambda *args, **kw: seen.update(args=args, kw=kw) or
                        dict.fromkeys(KEYS, 1.0))
    facts, topics = _files(tmp_path)
    code = main(["bench", "cells", "--model", str(tiny_model), "--facts", str(facts),
                 "--topics", str(topics), "--resume-tokens", "100", "--json"])
    assert code == 0 and set(json.loads(capsys.readouterr().out)) == KEYS
    assert seen == {"args": (str(tiny_model), facts, topics, None), "kw": {"resume_tokens": 100}}


def test_missing_facts_file_is_a_clear_error(tiny_model, tmp_path, capsys):
    code = main(["bench", "cells", "--model", str(tiny_model), "--facts",
                 str(tmp_path / "nope.jsonl"), "--json"])
    assert code == 2 and "cannot read" in capsys.readouterr().err
