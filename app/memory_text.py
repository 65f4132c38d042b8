"""What the memory holds and what a change did, in words: ``engram memory …`` prints them,
the TUI shows them, so the two always say the same thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.engine import Engine
from engine.learning import LearnResult, VersionDiff
from store.records import OverlayVersion
from store.store import StoreError

BAR_CELLS = 20
# a fact kept in a version that does not give it back when asked its own question
NOT_RECALLED = "not recalled yet: asked, the memory does not give it back"


def title(engine: Engine, session_id: int) -> str:
    try:
        return repr(engine.session(session_id).title)
    except StoreError:
        return "(deleted)"


def when(version: OverlayVersion) -> str:
    return version.created_at[:16].replace("T", " ")


def what(version: OverlayVersion) -> str:
    """What a version did, in a few words."""
    event = version.metrics.get("event")
    if event == "learn":
        return "learned " + ", ".join(f"s{sid}" for sid in version.learned)
    if event == "forget":
        return "forgot " + ", ".join(f"s{sid}" for sid in version.dropped)
    if event == "reset":
        return "reset (empty)"
    if event == "cells":
        return "learned the cells' read"
    if event == "import":
        return "imported " + (", ".join(f"s{sid}" for sid in version.learned)
                              or "(empty)")
    return "sessions " + (", ".join(f"s{sid}" for sid in version.sessions) or "none")


def locality(version: OverlayVersion) -> str:
    score = version.metrics.get("locality")
    return "" if score is None else locality_words(score, version.metrics.get("locality_decided"))


def locality_words(score: float, decided: float | None) -> str:
    return f"locality {score:.3f}" + ("" if decided is None else
                                      f", {decided:.3f} on decided answers")


def trimmed(question: str, answer: str, kept: bool = True) -> str:
    """An earlier session's leak that a later run stopped (``learning.trims``), in words, and
    whether the fact's own question still gets its answer without those neurons."""
    cost = "" if kept else f"; its own question no longer gets {answer!r} either"
    return (f"{question!r} no longer answered {answer!r}: the neurons that leaked it there "
            f"were taken out{cost}")


def gate(version: OverlayVersion) -> str:
    """The gate's verdict on a learned version ("" for forget, reset…): locality against
    its threshold, and what a user would have seen (leaks, loops)."""
    metrics = version.metrics
    if "locality" not in metrics:
        return ""
    measured = (f"{locality(version)} (threshold {metrics['threshold']:g}) · "
                f"KL on neutral prompts {metrics['kl_neutral']:.4f}")
    if version.status == "rejected":
        return f"rejected by the gate: {version.reason} · {measured}"
    trims = "".join(f" · s{sid}: {trimmed(*leak)}"
                    for sid, leaks in metrics.get("trimmed", {}).items() for leak in leaks)
    return f"accepted by the gate: {measured} · no leaks or loops{trims}"


def describe(engine: Engine, result: LearnResult) -> str:
    """One session's learning run: what was derived, and whether the gate let it in."""
    head = f"session {result.session_id} {title(engine, result.session_id)}"
    if result.version is None:
        return f"{head}: nothing to learn (no statement the model could ask about)"
    lines = [f"  {qa.question} → {qa.answer}" + ("" if result.recalled(qa) else
                                                  f"  ({NOT_RECALLED})") for qa in result.facts]
    lines += [f"  {qa.question} → {qa.answer}  (correction)" for qa in result.corrections]
    lines += [f"  {qa.question} → {qa.answer}  (set aside: it leaked into other questions, "
              "looped or changed an unrelated answer)" for qa in result.set_aside]
    lines += [f"  s{sid}: {trimmed(question, answer, kept)}"
              for sid, question, answer, kept in result.trimmed if result.accepted]
    score = result.locality
    measured = (f"  {locality_words(score.locality, score.decided)} "
                f"(threshold {result.threshold:g}) · KL on neutral prompts "
                f"{score.kl_neutral:.4f} · {result.seconds:.1f} s")
    if result.accepted:
        fixes = f" (+{len(result.corrections)} corrections)" if result.corrections else ""
        n, unrecalled = result.counted()
        missed = f", {unrecalled} not recalled yet" if unrecalled else ""
        status = (f"learned {n} fact{'s' * (n != 1)}{missed}{fixes} → "
                  f"v{result.version.id} (active)")
    else:
        active = engine.active_version()
        status = (f"NOT learned: {result.version.reason}; v{result.version.id} kept as "
                  f"rejected, {f'v{active.id}' if active else 'the base model'} stays active")
    return "\n".join([f"{head}: {status}", *lines, measured])


def diff_summary(engine: Engine, d: VersionDiff) -> list[str]:
    """A version against its parent: status, sessions learned or removed, the gate, size."""
    v, parent = d.version, d.parent
    lines = [f"v{v.id} ({v.status}, {when(v)}) vs "
             f"{f'v{parent.id} ({parent.status})' if parent else 'the base model'}"]
    if v.reason and not gate(v):
        lines.append(f"{v.status}: {v.reason}")
    for label, sessions in (("learned", d.added), ("removed", d.removed)):
        if sessions:
            names = ", ".join(f"s{sid} {title(engine, sid)}" for sid in sessions)
            lines.append(f"sessions {label}: {names}")
    if gate(v):
        lines.append(gate(v))
    lines.append(f"parameters touched: {d.params[1]:,} (parent {d.params[0]:,})")
    return lines


def layer_bars(d: VersionDiff) -> list[str]:
    """Per layer, the change's L2 norm in the parent and in the version, with a bar."""
    if not d.layers:
        return []
    top = max(max(pair) for pair in d.layers.values()) or 1.0
    return [f"layer {layer:>2}  {before:8.3f} → {after:8.3f}  "
            f"{'█' * round(BAR_CELLS * after / top)}"
            for layer, (before, after) in d.layers.items()]


def neuron_lines(neurons: dict, parent: dict, most: int = 3) -> list[str]:
    """Per layer and matrix (from ``Engine.memory_neurons`` of a version and of its parent):
    how many FFN neurons the version changes, how many of them its parent did not, and the
    most changed ones as #index and the L2 norm of their change.
    Like ``layer  8 down   16 (16 new)  #2020 0.33  #1512 0.31  #311 0.30``."""
    lines = []
    for (layer, matrix), (indices, norms) in sorted(neurons.items()):
        before = set(map(int, parent.get((layer, matrix), ((), ()))[0]))
        new = sum(int(i) not in before for i in indices)
        top = "  ".join(f"#{indices[i]} {norms[i]:.2f}" for i in np.argsort(-norms)[:most])
        lines.append(f"layer {layer:>2} {matrix.removeprefix('ffn_'):<4} {len(indices):>4} "
                     f"({new} new)  {top}")
    return lines


def rolled_back(version: OverlayVersion | None) -> str:
    if version is None:
        return "rolled back to the base model (no learned memory active)"
    return f"rolled back: v{version.id} is active ({what(version)})"


def forgot(session_id: int, version: OverlayVersion) -> str:
    return (f"forgot session {session_id}: v{version.id} is active without it "
            "(it is learned again only if it gets new messages)")


def was_reset(version: OverlayVersion) -> str:
    return (f"memory reset: v{version.id} is empty and active; the sessions so far will not be "
            "learned again. A rollback undoes this.")


def learning_state(engine: Engine) -> str:
    return (f"learning {'paused' if engine.settings.learning_paused else 'resumed'} for profile "
            f"{engine.profile.name}")


def exported(path: Path, fmt: str, version: OverlayVersion) -> str:
    """What ``Engine.export_memory`` wrote, and how to use it."""
    if fmt == "gguf":
        return (f"exported v{version.id} to {path} as a GGUF LoRA adapter for this base model: "
                f"llama.cpp --lora {path}, or ADAPTER {path} in an Ollama Modelfile")
    if fmt == "peft":
        return (f"exported v{version.id} to {path}/ as a PEFT LoRA adapter "
                "(adapter_model.safetensors, adapter_config.json)")
    return (f"exported v{version.id}, its sessions and their cells to {path}; "
            "`engram memory import` reads it")


def imported(version: OverlayVersion) -> str:
    """What ``Engine.import_memory`` added."""
    source = version.metrics["source"]
    added = ", ".join(f"s{sid}" for sid in source["sessions"].values()) or "none"
    replaces = (f"; it replaces v{version.parent_id}, a rollback goes back"
                if version.parent_id else "")
    return (f"imported {source['file']}: v{version.id} is active with "
            f"{len(version.learned)} learned sessions; sessions added: "
            f"{added}{replaces}")
