"""``engram memory …``: what the model learned, learning now, undoing it, export and import,
as plain text.

Results go to stdout; progress to stderr, so a script can keep the result and drop the bar.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

from app.memory_text import (
    NOT_RECALLED,
    describe,
    diff_summary,
    exported,
    forgot,
    imported,
    layer_bars,
    learning_state,
    locality,
    rolled_back,
    title,
    trimmed,
    was_reset,
    what,
    when,
)
from app.terminal import duration, inert
from engine import overlay as overlay_files
from engine.engine import Engine
from engine.errors import EngramError
from engine.learning import Step, VersionDiff
from store.records import OverlayVersion

BAR_WIDTH = 24
LINE_WIDTH = 120


class ProgressBar:
    """On a terminal, a bar for each phase of the job (dequantising the model, building the
    anchors, deriving, training, gate): a finished phase's bar stays, full, above the next;
    elsewhere one line per new message (not per training step)."""

    def __init__(self, stream: TextIO):
        self.stream, self.tty, self._said, self._phase = stream, stream.isatty(), "", ""
        self._last: Step | None = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.tty:
            if isinstance(message, Step):
                if self._last is not None and message.phase != self._phase:
                    self._draw(self._last.phase, 1.0, "", self._last)  # the finished phase
                    self.stream.write("\n")
                self._phase, self._last = message.phase, message
                left = f"about {duration(message.left_s)} left · " if message.left_s else ""
                self._draw(message.phase, message.done, left, message)
            else:
                self._draw("", fraction, "", message)
        elif (said := re.sub(r"[\d.]+", "", message)) != self._said:
            self._said = said
            self.stream.write(f"{fraction:4.0%} {message}\n")
        self.stream.flush()

    def _draw(self, phase: str, done: float, left: str, message: str) -> None:
        filled = int(done * BAR_WIDTH)
        line = (f"{phase:<26} " if phase else "") + (
            f"[{'█' * filled}{' ' * (BAR_WIDTH - filled)}] {done:4.0%} {left}{inert(message)}")
        self.stream.write(f"\r{line[:LINE_WIDTH]:<{LINE_WIDTH}}")

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * LINE_WIDTH + "\r")
            self.stream.flush()


def learn(engine: Engine, session_ids: list[int] | None, out: TextIO, err: TextIO) -> int:
    bar = ProgressBar(err)
    before = engine.active_version()
    try:
        results = engine.learn_now(bar, session_ids=session_ids)
    finally:
        bar.done()
    cells = engine.cells_learned_since(before)
    if not results and not cells:
        print("nothing to learn: no session has new messages", file=out)
    for result in results:
        print(describe(engine, result), file=out)
    if cells:
        print(f"v{cells.version.id}: learned the cells' read from {cells.own_cases} exchanges "
              f"of long sessions and the bundled dev conversations ({cells.seconds:.0f} s)",
              file=out)
    return 0


def show(engine: Engine, out: TextIO) -> int:
    settings = engine.settings
    state = "paused" if settings.learning_paused else "on"
    gate = ("locality on decided answers "
            + (f"≥ {settings.locality_threshold:g}" if settings.locality_margin >= 1
               else f"≥ null floor − {settings.locality_margin:g}")
            + (f" and ≥ {settings.locality_threshold:g}" if settings.locality_threshold else ""))
    checks = ", no leaks or loops" if settings.gate_replies else ""
    print(f"profile {engine.profile.name} · learning {state} · gate: {gate}{checks}", file=out)
    active = engine.active_version()
    if active is None:
        print("no learned memory is active (the base model answers)", file=out)
    else:
        print(f"active: v{active.id} ({when(active)}) · "
              f"{len(active.sessions)} sessions · {active.trainable_params:,} parameters · "
              f"{active.bytes / 1024:.1f} KiB · {locality(active) or 'no locality score'}",
              file=out)
        problem = _damage(engine, active)
        if problem:
            print(f"problem: {problem} — the chat falls back to the last good version "
                  "(or the base model) and says so; `engram memory rollback` picks one",
                  file=out)
        records = engine.learned_facts(active)
        for sid in active.sessions:
            record = records.get(sid, {"facts": [], "corrections": []})
            print(f"  session {sid} {title(engine, sid)}", file=out)
            missed = set(record.get("unrecalled", []))
            for question, answer, _ in record["facts"] + record["corrections"]:
                note = f"  ({NOT_RECALLED})" if answer in missed else ""
                print(f"    {inert(question)} → {inert(answer)}{note}", file=out)
            for leak in record.get("trimmed", []):
                print(f"    ({inert(trimmed(*leak))})", file=out)
    pending = engine.pending_sessions()
    if pending:
        print(f"pending: {', '.join(f's{s.id}' for s in pending)} (learned in the background "
              "during chat, or now with `engram memory learn`)", file=out)
    return 0


def _damage(engine: Engine, version: OverlayVersion) -> str:
    """Why a version's files cannot be used as they are (checked against their manifest, with
    no model loaded), or ""."""
    try:
        overlay_files.load(engine.home / version.path, version.base_sha256)
    except (EngramError, OSError) as exc:
        return str(exc)
    return ""


def versions(engine: Engine, out: TextIO) -> int:
    rows = engine.versions()
    if not rows:
        print("no overlay versions yet: chat, then `engram memory learn`", file=out)
    for v in rows:
        why = f"  ({v.reason})" if v.reason else ""
        print(f"v{v.id:<4} {v.created_at[:19].replace('T', ' ')}  {v.status:<10}  "
              f"{what(v):<24} {locality(v):<38} {v.trainable_params:>9,} params{why}", file=out)
    return 0


def rollback(engine: Engine, version_id: int | None, out: TextIO) -> int:
    print(rolled_back(engine.rollback_memory(version_id)), file=out)
    return 0


def forget(engine: Engine, session_id: int, out: TextIO) -> int:
    version = engine.forget_session(session_id)
    print(forgot(session_id, version), file=out)
    _probes(engine.memory_diff(version.id), out)
    return 0


def reset(engine: Engine, yes: bool, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    if not yes:
        if not stdin.isatty():
            raise EngramError("reset forgets everything learned: confirm with --yes")
        err.write(f"Forget everything profile {engine.profile.name!r} has learned? [y/N] ")
        err.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing changed", file=out)
            return 1
    print(was_reset(engine.reset_memory()), file=out)
    return 0


def pause(engine: Engine, paused: bool, out: TextIO) -> int:
    engine.pause_learning(paused)
    print(learning_state(engine), file=out)
    return 0


def diff(engine: Engine, target: str | None, out: TextIO) -> int:
    if target is None:
        active = engine.active_version()
        if active is None:
            raise EngramError("no learned memory is active: name a version (see "
                              "`engram memory versions`)")
        version_id = active.id
    elif match := re.fullmatch(r"[sS](\d+)", target):
        version_id = engine.version_of_session(int(match[1])).id
    elif match := re.fullmatch(r"[vV]?(\d+)", target):
        version_id = int(match[1])
    else:
        raise EngramError(f"{target!r} is neither a version (7, v7) nor a session (s3)")
    d = engine.memory_diff(version_id)
    print("\n".join(diff_summary(engine, d)), file=out)
    if d.layers:
        print("change per layer (L2 norm, parent → this version):", file=out)
        for line in layer_bars(d):
            print(f"  {line}", file=out)
    _probes(d, out)
    return 0


def export(engine: Engine, path: str, fmt: str, out: TextIO) -> int:
    written = engine.export_memory(path, fmt)
    print(exported(written, fmt, engine.active_version()), file=out)
    return 0


def import_archive(engine: Engine, path: str, out: TextIO) -> int:
    print(imported(engine.import_memory(path)), file=out)
    return 0


def _probes(d: VersionDiff, out: TextIO) -> None:
    if not d.probes:
        return
    print("questions derived from the sessions, asked in a fresh context (before → after):",
          file=out)
    for p in d.probes:
        print(f"  s{p.session_id} · {p.question}  (expected: {p.expected})", file=out)
        print(f"      before: {p.before!r}", file=out)
        print(f"      after:  {p.after!r}", file=out)


def run(engine: Engine, args) -> int:
    """Dispatch ``engram memory <command>``."""
    out, err = sys.stdout, sys.stderr
    match args.memory:
        case "learn":
            return learn(engine, args.session, out, err)
        case "show":
            return show(engine, out)
        case "versions":
            return versions(engine, out)
        case "rollback":
            return rollback(engine, args.version, out)
        case "forget":
            return forget(engine, args.session, out)
        case "reset":
            return reset(engine, args.yes, sys.stdin, out, err)
        case "pause" | "resume":
            return pause(engine, args.memory == "pause", out)
        case "diff":
            return diff(engine, args.target, out)
        case "export":
            return export(engine, args.path, args.format, out)
        case "import":
            return import_archive(engine, args.path, out)
    raise AssertionError(args.memory)
