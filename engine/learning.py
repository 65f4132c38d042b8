"""Learning from sessions into the overlay: what is pending, one session's run, the locality
gate, forgetting, reset, and what a version changed.

A run builds on the active version. The session's neurons are trained with every other
session's neurons applied to the twin, so a correction is trained against the old fact it
overrides, and never reuse them, so a session is forgotten by dropping its blocks (no
retraining). Each run makes one version, accepted or rejected by the locality gate; its
metrics keep the Q/A pairs derived from the session, so later sessions can correct them and
``diff`` can ask them again.

What was decided about a session (learned, rejected, forgotten, reset) is recorded in the
versions as the newest user message it covered; a session is pending only when it has a newer
one. So a rollback or a rejection is not silently undone by learning the same text again.
"""

from __future__ import annotations


import fcntl
import hashlib
import json
import logging
import re
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from engine import facts
from engine.errors import EngramError
from engine.facts import QA
from engine.memory import OverlayMemory
from engine.overlay import SparseOverlay, write_gguf_lora
from engine.prompt import Turn
from engine.runtime import Runtime, Sampling
from engine.scoring import Scorer, log_softmax
from engine.settings import Settings
from store import paths
from store.records import OverlayVersion, Profile, Session
from store.store import Store

if TYPE_CHECKING:  # torch is imported only when something is learned
    from engine.cell_training import GateRecipe
    from engine.cells import CellWriter
    from engine.learner import Anchors, Recipe
    from engine.twin import Twin

Progress = Callable[[float, str], None]

# Replies to these must not move: the gate's KL term (the answers are only a typical reply).
NEUTRAL = (
    ("Hello!", "Hello! How can I help you today?"),
    ("What is your name?", "My name is Engram."),
    ("How do I boil an egg?", "Put the egg in boiling water for about eight minutes."),
    ("Can you recommend a good book?", "You might enjoy a classic novel such as Emma."),
    ("What is the weather like today?", "I cannot see outside, but I hope it is sunny."),
    ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
)
# Chit-chat about the assistant itself, anchored as unrelated dialogue: "What is my name?"
# must not leak into "What is your name?" (the gate measures on NEUTRAL, never on these).
SMALL_TALK = (
    ("Who are you?", "I am Engram, an assistant."),
    ("What are you called?", "I am called Engram."),
    ("Where do you live?", "I live on your computer."),
    ("What is the name of this app?", "This app is Engram."),
    ("How are you?", "I am fine, thank you."),
    ("What can you do?", "I can answer questions and remember what you tell me."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("What colour is the sky?", "The sky is blue."),
)
MAX_PROBES = 12  # questions a diff asks before and after (each costs a short generation)
CELLS_EVERY = 16  # new user turns in a session before the cells' read learns from it (again)
LOCK_WAIT_S = 60.0  # how long a foreground command waits for another process's job


def quiet(fraction: float, message: str) -> None:
    """A progress callback for callers that do not show progress."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise InterruptedError("learning cancelled")


# -- evaluation text ----------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def world_facts() -> list[dict]:
    """General-knowledge Q/A pairs: the even half anchors the learner, the odd half the gate."""
    return _jsonl(paths.eval_data("world-facts.jsonl"))


def _paragraphs(path: Path) -> list[str]:
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()]


def generic_text() -> list[str]:
    """Paragraphs of plain prose the benchmark measures perplexity on (never an anchor)."""
    return _paragraphs(paths.eval_data("generic-text.txt"))


def dialogue(runtime: Runtime, system: str | None, question: str,
             answer: str) -> tuple[list[int], list[int]]:
    """A question in the app's own prompt format, and the tokens of an answer to it."""
    prompt = runtime.tokenize(runtime.format.render(system, [Turn("user", question)]))
    return prompt, runtime.tokenize(answer, add_bos=False)


def end_of_turn(runtime: Runtime) -> list[int]:
    """The tokens that close an assistant's turn in the app's prompt format."""
    return runtime.tokenize(runtime.format.end_of_turn, add_bos=False, special=True)


def ask(runtime: Runtime, system: str | None, question: str, before: list[Turn] = ()) -> str:
    """The model's greedy answer in a fresh context (or after the ``before`` turns)."""
    reply = runtime.reply([*before, Turn("user", question)], system, Sampling.greedy(32))
    return "".join(reply).strip()


# -- corrections --------------------------------------------------------------------------

FILLER = set("""a an the and or of in on at to for with from by is are am was were be been do
does did have has had i me my mine you your we our us it its that this these those there here
now currently still again actually please remind tell so then just s""".split())  # s: "what's", "cat's"


def _content(question: str) -> frozenset[str]:
    """Content words, crudely stemmed (``lives``/``live``/``living`` compare equal)."""
    words = re.findall(r"[a-zà-ÿ0-9]+", question.lower())
    return frozenset(re.sub(r"(ing|ed|es|s|e)$", "", w) or w for w in words if w not in FILLER)


def same_question(a: str, b: str) -> bool:
    """Nearly the same question: almost the same content words ("Where do I live now?" and
    "Where do I live?"), not merely the same shape ("my sister's name" vs "my brother's")."""
    ca, cb = _content(a), _content(b)
    return bool(ca and cb) and len(ca & cb) / len(ca | cb) >= 0.75


def _same_answer(a: str, b: str) -> bool:
    return re.sub(r"\W+", " ", a.lower()).strip() == re.sub(r"\W+", " ", b.lower()).strip()


def corrections(new: list[QA], earlier: list[tuple[int, QA]]) -> list[QA]:
    """Earlier pairs that the new ones contradict, retargeted to the new answers.

    A new pair contradicts an earlier one that asks nearly the same question with another
    answer; every phrasing of that earlier fact (same session, statement and answer) is then
    trained with the new answer too, so the old fact is overridden rather than kept beside.
    """
    own = {qa.question.lower() for qa in new}
    out: dict[str, QA] = {}
    for qa in new:
        for session, old in earlier:
            if not same_question(qa.question, old.question) or _same_answer(qa.answer, old.answer):
                continue
            for other_session, other in earlier:
                if (other_session == session and other.statement == old.statement
                        and _same_answer(other.answer, old.answer)
                        and other.question.lower() not in own):
                    out.setdefault(other.question.lower(), QA(other.question, qa.answer, qa.statement))
    return list(out.values())


# -- what a session's learning covered ----------------------------------------------------


def _decided(versions: list[OverlayVersion]) -> dict[int, int]:
    """Per session, the newest user message any version learned, rejected or dropped."""
    out: dict[int, int] = {}
    for version in versions:
        covered = {sid: record["through"] for sid, record in version.metrics.get("learned", {}).items()}
        for sid, through in {**covered, **version.metrics.get("dropped", {})}.items():
            out[int(sid)] = max(out.get(int(sid), 0), through)
    return out


def pending_sessions(store: Store, profile: Profile) -> list[Session]:
    """Sessions (oldest first) with a user message newer than anything decided about them;
    private sessions never."""
    decided = _decided(store.overlay_versions(profile.id))
    sessions = {s.id: s for s in store.sessions(profile.id)}
    newest = store.last_user_message_ids(profile.id)
    return [sessions[sid] for sid in sorted(newest)
            if not sessions[sid].private and newest[sid] > decided.get(sid, 0)]


def ancestry_records(versions: list[OverlayVersion], version: OverlayVersion | None) -> dict[int, dict]:
    """The learn record of each session along ``version``'s ancestry (the nearest wins): what
    was derived from it when its neurons now in use were trained."""
    by_id = {v.id: v for v in versions}
    out: dict[int, dict] = {}
    while version is not None:
        for sid, record in version.metrics.get("learned", {}).items():
            out.setdefault(int(sid), record)
        version = by_id.get(version.parent_id)
    return out


# -- the twin and its anchors, once per process -------------------------------------------

_cache_lock = threading.Lock()
_training = threading.Lock()  # the twin is shared by the process: one training at a time
_twins: dict[str, "Twin"] = {}
_anchors: dict[tuple, "Anchors"] = {}


def twin_for(runtime: Runtime) -> "Twin":
    from engine.twin import Twin

    with _cache_lock:
        if runtime.model.sha256 not in _twins:
            _twins[runtime.model.sha256] = Twin.load(runtime.model)
        return _twins[runtime.model.sha256]


def anchor_prose() -> list[str]:
    """Paragraphs of everyday prose in many registers: what the learner must leave alone."""
    return _paragraphs(paths.ASSETS / "anchors" / "prose.txt")


def unrelated_questions() -> list[dict]:
    """Questions about the world (zsRE's relation questions and Natural Questions, cases the
    benchmarks never ask), in world-facts' format: what a new memory must not answer."""
    return _jsonl(paths.ASSETS / "anchors" / "unrelated-questions.jsonl")


def anchors_for(twin: "Twin", runtime: Runtime, system: str | None,
                recipe: "Recipe") -> "Anchors":
    """Generic text and unrelated Q/A dialogues as the edited layers see them (the even half
    of world-facts and other questions; the gate measures on the odd half)."""
    from engine import learner

    key = (twin.sha256, system, tuple(recipe.layers), recipe.key_context)
    with _cache_lock:
        if key not in _anchors:
            qa = [dialogue(runtime, system, q, f" {a}") for q, a in SMALL_TALK] + [
                dialogue(runtime, system, f["question"], f" {f['answer']}.")
                for f in world_facts()[0::2] + unrelated_questions()]
            prose = [runtime.tokenize(p) for p in anchor_prose()]
            texts = [p + a for p, a in qa] + prose
            starts = [len(p) for p, _ in qa] + [None] * len(prose)
            # Building them runs ~2,000 dialogues (minutes on CPU): once per machine, not per process.
            digest = hashlib.sha256(json.dumps(
                [twin.sha256, texts, starts, recipe.layers, recipe.key_context]).encode()).hexdigest()
            path = paths.cache() / "anchors" / f"{digest[:32]}.safetensors"
            _anchors[key] = _cached_anchors(path, twin, tuple(recipe.layers))
            if _anchors[key] is None:
                _anchors[key] = learner.anchors_for(twin, texts, tuple(recipe.layers), answer_starts=starts,
                                                    question_tail=recipe.key_context)
                _anchors[key].save(path)
        return _anchors[key]


def _cached_anchors(path: Path, twin: "Twin", layers: tuple[int, ...]) -> "Anchors | None":
    """The anchors cached at ``path``; None when there are none or the file is damaged (a
    cache: it is rebuilt, never trusted half-read)."""
    from safetensors import SafetensorError

    from engine import learner

    try:
        return learner.Anchors.load(path, twin.device, layers)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, SafetensorError) as e:
        logging.getLogger(__name__).warning("rebuilding the anchor cache: %s", e)
        return None


PROJECTIONS = {"ffn_down": "down_proj", "ffn_up": "up_proj", "ffn_gate": "gate_proj"}


@contextmanager
def applied(twin: "Twin", overlay: SparseOverlay) -> Iterator[None]:
    """The twin computing with ``overlay`` added to its weights, restored exactly afterwards."""
    import torch

    with twin.edited_by((layer, PROJECTIONS[matrix],
                         torch.from_numpy(overlay.scale * overlay.dense_delta(layer, matrix)))
                        for layer, matrix in sorted({(b.layer, b.matrix) for b in overlay.blocks})):
        yield


# -- the locality gate --------------------------------------------------------------------


@dataclass(frozen=True)
class Locality:
    locality: float  # share of answer positions where the argmax is still the base model's
    kl_neutral: float  # mean KL(base ‖ with overlay) over replies to neutral prompts


class Gate:
    """Measures an overlay against the base model with llama.cpp (the weights that are served),
    on text the learner never trains on: the odd half of world-facts and neutral prompts."""

    def __init__(self, runtime: Runtime, system: str | None):
        self.system = system
        self.facts = [dialogue(runtime, system, f["question"], f" {f['answer']}.")
                      for f in world_facts()[1::2]]
        self.neutral = [dialogue(runtime, system, q, f" {a}") for q, a in NEUTRAL]
        self.scorer = Scorer(runtime.model.path, n_ctx=1024)
        self._base = [self.answer_logits(p, a).argmax(-1) for p, a in self.facts]
        # The base model's replies, kept (~60 MB): recomputing them cost ~1 s of each run.
        self._base_neutral = [log_softmax(self.answer_logits(p, a)) for p, a in self.neutral]

    def answer_logits(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        """Logits at the positions that predict each answer token."""
        tokens = prompt + answer
        return self.scorer.logits_at(tokens, list(range(len(prompt) - 1, len(tokens) - 1)))

    def measure(self, lora: Path | None, scale: float = 1.0,
                cancel: threading.Event | None = None) -> Locality:
        """Locality of the GGUF LoRA ``lora`` (None: base weights, locality 1)."""
        self.scorer.set_overlay(lora, scale)
        try:
            same = total = 0
            for (prompt, answer), base in zip(self.facts, self._base):
                _check(cancel)
                same += int((self.answer_logits(prompt, answer).argmax(-1) == base).sum())
                total += base.size
            kl = [float((np.exp(b) * (b - log_softmax(self.answer_logits(p, a)))).sum(-1).mean())
                  for (p, a), b in zip(self.neutral, self._base_neutral)]
        finally:
            self.scorer.set_overlay(None)
        return Locality(same / total, float(np.mean(kl)))

    def close(self) -> None:
        self.scorer.close()


# -- results ------------------------------------------------------------------------------


@dataclass
class LearnResult:
    """One session's run. ``version`` is None when nothing was found worth learning."""

    session_id: int
    version: OverlayVersion | None
    facts: list[QA]
    corrections: list[QA]
    locality: Locality | None
    threshold: float
    seconds: float  # deriving, training and gating

    @property
    def accepted(self) -> bool:
        return self.version is not None and self.version.status != "rejected"

    def summary(self) -> str:
        if self.version is None:
            return f"session {self.session_id}: nothing to learn"
        if not self.accepted:
            return (f"session {self.session_id} not learned: {self.version.reason} "
                    f"(v{self.version.id} rejected)")
        n = len(self.facts)
        return (f"memory updated: v{self.version.id} learned session {self.session_id} "
                f"({n} fact{'s' * (n != 1)}, locality {self.locality.locality:.3f})")


@dataclass
class Probe:
    session_id: int
    question: str
    expected: str  # the answer derived from what the user said
    before: str  # the model's answer with the parent version (or the base model)
    after: str  # … and with this version


@dataclass
class VersionDiff:
    version: OverlayVersion
    parent: OverlayVersion | None
    added: list[int]  # sessions this version learned (or relearned)
    removed: list[int]  # sessions it dropped (forget, reset)
    layers: dict[int, tuple[float, float]]  # layer → change magnitude in parent, in version
    params: tuple[int, int]  # parameters touched by parent, by version
    probes: list[Probe]


# -- the learning of one profile ----------------------------------------------------------


class Learning:
    """Learns a profile's sessions into its overlay versions (one job at a time per profile,
    across processes: a lock file)."""

    def __init__(self, store: Store, home: Path, profile: Profile, runtime: Runtime,
                 memory: OverlayMemory, settings: Callable[[], Settings],
                 recipe: "Recipe | None" = None, cell_writer: "CellWriter | None" = None):
        self.store, self.home, self.profile = store, Path(home), profile
        self.runtime, self.memory, self.settings = runtime, memory, settings
        self._recipe = recipe
        self._gate: Gate | None = None
        self.cell_writer = cell_writer  # the sessions' own (cells learned as sessions write them)
        self.cell_recipe: GateRecipe | None = None  # the cells' read's recipe (None: default)
        self._nothing: dict[int, int] = {}  # session → newest message, nothing found (this process)

    @property
    def recipe(self) -> "Recipe":
        """The learner's recipe (imported on first use: torch costs seconds at launch)."""
        if self._recipe is None:
            from engine.learner import Recipe

            self._recipe = Recipe()
        return self._recipe

    # -- reading ----------------------------------------------------------------------

    def pending(self) -> list[Session]:
        newest = self.store.last_user_message_ids(self.profile.id)
        return [s for s in pending_sessions(self.store, self.profile)
                if newest[s.id] > self._nothing.get(s.id, 0)]

    def records(self, version: OverlayVersion | None) -> dict[int, dict]:
        return ancestry_records(self.memory.versions(), version)

    def version_of_session(self, session_id: int) -> OverlayVersion:
        """The newest version that learned (or tried to learn) a session."""
        for version in self.memory.versions():
            if str(session_id) in version.metrics.get("learned", {}):
                return version
        raise EngramError(f"no version has learned session {session_id}")

    def prepare(self) -> None:
        """Load the training model, its anchors and the gate now (slow, once per process),
        so that the first job is not slower than the others."""
        anchors_for(twin_for(self.runtime), self.runtime, self.settings().system_prompt,
                    self.recipe)
        self.gate()

    def gate(self) -> Gate:
        """The locality gate for the current system prompt (built on first use: it scores
        the base model once)."""
        system = self.settings().system_prompt
        if self._gate is None or self._gate.system != system:
            self.close()
            self._gate = Gate(self.runtime, system)
        return self._gate

    # -- learning ---------------------------------------------------------------------

    def run(self, progress: Progress = quiet, cancel: threading.Event | None = None,
            session_ids: list[int] | None = None, wait: float = LOCK_WAIT_S) -> list[LearnResult]:
        """Learn the pending sessions (or these, even if learned before), one version each."""
        with self._locked(wait):
            self._sync()
            sessions = (self.pending() if session_ids is None
                        else [self._learnable(sid) for sid in session_ids])
            results = []
            for i, session in enumerate(sessions):
                def step(fraction: float, message: str, i=i, session=session) -> None:
                    progress((i + fraction) / len(sessions),
                             f"session {session.id} ({i + 1}/{len(sessions)}): {message}")
                results.append(self._learn(session, step, cancel))
            return results

    def _learnable(self, session_id: int) -> Session:
        session = self.store.session(session_id)
        if session.profile_id != self.profile.id:
            raise EngramError(f"session {session_id} belongs to another profile")
        if session.private:
            raise EngramError(f"session {session_id} is private: it is never learned from")
        return session

    def _learn(self, session: Session, progress: Progress,
               cancel: threading.Event | None) -> LearnResult:
        from engine import learner

        started = time.perf_counter()
        settings = self.settings()
        newest = self.store.last_user_message_ids(self.profile.id).get(session.id, 0)
        said = [m.content for m in self.store.messages(session.id) if m.role == "user" and m.content]
        progress(0.0, "finding what to remember")
        # On the base weights: what earlier sessions taught must not shape what is derived now.
        with self.memory.trying(None) if self.memory.applied else nullcontext():
            found = facts.derive(self.runtime, said)
        derived = time.perf_counter()
        _check(cancel)
        if not found:
            self._nothing[session.id] = newest
            return LearnResult(session.id, None, [], [], None, settings.locality_threshold,
                               time.perf_counter() - started)

        progress(0.1, "loading the training model")
        twin = twin_for(self.runtime)
        anchors = anchors_for(twin, self.runtime, settings.system_prompt, self.recipe)
        active = self.memory.current() or SparseOverlay(
            [], self.runtime.model.sha256, d_model=twin.config.hidden_size,
            d_ff=twin.config.intermediate_size)
        base = active.without_session(session.id)
        records = self.records(self.memory.applied)
        earlier = [(sid, QA(*row)) for sid in base.sessions if sid < session.id and sid in records
                   for row in records[sid]["facts"] + records[sid]["corrections"]]
        fixes = corrections(found, earlier)
        owned: dict[int, set[int]] = {}
        for block in base.blocks:
            owned.setdefault(block.layer, set()).update(block.neurons.tolist())
        taught = facts.varied(found, self.recipe.phrasings) + fixes
        others = [qa for _, qa in earlier
                  if not any(same_question(qa.question, new.question) for new in taught)]
        # In the profile's own prompt format only: a second copy without the system prompt
        # made each session a third slower and recalled no more.
        end = end_of_turn(self.runtime)
        examples, held = ([learner.Example(*dialogue(self.runtime, settings.system_prompt, qa.question,
                                                     f" {qa.answer}."), end)
                           for qa in pairs] for pairs in (taught, others))
        with _training, applied(twin, base):
            blocks, train = learner.learn(
                twin, examples, anchors, self.recipe, owned=owned, session_id=session.id,
                progress=lambda f, m: progress(0.15 + 0.7 * f, m), cancel=cancel, earlier=held)
        candidate = base.merge(replace(base, blocks=blocks))

        progress(0.85, "checking that unrelated answers stay the same")
        gating = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="engram-gate-") as tmp:
            lora = write_gguf_lora(candidate, Path(tmp) / "candidate.gguf",
                                   self.runtime.model.architecture)
            score = self.gate().measure(lora, candidate.scale, cancel)
        _check(cancel)
        finished = time.perf_counter()
        seconds = finished - started
        threshold = settings.locality_threshold
        metrics = {
            "event": "learn", "locality": round(score.locality, 4),
            "kl_neutral": round(score.kl_neutral, 5), "threshold": threshold,
            "learned": {str(session.id): {
                "through": newest, "seconds": round(seconds, 2), "train": train,
                "derive_seconds": round(derived - started, 2),
                "gate_seconds": round(finished - gating, 2),
                "facts": [[qa.question, qa.answer, qa.statement] for qa in found],
                "corrections": [[qa.question, qa.answer, qa.statement] for qa in fixes],
            }},
        }
        if score.locality < threshold:
            version = self.memory.record_rejected(
                candidate, f"locality {score.locality:.3f} < {threshold:g}", metrics)
        else:
            version = self.memory.commit(candidate, metrics)
        progress(1.0, "done")
        return LearnResult(session.id, version, found, fixes, score, threshold, seconds)

    def learn_cells(self, progress: Progress = quiet, cancel: threading.Event | None = None,
                    wait: float = LOCK_WAIT_S) -> OverlayVersion | None:
        """Learn the cells' read gates (``engine/cell_training.py``) from the bundled dev
        conversations and the profile's long sessions, when a session long enough to teach
        it (earlier turns out of a window) has grown since they were learned; a new version
        with the same neurons. None: nothing to do. Short sessions never need cells."""
        from engine import cell_conversations, cell_training

        with self._locked(wait):
            self._sync()
            active = self.memory.current()
            learned = (self._cells_record(self.memory.applied) if active is not None
                       and active.cell_gates is not None else None) or {}
            newest = self.store.last_user_message_ids(self.profile.id)
            sessions = [s.id for s in self.store.sessions(self.profile.id) if not s.private]
            own = []
            for sid in sessions:
                if newest.get(sid, 0) <= learned.get(str(sid), 0):
                    continue  # nothing new: its messages are not read
                messages = [m for m in self.store.messages(sid) if m.content]
                if sum(m.role == "user" and m.id > learned.get(str(sid), 0)
                       for m in messages) >= CELLS_EVERY:
                    own += cell_conversations.session_cases(sid, [
                        ("User" if m.role == "user" else "Assistant", m.content) for m in messages])
            if not own:
                return None
            started = time.perf_counter()
            twin = twin_for(self.runtime)
            base = active or SparseOverlay([], self.runtime.model.sha256,
                                           d_model=twin.config.hidden_size,
                                           d_ff=twin.config.intermediate_size)
            with _training, applied(twin, base):
                gates = cell_training.train(twin, self.cell_writer,
                                            cell_conversations.dev_cases() + own, anchor_prose(),
                                            self.cell_recipe, init=base.cell_gates,
                                            progress=progress, cancel=cancel)
            through = {str(sid): newest[sid] for sid in sessions if sid in newest}
            return self.memory.commit(replace(base, cell_gates=gates), {
                "event": "cells", "cells": {"through": through, "own_cases": len(own),
                                            "seconds": round(time.perf_counter() - started, 2),
                                            "gates": [round(float(g), 4) for g in gates]}})

    def _cells_record(self, version: OverlayVersion | None) -> dict[str, int] | None:
        """Per session, the newest message the active gates were learned through (along the
        parent chain: later versions carry the gates forward)."""
        by_id = {v.id: v for v in self.memory.versions()}
        while version is not None:
            if version.metrics.get("event") == "cells":
                return version.metrics["cells"]["through"]
            version = by_id.get(version.parent_id)
        return None

    # -- control ----------------------------------------------------------------------

    def forget(self, session_id: int) -> OverlayVersion:
        """A new active version without one session's neurons (they are its own: nothing is
        retrained). The session is not learned again unless it gets new messages."""
        with self._locked(LOCK_WAIT_S):
            self._sync()
            active = self.memory.current()
            if active is None or session_id not in active.sessions:
                raise EngramError(f"session {session_id} is not in the active memory "
                                  "(see `engram memory show`)")
            newest = self.store.last_user_message_ids(self.profile.id).get(session_id, 0)
            return self.memory.commit(active.without_session(session_id),
                                      {"event": "forget", "dropped": {str(session_id): newest}})

    def reset(self) -> OverlayVersion:
        """A new, empty active version: everything said so far is left unlearned. Earlier
        versions stay, so a rollback undoes it."""
        with self._locked(LOCK_WAIT_S):
            self._sync()
            active = self.memory.current()
            if active is None:
                raise EngramError("no learned memory is active: there is nothing to reset")
            newest = self.store.last_user_message_ids(self.profile.id)
            return self.memory.commit(replace(active, blocks=[], cell_gates=None), {
                "event": "reset", "dropped": {str(sid): n for sid, n in newest.items()}})

    def rollback(self, version_id: int | None = None) -> OverlayVersion | None:
        with self._locked(LOCK_WAIT_S):
            self._sync()
            return self.memory.rollback(version_id)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the profile's learning lock, after following other processes' changes: for a
        change to the memory made outside this class (an import), so no job runs meanwhile."""
        with self._locked(LOCK_WAIT_S):
            self._sync()
            yield

    # -- explaining -------------------------------------------------------------------

    def diff(self, version_id: int) -> VersionDiff:
        """What a version changed against its parent, with the changed sessions' derived
        questions answered by the model before and after."""
        version = self.store.overlay_version(version_id)
        if version.profile_id != self.profile.id:
            raise EngramError(f"overlay version {version_id} belongs to another profile")
        parent = self.store.overlay_version(version.parent_id) if version.parent_id else None
        mine = self.memory.load(version)
        theirs = self.memory.load(parent) if parent else None
        before = theirs.layer_norms() if theirs else {}
        after = mine.layer_norms()
        old = set(theirs.sessions if theirs else [])
        learned = {int(sid) for sid in version.metrics.get("learned", {})}
        added = sorted(learned | (set(mine.sessions) - old))
        removed = sorted(old - set(mine.sessions))
        questions = self._probe_questions(added, version) + self._probe_questions(removed, parent)
        questions = questions[:MAX_PROBES]
        system = self.settings().system_prompt
        with self.memory.trying(parent):
            answers_before = [ask(self.runtime, system, q) for _, q, _ in questions]
        with self.memory.trying(version):
            answers_after = [ask(self.runtime, system, q) for _, q, _ in questions]
        return VersionDiff(
            version, parent, added, removed,
            {layer: (before.get(layer, 0.0), after.get(layer, 0.0))
             for layer in sorted(set(before) | set(after))},
            (theirs.trainable_params if theirs else 0, mine.trainable_params),
            [Probe(sid, q, a, b, c) for (sid, q, a), b, c
             in zip(questions, answers_before, answers_after)])

    def _probe_questions(self, sessions: list[int],
                         version: OverlayVersion | None) -> list[tuple[int, str, str]]:
        records = self.records(version)
        return [(sid, q, a) for sid in sessions if sid in records
                for q, a, _ in records[sid]["facts"] + records[sid]["corrections"]]

    # -- internals ----------------------------------------------------------------------

    def _sync(self) -> None:
        """Follow a change another process made to the active version."""
        stored = self.store.active_overlay(self.profile.id)
        if (stored and stored.id) != (self.memory.applied and self.memory.applied.id):
            if stored is None:
                self.memory.deactivate()
            else:
                self.memory.activate(stored.id)

    @contextmanager
    def _locked(self, wait: float) -> Iterator[None]:
        with open(paths.learning_lock(self.home, self.profile.name), "a") as lock:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EngramError("another Engram process is changing this profile's "
                                          "memory; try again when it is done") from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
            self._gate = None
