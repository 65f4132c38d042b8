"""The twin and the learner's anchors, built once per process (and the anchors once per
machine: a cache file), and the twin computing with an overlay."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.learning.progress import Phase, Progress, quiet
from engine.learning.texts import (
    SMALL_TALK,
    anchor_prose,
    dialogue,
    unrelated_questions,
    world_facts,
)
from engine.runtime import Runtime
from store import paths
from store.files import SEAL_FILE, Outdated, quarantine

if TYPE_CHECKING:  # torch is imported only when something is learned
    from engine.learner import Anchors, Recipe
    from engine.twin import Twin

_cache_lock = threading.Lock()
training = threading.Lock()  # the twin is shared by the process: one training at a time
_twins: dict[str, Twin] = {}
_anchors: dict[tuple, Anchors] = {}



def twin_for(runtime: Runtime, progress: Progress = quiet) -> Twin:
    """The training model for the chat's model, loaded once per process (its dequantised
    weights are cached once per machine: the first load says so, it takes a minute)."""
    from engine.twin import Twin

    with _cache_lock:
        if runtime.model.sha256 not in _twins:
            first = not (Twin.cache_dir(runtime.model) / SEAL_FILE).exists()
            phase = Phase(progress, "dequantising the model" if first
                          else "loading the training model", 0.0, 1.0)
            phase(0.0, "dequantising the model for training (first time on this machine, "
                  "about a minute)" if first else "loading the training model")
            _twins[runtime.model.sha256] = Twin.load(runtime.model)
            phase(1.0, "training model ready")
        return _twins[runtime.model.sha256]


def anchors_for(twin: Twin, runtime: Runtime, system: str | None,
                recipe: Recipe, progress: Progress = quiet) -> Anchors:
    """Generic text and unrelated Q/A dialogues as the edited layers see them (the even half
    of world-facts and other questions; the gate measures on the odd half)."""
    from engine import learner

    layers = recipe.layers_for(twin.n_layer)
    key = (twin.sha256, system, layers, recipe.key_context)
    with _cache_lock:
        if key not in _anchors:
            qa = [dialogue(runtime, system, q, f" {a}") for q, a in SMALL_TALK] + [
                dialogue(runtime, system, f["question"], f" {f['answer']}.")
                for f in world_facts()[0::2] + unrelated_questions()]
            prose = [runtime.tokenize(p) for p in anchor_prose()]
            texts = [p + a for p, a in qa] + prose
            starts = [len(p) for p, _ in qa] + [None] * len(prose)
            # Building them runs ~2,000 dialogues (minutes on CPU): once per machine, not per
            # process.
            digest = hashlib.sha256(json.dumps(
                [twin.sha256, texts, starts, layers, recipe.key_context]
            ).encode()).hexdigest()
            path = paths.anchors_cache() / f"{digest[:32]}.safetensors"
            anchors = cached_anchors(path, twin.device, layers)
            if anchors is None:
                phase = Phase(progress, "building the anchors", 0.0, 1.0)
                started = time.monotonic()

                def built(fraction: float) -> None:
                    left = (time.monotonic() - started) * (1 - fraction) / fraction \
                        if fraction > 0.02 else None
                    phase(fraction, "building the anchors (first time on this machine"
                          + (f", about {left / 60:.0f} min left)" if left else ")"))

                anchors = learner.anchors_for(twin, texts, layers,
                                              answer_starts=starts,
                                              question_tail=recipe.key_context,
                                              progress=built)
                anchors.save(path)
            _anchors[key] = anchors
        return _anchors[key]


def cached_anchors(path: Path, device, layers: tuple[int, ...]) -> Anchors | None:
    """The anchors cached at ``path``; None when there are none or the file is damaged (a
    cache: it is moved aside, never deleted, and rebuilt, never trusted half-read) or was
    written before caches carried checksums (removed and rebuilt)."""
    from safetensors import SafetensorError

    from engine import learner

    try:
        return learner.Anchors.load(path, device, layers)
    except OSError as e:  # none, or unreadable: not damaged, so not moved aside
        if not isinstance(e, FileNotFoundError):
            logging.getLogger(__name__).warning("rebuilding the anchor cache: %s", e)
        return None
    except Outdated:
        path.unlink()
        return None
    except (ValueError, SafetensorError) as e:
        moved = quarantine(path)
        logging.getLogger(__name__).warning(
            "the anchor cache was set aside to %s and is rebuilt: %s", moved, e)
        return None
