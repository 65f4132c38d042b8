"""Learning a profile's sessions into its overlay versions: one session's run (derive,
check, train, gate), the cells' read, forgetting, reset, rollback, and what a version
changed.

A run builds on the active version. The session's neurons are trained with every other
session's neurons applied to the twin, so a correction is trained against the old fact it
overrides, and never reuse them, so a session is forgotten by dropping its blocks (no
retraining). Each run makes one version, accepted or rejected by the gate; its metrics keep
the Q/A pairs derived from the session, so later sessions can correct them and ``diff`` can
ask them again. One job at a time per profile, across processes (a lock file).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine import derive, replies, text
from engine.consistency import TwinKinds, llama_writes, twin_neighbours, twin_prefers
from engine.derive import QA, Neighbours
from engine.errors import EngramError, OtherProfile
from engine.learning import trims
from engine.learning.anchors import anchors_for, training, twin_for
from engine.learning.corrections import corrections, same_question
from engine.learning.gate import Gate, Locality, Taught, check, rejections
from engine.learning.ledger import ancestry_records, pending_sessions
from engine.learning.lock import profile_lock
from engine.learning.progress import Phase, Progress, Step, quiet, scaled
from engine.learning.results import LearnResult, Probe, VersionDiff
from engine.learning.texts import (
    UNTAUGHT_REPLY,
    anchor_prose,
    dialogue,
    end_of_turn,
    personal_questions,
)
from engine.learning.trims import Trim
from engine.memory import OverlayMemory
from engine.overlay import NeuronBlock, SparseOverlay
from engine.prompt import ChatTemplate, Turn
from engine.runtime import Runtime
from engine.settings import Settings
from store.records import OverlayVersion, Profile, Session
from store.store import Store

if TYPE_CHECKING:  # torch is imported only when something is learned
    from engine.cell_training import GateRecipe
    from engine.cells import CellWriter
    from engine.learner import Example, Recipe
    from engine.twin import Twin

MAX_PROBES = 12  # questions a diff asks before and after (each costs a short generation)
CELLS_EVERY = 16  # new user turns in a session before the cells' read learns from it (again)
LOCK_WAIT_S = 60.0  # how long a foreground command waits for another process's job


class Learning:
    """Learns a profile's sessions into its overlay versions (one job at a time per profile,
    across processes: a lock file)."""

    def __init__(self, store: Store, home: Path, profile: Profile, runtime: Runtime,
                 memory: OverlayMemory, settings: Callable[[], Settings],
                 recipe: Recipe | None = None, cell_writer: CellWriter | None = None):
        self.store, self.home, self.profile = store, Path(home), profile
        self.runtime, self.memory, self.settings = runtime, memory, settings
        self._recipe = recipe
        self._gate: Gate | None = None
        self.cell_writer = cell_writer  # the sessions' own (cells learned as sessions write them)
        self.cell_recipe: GateRecipe | None = None  # the cells' read's recipe (None: default)
        self._nothing: dict[int, int] = {}  # session → newest message, nothing found (this process)
        # instruction → the served model's reply (this process): a session that grows is
        # derived again whole, and a greedy reply on the base weights is the same each time
        self._written_replies: dict[str, str] = {}

    @property
    def recipe(self) -> Recipe:
        """The learner's recipe (imported on first use: torch costs seconds at launch)."""
        if self._recipe is None:
            from engine.learner import Recipe

            self._recipe = Recipe()
        return self._recipe

    @recipe.setter
    def recipe(self, recipe: Recipe) -> None:
        self._recipe = recipe

    # -- reading ----------------------------------------------------------------------

    def pending(self) -> list[Session]:
        """The sessions this model has still to learn (see ``ledger.pending_sessions``)."""
        newest = self.store.last_user_message_ids(self.profile.id)
        return [s for s in pending_sessions(self.store, self.profile, self.memory.base_sha256)
                if newest[s.id] > self._nothing.get(s.id, 0)]

    def records(self, version: OverlayVersion | None) -> dict[int, dict]:
        return ancestry_records(self.memory.versions(), version)

    def version_of_session(self, session_id: int) -> OverlayVersion:
        """The newest version of this model that learned (or tried to learn) a session (another
        model's could not be loaded on this one)."""
        for version_id in self.store.versions_learning(session_id):
            version = self.store.overlay_version(version_id)
            if (version.profile_id, version.base_sha256) == (self.profile.id,
                                                             self.memory.base_sha256):
                return version
        raise EngramError(f"no version of this model has learned session {session_id}")

    def prepare(self) -> None:
        """Load the training model, its anchors and the gate now (slow, once per process),
        so that the first job is not slower than the others."""
        anchors_for(twin_for(self.runtime), self.runtime, self.settings().system_prompt,
                    self.recipe)
        self.gate()

    def floor(self, twin: Twin | None = None) -> float | None:
        """The model's null-overlay locality on decided answers (see ``gate.DECIDED_GAP`` and
        ``null_locality``); None where the settings fix the threshold instead."""
        if self.settings().locality_margin >= 1.0:
            return None
        twin = twin or twin_for(self.runtime)
        return self.gate().floor(self.recipe.layers_for(twin.n_layer), self.recipe.neurons,
                                 twin.config.hidden_size, twin.config.intermediate_size)

    def threshold(self, twin: Twin | None = None) -> float:
        """The locality on decided answers a new version must keep: the settings' absolute
        minimum, or the model's null-overlay floor less the settings' margin if that is
        higher."""
        settings, floor = self.settings(), self.floor(twin)
        if floor is None:
            return settings.locality_threshold
        return max(settings.locality_threshold, floor - settings.locality_margin)

    def _flipped(self, overlay: SparseOverlay) -> frozenset[tuple[int, int]]:
        """The decided world-fact answers ``overlay`` changes (see ``Locality.flipped``)."""
        if not overlay.blocks:
            return frozenset()
        return self.gate().measure_overlay(overlay, "base.gguf").flipped

    def _changed(self, score: Locality, before: Callable[[], frozenset[tuple[int, int]]],
                 floor: float | None) -> list[tuple[int, int]]:
        """The decided world-fact answers ``score``'s version changed that the memory before
        it kept (``before()``: that memory's own changes), where there are more than the null
        floor lets change (none where the threshold is fixed). The threshold is a budget for a
        whole memory: one session's change, accepted within it, would hold back every later
        session."""
        if floor is None or not score.flipped:
            return []
        new = sorted(score.flipped - before())
        return new if len(new) > round((1 - floor) * self.gate().decided_count()) else []

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
        with profile_lock(self.home, self.profile.name, wait, lambda line: progress(0.0, line)):
            self._sync()
            sessions = (self.pending() if session_ids is None
                        else [self._learnable(sid) for sid in session_ids])
            results = []
            for i, session in enumerate(sessions):
                results.append(self._learn(session, scaled(
                    progress, i / len(sessions), (i + 1) / len(sessions),
                    f"session {session.id} ({i + 1}/{len(sessions)}): "), cancel))
            return results

    def _learnable(self, session_id: int) -> Session:
        session = self.store.session(session_id)
        if session.profile_id != self.profile.id:
            raise OtherProfile(f"session {session_id} belongs to another profile")
        if session.private:
            raise EngramError(f"session {session_id} is private: it is never learned from")
        return session

    def _learn(self, session: Session, progress: Progress,
               cancel: threading.Event | None) -> LearnResult:
        from engine import learner

        started = time.perf_counter()
        settings = self.settings()
        newest = self.store.last_user_message_ids(self.profile.id).get(session.id, 0)
        said = [m.content for m in self.store.messages(session.id)
                if m.role == "user" and m.content]
        Phase(progress, "deriving", 0.0, 0.02)(0.0, "finding what to remember")
        written = self._written(said, settings, cancel)
        if not derive.joined(derive.candidates(said), written):
            self._nothing[session.id] = newest
            return LearnResult(session.id, None, [], [], None, settings.locality_threshold,
                               time.perf_counter() - started, written=len(written))
        twin = twin_for(self.runtime, scaled(progress, 0.02, 0.05))
        self.recipe.layers_for(twin.n_layer)  # a model too shallow is refused before deriving
        deriving = Phase(progress, "deriving", 0.05, 0.08)
        deriving(0.0, "deriving questions and checking them")
        # The model's part of the derivation reads with the twin on the base weights (no
        # overlay is applied to it here): what earlier sessions taught must not shape what
        # is derived now, and the chat's own llama.cpp context is never touched.
        kinds = TwinKinds(twin, self.runtime)
        grammar = derive.candidates(said, kinds.sure)
        candidates = derive.joined(grammar, written)
        found = derive.checked(candidates, twin_prefers(twin, self.runtime, settings.system_prompt))
        own = set(candidates[len(grammar):])  # the model's pairs that joined the grammar's
        written_checked = sum(qa in own for qa in found)
        derived = time.perf_counter()
        deriving(1.0, f"{len(found)} of {len(candidates)} derived questions passed the check")
        check(cancel)
        if not found:
            self._nothing[session.id] = newest
            return LearnResult(session.id, None, [], [], None, settings.locality_threshold,
                               time.perf_counter() - started, len(candidates), 0,
                               written=len(written))
        anchors = anchors_for(twin, self.runtime, settings.system_prompt, self.recipe,
                              scaled(progress, 0.08, 0.15))
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
        taught = derive.varied(found, self.recipe.phrasings) + fixes
        by_kind, untaught, unlike = around(
            said, taught, kinds, twin_neighbours(twin, self.runtime, self.recipe.contrasts),
            self.recipe)
        others = [qa for _, qa in earlier
                  if not any(same_question(qa.question, new.question) for new in taught)]
        # In the profile's own prompt format only: a second copy without the system prompt
        # made each session a third slower and recalled no more.
        end = end_of_turn(self.runtime)

        def examples_of(pairs: list[QA]) -> list[learner.Example]:
            return [learner.Example(*dialogue(self.runtime, settings.system_prompt, qa.question,
                                              f" {qa.answer}."), end) for qa in pairs]

        session_answers = {qa.answer.lower() for qa in found + fixes}
        # each fact's first question as a user would put it, the question word first: the
        # gate asks it for recall and loops
        first_asked: dict[str, str] = {}
        for qa in sorted(found, key=lambda qa: not text.fronted(qa.question)):
            first_asked.setdefault(qa.answer, qa.question)
        taught_now = Taught(
            answers=sorted({qa.answer for qa in found + fixes} | {qa.answer for _, qa in earlier}),
            said=said + sorted({qa.statement for _, qa in earlier}),
            questions=[(question, answer) for answer, question in first_asked.items()])
        threshold, floor = self.threshold(twin), self.floor(twin)
        recipe, silent, refused = self.recipe, others + untaught, []
        dropped: set[str] = set()  # answers left out because they kept leaking
        trimmed: list[tuple[int, str, str, bool]] = []  # earlier sessions' leaks taken out
        # what the memory as it is changed (measured once, if needed; a trim below does not
        # move it)
        before = functools.cache(functools.partial(self._flipped, base))

        def judged(candidate: SparseOverlay, last: bool
                   ) -> tuple[Locality, list[tuple[int, int]], list[str]]:
            """The gate's measure of ``candidate``, the decided answers it changed that the
            memory before it kept, and why it is refused (none: accepted). On the ``last``
            try a change nothing could be traced to or trained away is judged by the whole
            memory's threshold alone, as before the session rule: no session is refused for
            it outright."""
            score = self.gate().measure_overlay(candidate, "candidate.gguf", cancel,
                                                taught_now if settings.gate_replies else None)
            changed = self._changed(score, before, floor)
            return score, changed, rejections(score, threshold, [] if last else list(
                dict.fromkeys(self.gate().questions[f] for f, _ in changed)))

        tries = 1 + recipe.retries
        for attempt in range(tries):
            low, high = 0.15 + 0.85 * attempt / tries, 0.15 + 0.85 * (attempt + 1) / tries
            middle = low + 0.8 * (high - low)
            gating_phase = Phase(progress, "gate", middle, high)

            examples = examples_of(taught)
            with training, twin.overlaid(base):
                trained, train = learner.learn(
                    twin, examples, anchors, recipe, owned=owned,
                    session_id=session.id, cancel=cancel, earlier=examples_of(silent),
                    contrasts=examples_of(unlike), also_asked=examples_of(by_kind),
                    progress=Phase(progress, "training", low, middle))
            blocks = trained  # what is cut is cut from these: learner.without reads which
            # fact a neuron detects from where it sits among the trained ones
            # the facts training did not bring out: kept, and shown as not recalled yet (with
            # those the gate's llama.cpp does not give back)
            missing = train.pop("unrecalled")
            unrecalled = {qa.answer for qa, e in zip(taught, examples, strict=True)
                          if e.answer in missing}
            candidate = base.merge(replace(base, blocks=blocks))
            gating_phase(0.0, "checking that unrelated answers stay the same")
            gating = time.perf_counter()
            last = attempt + 1 == tries
            score, changed, reasons = judged(candidate, last)
            # The facts whose neurons fire where an unrelated answer changed are taken out
            # (their neurons: the rest of the session stays exactly as learned) and judged
            # again: they, not the rest, changed it. Where none fires there, the fewest of
            # the likeliest makers of the change (learner.undoing) whose absence gives the
            # answers back in llama.cpp are.
            # So are those whose neurons fire where an earlier session's answer leaked: no
            # retry could leave that answer out, and the session would be refused whole;
            # where none fires there and a try with the leak's question fitted silent leaked
            # still, the fewest likeliest makers whose absence stops it (nd-12 of
            # natural-facts: the wife's name made "Who is my niece?" the sister's).
            # Where none of them fires there, the fewest of the earlier session's neurons
            # whose absence stops its answer leaking are taken out of it (learning.trims: this
            # edit tipped its detector over, "Who is my niece?" → the daughter's "9."), and the
            # session is judged again: else it and every session after it would be refused
            # for a leak that is not theirs.
            foreign = [leak for leak in score.leaks if leak[2].lower() not in session_answers]
            traced = foreign if attempt else []  # on the first try, trained against (below)
            blamed: set[tuple[int, ...]] = set()
            fired: Trim | None = None
            if changed or foreign:
                flips = [self.gate().flip_place(f) for f in changed]
                leaked = [self.gate().leak_place(*leak) for leak in foreign]
                with training, twin.overlaid(candidate):
                    blamed = learner.firing_facts(twin, blocks, examples, flips + leaked,
                                                  recipe.key_context, recipe.firing_share)
                    ranked = [] if blamed or not foreign else trims.makers(
                        twin, base, list(zip(foreign, leaked, strict=True)), earlier)
                fired = trims.fewest(
                    base, blocks, ranked, foreign, earlier,
                    functools.partial(self.gate().gives_back, flips=[], leaks=foreign),
                    self.gate().says, recipe.suspects) if ranked else None
                traced = [] if fired else traced
                suspects = []
                if not blamed and (flips or traced):
                    with training, twin.overlaid(candidate):
                        suspects = learner.undoing(twin, blocks, examples, flips,
                                                   leaked if traced else [])
                for n in range(1, min(recipe.suspects, len(suspects) - 1) + 1):
                    if self.gate().gives_back(base.merge(replace(base, blocks=learner.without(
                            blocks, examples, set(suspects[:n])))), changed, traced):
                        blamed = set(suspects[:n])
                        break
            everything = {tuple(e.answer) for e in examples}
            fact_of = {qa.answer.lower(): tuple(e.answer)
                       for qa, e in zip(taught, examples, strict=True)}
            if last and reasons:
                # The last try: the facts that still leak or loop are taken out too, not the
                # whole session with them.
                blamed |= _failing_facts(score, first_asked, fact_of)
            cut = bool(blamed) and blamed < everything
            if cut:
                dropped |= {a for a, fact in fact_of.items() if fact in blamed}
                blocks = learner.without(trained, examples, blamed)
            if fired:
                base = fired.applied(base)
                trimmed += fired.leaks
            if cut or fired:
                refused.append("; ".join(reasons))
                candidate = base.merge(replace(base, blocks=blocks))
                score, changed, reasons = judged(candidate, last)
            # and, judged again, what leaks or loops then, in turn, while any of the session
            # is left (a session of six facts was refused whole for one fact's loop); a loop
            # that outlived its own fact's cut is traced to the facts firing where it goes
            # round again (nd-12 of natural-facts: "I am a gardener. I am a gardener. …")
            while last and reasons and (more := (
                    _failing_facts(score, first_asked, fact_of) - blamed
                    or self._looping(twin, trained, examples, candidate, score, recipe)
                    - blamed)) and blamed | more < everything:
                blamed |= more
                dropped |= {a for a, fact in fact_of.items() if fact in more}
                blocks = learner.without(trained, examples, blamed)
                candidate = base.merge(replace(base, blocks=blocks))
                score, changed, reasons = judged(candidate, last)
            if not reasons or last:
                break
            # Once more, told what went wrong: every detector is fitted silent on the
            # questions it leaked into as on a rival fact's (among the thousands of generic
            # negatives they weighed nothing: "Who is my niece?" stayed "Noor." on every
            # try), they stay silent in training too, and unrelated text weighs more.
            refused.append("; ".join(reasons))
            # at every position of the reply up to the answer it leaked, too: a detector
            # silent where the question ends can still fire inside the model's own words
            # ("Who is my niece?" → "My niece is 9.", the daughter's age)
            leaked_into = [QA(q, reply[:replies.mention_span(reply, a)[1]].strip(), "")
                           for q, reply, a in score.leaks]
            silent, unlike = silent + leaked_into, unlike + leaked_into
            if score.decided < threshold or changed:
                recipe = replace(recipe, locality_weight=recipe.locality_weight
                                 * recipe.retry_locality)
            if attempt + 1 >= recipe.drop_leaking_from:
                # What still leaks or loops after that is left out: the rest of the session is
                # learned.
                dropped |= _failing(score, first_asked)
            taught = [qa for qa in taught if qa.answer.lower() not in dropped]
            if not taught:
                break
            gating_phase(1.0, f"trying again: {refused[-1]}")
        check(cancel)
        kept = [qa for qa in found if qa.answer.lower() not in dropped]
        set_aside = [qa for qa in found if qa.answer.lower() in dropped]
        missed = sorted((a for a in unrecalled | set(score.unrecalled)
                         if a.lower() not in dropped), key=str.lower)
        fixes = [qa for qa in fixes if qa.answer.lower() not in dropped]
        finished = time.perf_counter()
        seconds = finished - started
        metrics = {
            "event": "learn", "locality": round(score.locality, 4),
            "locality_decided": round(score.decided, 4),
            "kl_neutral": round(score.kl_neutral, 5), "threshold": round(threshold, 4),
            "leaks": [[q, reply.strip(), a] for q, reply, a in score.leaks],
            "trimmed": trims.trimmed_record(trimmed),
            "loops": [list(loop) for loop in score.loops],
            "learned": {str(session.id): {
                "through": newest, "seconds": round(seconds, 2), "train": train,
                "derive_seconds": round(derived - started, 2),
                "gate_seconds": round(finished - gating, 2),
                "candidates": len(candidates), "model_pairs": len(written),
                "model_pairs_checked": written_checked, "refused_tries": refused,
                "facts": [[qa.question, qa.answer, qa.statement] for qa in kept],
                "set_aside": [[qa.question, qa.answer, qa.statement] for qa in set_aside],
                "unrecalled": missed,
                "corrections": [[qa.question, qa.answer, qa.statement] for qa in fixes],
            }},
        }
        if reasons:
            version = self.memory.record_rejected(candidate, "; ".join(reasons), metrics)
        else:
            version = self.memory.commit(candidate, metrics)
        progress(1.0, Step("done", "gate", 1.0))
        return LearnResult(session.id, version, kept, fixes, score, threshold, seconds,
                           len(candidates), len(found), set_aside, len(written),
                           written_checked, missed, trimmed)

    def _looping(self, twin: Twin, trained: list[NeuronBlock], examples: list[Example],
                 candidate: SparseOverlay, score: Locality, recipe: Recipe
                 ) -> set[tuple[int, ...]]:
        """The facts of ``trained`` (from these ``examples``) whose neurons fire, in
        ``candidate``, where a reply of ``score``'s loops goes round again."""
        from engine import learner

        if not score.loops:
            return set()
        with training, twin.overlaid(candidate):
            return learner.firing_facts(
                twin, trained, examples, [self.gate().loop_place(*loop) for loop in score.loops],
                recipe.key_context, recipe.firing_share)

    def _written(self, said: list[str], settings: Settings,
                 cancel: threading.Event | None) -> list[QA]:
        """The pairs the served model writes itself about what the user said
        (``derive.written``), where it has a chat template: an instruction-tuned model
        follows the instruction, a base model would only continue its text. Written in the
        gate's llama.cpp context, never the chat's."""
        if not settings.model_pairs or not isinstance(self.runtime.format, ChatTemplate):
            return []
        write = llama_writes(self.runtime, self.gate().scorer)

        def once(instruction: str) -> str:
            if instruction not in self._written_replies:
                check(cancel)
                self._written_replies[instruction] = write(instruction)
            return self._written_replies[instruction]

        return derive.written(said, once)

    def learn_cells(self, progress: Progress = quiet, cancel: threading.Event | None = None,
                    wait: float = LOCK_WAIT_S) -> OverlayVersion | None:
        """Learn the cells' read gates (``engine/cell_training.py``) from the bundled dev
        conversations and the profile's long sessions, when a session long enough to teach
        it (earlier turns out of a window) has grown since they were learned; a new version
        with the same neurons. None: nothing to do. Short sessions never need cells."""
        from engine import cell_conversations, cell_training

        with profile_lock(self.home, self.profile.name, wait, lambda line: progress(0.0, line)):
            self._sync()
            active = self.memory.current()
            writer = self.cell_writer
            assert writer is not None  # the engine gives Learning its sessions' writer
            # gates learned on another prompt format are learned again, from every session
            kept = (active is not None and active.cell_gates is not None
                    and writer.rule.reads_with(active.cell_rule))
            learned = (self._cells_record(self.memory.applied) if kept else None) or {}
            newest = self.store.last_user_message_ids(self.profile.id)
            sessions = [s.id for s in self.store.sessions(self.profile.id) if not s.private]
            own = []
            for sid in sessions:
                if newest.get(sid, 0) <= learned.get(str(sid), 0):
                    continue  # nothing new: its messages are not read
                messages = [m for m in self.store.messages(sid)  # the turns the chat reads
                            if m.role in ("user", "assistant") and m.content]
                if sum(m.role == "user" and m.id > learned.get(str(sid), 0)
                       for m in messages) >= CELLS_EVERY:
                    own += cell_conversations.session_cases(
                        sid, [Turn(m.role, m.content) for m in messages])
            if not own:
                return None
            started = time.perf_counter()
            twin = twin_for(self.runtime)
            base = active or SparseOverlay([], self.runtime.model.sha256,
                                           d_model=twin.config.hidden_size,
                                           d_ff=twin.config.intermediate_size)
            with training, twin.overlaid(base):
                gates = cell_training.train(twin, writer,
                                            cell_conversations.dev_cases() + own, anchor_prose(),
                                            self.cell_recipe,
                                            init=base.cell_gates if kept else None,
                                            progress=Phase(progress, "learning the cells' read",
                                                           0.0, 1.0), cancel=cancel)
            through = {str(sid): newest[sid] for sid in sessions if sid in newest}
            return self.memory.commit(replace(base, cell_gates=gates,
                                              cell_rule=writer.rule.key()), {
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
            version = None if version.parent_id is None else by_id.get(version.parent_id)
        return None

    # -- control ----------------------------------------------------------------------

    def forget(self, session_id: int) -> OverlayVersion:
        """A new active version without one session's neurons (they are its own: nothing is
        retrained). The session is not learned again, by this model or any other (forgetting
        is for every model), unless it gets new messages."""
        with profile_lock(self.home, self.profile.name, LOCK_WAIT_S):
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
        with profile_lock(self.home, self.profile.name, LOCK_WAIT_S):
            self._sync()
            active = self.memory.current()
            if active is None:
                raise EngramError("no learned memory is active: there is nothing to reset")
            newest = self.store.last_user_message_ids(self.profile.id)
            return self.memory.commit(replace(active, blocks=[], cell_gates=None, cell_rule=None), {
                "event": "reset", "dropped": {str(sid): n for sid, n in newest.items()}})

    def rollback(self, version_id: int | None = None) -> OverlayVersion | None:
        with profile_lock(self.home, self.profile.name, LOCK_WAIT_S):
            self._sync()
            return self.memory.rollback(version_id)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the profile's learning lock, after following other processes' changes: for a
        change to the memory made outside this class (an import), so no job runs meanwhile."""
        with profile_lock(self.home, self.profile.name, LOCK_WAIT_S):
            self._sync()
            yield

    # -- explaining -------------------------------------------------------------------

    def diff(self, version_id: int) -> VersionDiff:
        """What a version changed against its parent, with the changed sessions' derived
        questions answered by the model before and after."""
        version = self.store.overlay_version(version_id)
        if version.profile_id != self.profile.id:
            raise OtherProfile(f"overlay version {version_id} belongs to another profile")
        parent = self.store.overlay_version(version.parent_id) if version.parent_id else None
        mine = self.memory.load(version)
        theirs = self.memory.load(parent) if parent else None
        before = theirs.layer_norms() if theirs else {}
        after = mine.layer_norms()
        old = set(theirs.sessions if theirs else [])
        learned = set(version.learned)
        added = sorted(learned | (set(mine.sessions) - old))
        removed = sorted(old - set(mine.sessions))
        questions = self._probe_questions(added, version) + self._probe_questions(removed, parent)
        questions = questions[:MAX_PROBES]
        # Asked in the gate's own llama.cpp context: the chat's keeps the active version.
        gate = self.gate()
        answers_before, answers_after = (
            gate.replies(self.memory.lora(v) if v else (None, 1.0), [q for _, q, _ in questions])
            for v in (parent, version))
        return VersionDiff(
            version, parent, added, removed,
            {layer: (before.get(layer, 0.0), after.get(layer, 0.0))
             for layer in sorted(set(before) | set(after))},
            (theirs.trainable_params if theirs else 0, mine.trainable_params),
            [Probe(sid, q, a, b, c) for (sid, q, a), b, c
             in zip(questions, answers_before, answers_after, strict=True)])

    def _probe_questions(self, sessions: list[int],
                         version: OverlayVersion | None) -> list[tuple[int, str, str]]:
        records = self.records(version)
        return [(sid, q, a) for sid in sessions if sid in records
                for q, a, _ in records[sid]["facts"] + records[sid]["corrections"]]

    # -- internals ----------------------------------------------------------------------

    def _sync(self) -> None:
        """Build on the version stored as active (another process may have changed it)."""
        if not self.memory.follow():
            raise EngramError(self.memory.problem)

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
            self._gate = None


def around(said: list[str], taught: list[QA], kinds: TwinKinds, neighbours: Neighbours,
           recipe: Recipe) -> tuple[list[QA], list[QA], list[QA]]:
    """What a session's detectors are fitted on beside its ``taught`` questions: the same
    facts asked with the answer's kind named (they fire there too); personal questions about
    nothing the session said (silent, or "What is my name?" is answered with the cat's); and
    the same questions about things the model places near what they name (silent, or "What
    is my dog called?" is answered with the cat's name)."""
    said_about = set().union(*(text.content_lemmas(s) for s in said))
    by_kind, unlike_kinds = derive.asked_by_kind(
        said, kinds.likely(recipe.kinds_asked), taught,
        neighbours if recipe.kind_contrasts else None, said_about, kinds.fits)
    untaught = [QA(q, UNTAUGHT_REPLY, "") for q in replies.untaught(
        personal_questions(), said, [qa.question for qa in taught + by_kind])]
    unlike = [QA(q, UNTAUGHT_REPLY, "") for q in dict.fromkeys(
        [q for qa in taught for q in derive.contrasts(qa, neighbours, said_about)]
        + unlike_kinds)]
    return by_kind, untaught, unlike


def _failing(score: Locality, first_asked: dict[str, str]) -> set[str]:
    """The answers (lower case) the gate saw leak into an untaught question, or whose
    question (``first_asked``: answer → question) looped."""
    looping = {question for question, _ in score.loops}
    return {answer.lower() for _, _, answer in score.leaks} | {
        answer.lower() for answer, question in first_asked.items() if question in looping}


def _failing_facts(score: Locality, first_asked: dict[str, str],
                   fact_of: dict[str, tuple[int, ...]]) -> set[tuple[int, ...]]:
    """The facts (``fact_of``: answer, lower case → its tokens) whose answers ``_failing``
    names."""
    return {fact_of[a] for a in _failing(score, first_asked) if a in fact_of}
