"""``engram bench parity``: does the torch twin compute what llama.cpp serves?

The learner trains the twin (the GGUF's weights dequantised, in float32) and the app serves
llama.cpp with the overlay as a GGUF LoRA, so the two must agree: on the base weights, and
with the profile's active memory applied to both (issue 4: next-token top-1 agreement
≥ 99 %, and the largest logit difference). Text: the benchmark's generic paragraphs and the
learner's anchor prose, tokenised by llama.cpp. Agreement is also given where llama.cpp's own
top two tokens are at least ``NEAR_TIE`` logits apart: llama.cpp computes in lower precision
(8-bit matmul inputs for quantized weights, half-precision tables and caches), which moves
the built-in model's logits by ~0.15 RMS, at the first token too, so near ties go either way.
"""

from __future__ import annotations

import numpy as np

from engine.engine import Engine
from engine.learning.anchors import twin_for
from engine.learning.texts import anchor_prose, generic_text
from engine.scoring import Scorer

NEAR_TIE = 0.5


def run(engine: Engine) -> dict:
    runtime = engine.load()
    texts = [runtime.tokenize(p) for p in generic_text() + anchor_prose()]
    twin = twin_for(runtime)
    scorer = Scorer(runtime.model.path, n_ctx=max(map(len, texts)) + 8)
    try:
        result = {"tokens": sum(map(len, texts)), "base": _compare(twin, scorer, texts),
                  "overlay": None}
        memory = engine.loaded()[1]
        version = memory.applied
        if version is not None:
            scorer.set_overlay(*memory.lora(version))
            overlay = memory.current()
            assert overlay is not None  # a version is applied
            with twin.overlaid(overlay):
                result["overlay"] = _compare(twin, scorer, texts)
    finally:
        scorer.close()
    return result


def _compare(twin, scorer: Scorer, texts: list[list[int]]) -> dict:
    positions = disagreements = clear = clear_disagreements = 0
    largest = 0.0
    for tokens in texts:  # one at a time: a paragraph's full logits are ~100 MB
        served = scorer.logits(tokens)
        ours = twin.full_logits([tokens])[0].numpy()
        differ = served.argmax(-1) != ours.argmax(-1)
        top_two = np.partition(served, -2, axis=-1)[:, -2:]
        apart = top_two[:, 1] - top_two[:, 0] >= NEAR_TIE
        positions += len(tokens)
        disagreements += int(differ.sum())
        clear += int(apart.sum())
        clear_disagreements += int((differ & apart).sum())
        largest = max(largest, float(np.abs(served - ours).max()))
    return {"top1_agreement": round(1 - disagreements / positions, 4),
            "top1_agreement_clear": round(1 - clear_disagreements / max(clear, 1), 4),
            "clear_positions": clear, "max_logit_diff": round(largest, 4)}


def report(result: dict) -> str:
    lines = [f"{result['tokens']} tokens of generic text"]
    for name in ("base", "overlay"):
        numbers = result[name]
        if numbers is None:
            lines.append(f"{name:<8} no memory applied")
            continue
        met = "met" if numbers["top1_agreement"] >= 0.99 else "MISSED"
        lines.append(f"{name:<8} top-1 agreement {numbers['top1_agreement']:.4f} "
                     f"(target ≥ 0.99 {met}), "
                     f"{numbers['top1_agreement_clear']:.4f} on the {numbers['clear_positions']} "
                     f"positions whose top two are ≥ {NEAR_TIE:g} apart · "
                     f"max logit diff {numbers['max_logit_diff']:.4f}")
    return "\n".join(lines)
