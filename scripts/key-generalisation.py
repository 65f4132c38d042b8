"""Where each fact's detector fires, without training: a fast look at how keys generalise.

Each session of FACTS (the `bench learn` format) is derived as the learner derives it, and
its detectors' keys are fitted (`learner.train._keyed_edit`, base weights, earlier sessions'
questions and untaught personal questions as negatives; no values are trained). Then each
probe's pre-activation at its fact's detectors is read at the question's last positions
(fires: > 0), and every other session's probe and the gate's untaught personal questions at
all of the session's detectors (false fires). A probe is "trained" when the learner derived
its question word for word, a "paraphrase" otherwise. Five minutes on one core for
natural-facts, against forty for `bench learn`.

    .venv/bin/python scripts/key-generalisation.py FACTS HOME [recipe_field=value …]

HOME is a scratch Engram home (the caches in ~/.cache/engram are shared); e.g. `hardest=256`.
"""

import json
import sys
import time
from dataclasses import replace

import torch
from torch.nn.utils.rnn import pad_sequence

from engine import derive, replies
from engine.bench.learn import _untaught
from engine.consistency import TwinKinds, twin_neighbours, twin_prefers
from engine.derive import QA
from engine.engine import Engine
from engine.learner import Example, Recipe, keys, train
from engine.learner.capture import ffn_inputs, passes
from engine.learning.anchors import anchors_for, twin_for
from engine.learning.service import around
from engine.learning.texts import (
    dialogue,
    end_of_turn,
    gate_questions,
    generic_text,
)

facts_file, home = sys.argv[1], sys.argv[2]
overrides = {k: type(getattr(Recipe(), k))(eval(v))
             for k, v in (arg.split("=", 1) for arg in sys.argv[3:])}
engine = Engine(home=home)
runtime, _, learning, _ = engine.loaded()
system = engine.settings.system_prompt
twin = twin_for(runtime)
recipe = replace(learning.recipe, **overrides)
anchors = anchors_for(twin, runtime, system, recipe)
kinds, prefers = TwinKinds(twin, runtime), twin_prefers(twin, runtime, system)
kind_of = kinds.sure
neighbours = twin_neighbours(twin, runtime, recipe.contrasts)
end = end_of_turn(runtime)
layers = recipe.layers_for(twin.n_layer)
tail = recipe.key_context
cases = [json.loads(line) for line in open(facts_file, encoding="utf-8")]
all_probes = [(c["id"], p["q"]) for c in cases for p in c["probes"]]
untaught_all = gate_questions()
bench_untaught = _untaught(cases)  # what `bench learn` counts crosstalk on
fitted: list[torch.Tensor] = []
fit = keys.fit
keys.fit = lambda *a, **k: fitted.append(fit(*a, **k)) or fitted[-1]


def examples(pairs: list[QA]) -> list[Example]:
    return [Example(*dialogue(runtime, system, qa.question, f" {qa.answer}."), end)
            for qa in pairs]


@torch.no_grad()
def asked_rows(questions: list[str]) -> dict[int, list[torch.Tensor]]:
    prompts = [dialogue(runtime, system, q, "")[0] for q in questions]
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for _, chunk, seen in passes(twin, prompts, layers):
        for i, tokens in enumerate(chunk):
            for l in layers:
                out[l].append(seen[l][i, len(tokens) - 1 - tail: len(tokens)].clone())
    return out


@torch.no_grad()
def prose_rows() -> dict[int, torch.Tensor]:
    """Every position of the prose `bench learn` measures perplexity on, per layer."""
    texts = [runtime.tokenize(p) for p in generic_text()]
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for _, chunk, seen in passes(twin, texts, layers):
        for i, tokens in enumerate(chunk):
            for l in layers:
                out[l].append(seen[l][i, :len(tokens)].clone())
    return {l: torch.cat(rows) for l, rows in out.items()}


prose = prose_rows()


def strongest(rows, detectors, i: int, which) -> float | None:
    """The highest pre-activation, at question ``i``'s rows, of the detectors ``which``
    accepts (by their fact)."""
    values = [float((rows[l][i] @ key).max()) for l, key, f in detectors if which(f)]
    return max(values) if values else None


own, false_probe, false_untaught, false_bench, earlier = [], [], [], [], []
prose_fires: list[float] = []  # per session: share of prose positions a detector fires at
started = time.time()
for case in cases:
    said = case["turns"]
    found = derive.checked(derive.candidates(said, kind_of), prefers)
    if not found:
        continue
    taught = derive.varied(found, recipe.phrasings)
    by_kind, untaught, unlike = around(said, taught, kinds, neighbours, recipe)
    print(f"  {case['id']} by kind: {[qa.question for qa in by_kind]}; "
          f"unlike: {[qa.question for qa in unlike]}")
    trained = examples(taught)
    prefix, rest = train._after_shared(twin, trained, tail)
    batch = twin.batch([e.tokens for e in rest], prefix)
    with torch.no_grad():
        h = pad_sequence(twin.entering([e.tokens for e in rest], min(layers), prefix),
                         batch_first=True)
        with ffn_inputs(twin, layers) as seen:
            twin.run(h, batch, min(layers))
        seen = dict(seen)
        held = train._asked(twin, examples(earlier + untaught), layers, tail, recipe.batch)
        contrasted = train._asked(twin, examples(unlike), layers, tail, recipe.batch)
        also_examples = examples(by_kind)
        also = {tuple(e.answer): train._asked(
            twin, [x for x in also_examples if x.answer == e.answer], layers, tail,
            recipe.batch) for e in rest}
    taught_facts = [tuple(e.answer) for e in rest]
    facts = sorted(set(taught_facts))
    k = keys.per_layer(len(facts), len(layers), recipe.neurons)
    detectors = []  # (layer, key, fact)
    for depth, layer in enumerate(layers):
        fitted.clear()
        train._keyed_edit(twin, layer, depth, k, rest, seen[layer], taught_facts, anchors,
                          torch.cat([anchors.answers[layer], held[layer]]), contrasted[layer],
                          {f: rows[layer] for f, rows in also.items()}, {}, recipe)
        detectors += [(layer, fitted[0][j], facts[f])
                      for j, f in enumerate(keys.keyed_facts(len(facts), depth, k))]
    answer_of = {tuple(e.answer): qa.answer for e, qa in zip(trained, taught, strict=True)}
    questions = ([p["q"] for p in case["probes"]]
                 + [q for cid, q in all_probes if cid != case["id"]] + untaught_all
                 + bench_untaught)
    rows = asked_rows(questions)

    for i, probe in enumerate(case["probes"]):
        score = strongest(rows, detectors, i,
                          lambda f, a=probe["a"], names=answer_of: replies.hit(names[f], a))
        if score is None:
            print(f"  {case['id']} {probe['q']!r}: not derived")
            continue
        word_for_word = any(qa.question.lower() == probe["q"].lower() for qa in taught
                            if replies.hit(qa.answer, probe["a"]))
        own.append((score, word_for_word))
        print(f"  {case['id']} {probe['q']!r} -> {probe['a']}: {score:+.1f} "
              f"{'trained' if word_for_word else 'paraphrase'}", flush=True)
    n_own, n_probes = len(case["probes"]), len(all_probes) - len(case["probes"])
    n_gate = len(untaught_all)
    for i in range(n_own, len(questions)):
        score = strongest(rows, detectors, i, lambda f: True)
        (false_probe if i < n_own + n_probes else false_untaught if i < n_own + n_probes + n_gate
         else false_bench).append(score)
        if i >= n_own + n_probes and score > 0:
            print(f"  false fire {case['id']} {questions[i]!r}: {score:+.1f}")
    fired = torch.zeros(len(prose[layers[0]]), dtype=torch.bool)
    for layer, key, _ in detectors:
        fired |= (prose[layer] @ key > 0).cpu()
    prose_fires.append(float(fired.float().mean()))
    print(f"  {case['id']} prose positions a detector fires at: {prose_fires[-1]:.4f}")
    earlier += taught


def share(values, above=0.0):
    return sum(v > above for v in values) / max(1, len(values))


paraphrases = [s for s, t in own if not t]
print(json.dumps({"recipe": overrides, "seconds": round(time.time() - started),
                  "fires": round(share([s for s, _ in own]), 3),
                  "fires_trained": round(share([s for s, t in own if t]), 3),
                  "fires_paraphrase": round(share(paraphrases), 3),
                  "fires_paraphrase_above_1": round(share(paraphrases, 1.0), 3),
                  "paraphrases": len(paraphrases),
                  "false_other_probes": round(share(false_probe), 3),
                  "false_untaught": round(share(false_untaught), 3),
                  "false_bench_untaught": round(share(false_bench), 3),
                  "prose_fires": round(sum(prose_fires) / max(1, len(prose_fires)), 4)}))
engine.close()
