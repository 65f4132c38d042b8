"""`engram bench generate` prints the contract's JSON keys with sane values (no timing asserts)."""

from __future__ import annotations

import json

from tests.test_cli import engram


def test_bench_generate_json_keys(tiny_model):
    out = engram("bench", "generate", "--model", str(tiny_model), "--json",
                 "--tokens", "16", "--repetitions", "2")
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    for key in ("tokens_per_s", "baseline_tokens_per_s", "ratio", "first_token_s"):
        assert key in result
    assert result["tokens_per_s"] > 0 and result["baseline_tokens_per_s"] > 0
    assert result["first_token_s"] > 0
