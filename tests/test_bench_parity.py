"""`engram bench parity`: the twin and llama.cpp agree, on the base weights and with the memory."""

from __future__ import annotations

import json

import pytest

from engine.bench import parity
from tests.test_cli import engram
from tests.test_learning import engine, small  # noqa: F401  (fixtures)
from tests.tiny_gguf import ARCHITECTURES


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
def test_bench_parity_json_on_the_base_weights(tiny_model, tmp_path):
    out = engram("bench", "parity", "--model", str(tiny_model), "--home", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    print(result["base"])
    assert result["tokens"] > 1000 and result["overlay"] is None
    # The tiny model is float32: both engines compute the same function.
    assert result["base"]["top1_agreement"] >= 0.99
    assert result["base"]["max_logit_diff"] < 1e-2
    assert result["base"]["top1_agreement_clear"] == 1.0 and result["base"]["clear_positions"] > 0


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
def test_parity_holds_with_the_active_overlay(engine, make_overlay):  # noqa: F811
    overlay = make_overlay(engine.runtime.model.sha256, [(1, "ffn_down", 4, 1), (2, "ffn_up", 3, 1),
                                                          (2, "ffn_gate", 3, 1)])
    engine.memory.commit(overlay)
    result = parity.run(engine)
    print(result["overlay"])
    assert result["overlay"]["top1_agreement"] >= 0.99
    assert result["overlay"]["max_logit_diff"] < 1e-2
    assert "top-1 agreement" in parity.report(result)
