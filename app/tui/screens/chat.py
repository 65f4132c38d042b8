"""The chat: sessions on the left, the conversation in the middle, memory on the right.

Replies are generated on worker threads (llama.cpp blocks for the whole reply). A thread
never touches widgets: it posts ``Reply*`` messages to this screen, which handles them in
order on the UI thread. Each message names its ``ReplyJob``; messages of a job the user
has walked away from (by switching session) are not shown, though the job's text is saved.

Each reply asks the engine for background learning (``Engine.conversation`` does, debounced);
leaving a session asks for it at once, so a finished session is learned without waiting.

Another model (F3) loads on a worker thread, as the first one does: meanwhile a message is
held, and sent once the model is ready. The new model starts a new session: a session's saved
KV cache and cells belong to the model it was held with, and its replies are that model's.
"""

from __future__ import annotations

import shlex
import threading
import time
from pathlib import Path

from textual import work
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from app import memory_text
from app.terminal import inert
from app.tui import commands, memory_actions
from app.tui.screens import model_picker
from app.tui.screens.confirm import ConfirmDialog
from app.tui.screens.help import HelpScreen
from app.tui.screens.memory import MemoryScreen
from app.tui.screens.model_picker import Choice, ModelPicker, ModelRefused, ModelSwitched
from app.tui.screens.rename import RenameDialog
from app.tui.screens.settings import SettingsScreen
from app.tui.widgets.memory import MemoryPanel
from app.tui.widgets.messages import MessageList, MessageView
from app.tui.widgets.prompt import PromptInput
from app.tui.widgets.sessions import SessionList, SessionsSidebar
from app.tui.widgets.status import StatusBar
from engine.conversation import ChatReply
from engine.errors import EngramError
from engine.runtime import ReplyStats, Runtime
from store.records import Message as StoredMessage
from store.records import Session

STREAM_INTERVAL = 1 / 30  # post at most this often: a fast model must not flood the UI queue
EXIT_WAIT_SECONDS = 10  # how long quitting waits for a stopped reply to be saved
PLACEHOLDER = "Message Engram · Enter sends · Ctrl+J new line · Up earlier prompts · /help"
LOADING_PLACEHOLDER = "Loading the model… you can type already"


class BadArgument(Exception):
    """A ``/`` command's argument is not what the command takes: its usage is shown."""


def number(text: str, prefix: str) -> int | None:
    """``7`` or ``{prefix}7`` (v7, s7) as 7; None for no text."""
    digits = text.strip().lower().removeprefix(prefix)
    if digits and not digits.isdigit():
        raise BadArgument(f"{text.strip()!r} is not a number")
    return int(digits) if digits else None


def words(text: str, fewest: int, most: int) -> list[str]:
    """Shell-like words (quote a path with spaces)."""
    try:
        found = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise BadArgument(str(exc)) from None
    if not fewest <= len(found) <= most:
        raise BadArgument("wrong number of arguments")
    return found


class ReplyJob:
    """One reply generated on a worker thread.

    ``stop()`` is safe from the UI at any moment, even before the reply exists: the flag is
    set before the reply is read, and ``attach`` stores the reply before reading the flag,
    so whichever runs second sees the other.
    """

    def __init__(self, session: Session | None, text: str | None):
        self.session = session  # None: a new session, created when the message is accepted
        self.text = text  # None: regenerate the last reply
        self.view: MessageView | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._reply: ChatReply | None = None

    def attach(self, reply: ChatReply) -> None:
        self._reply = reply
        if self._stop.is_set():
            reply.cancel()

    def stop(self) -> None:
        self._stop.set()
        if self._reply is not None:
            self._reply.cancel()


class ReplyStarted(Message):
    def __init__(self, job: ReplyJob, session: Session, stats: ReplyStats):
        super().__init__()
        self.job, self.session, self.stats = job, session, stats


class ReplyChunk(Message):
    def __init__(self, job: ReplyJob, text: str):
        super().__init__()
        self.job, self.text = job, text


class ReplyEnded(Message):
    """Always the job's last message. ``message`` is None when the reply never started."""

    def __init__(self, job: ReplyJob):
        super().__init__()
        self.job = job
        self.message: StoredMessage | None = None
        self.stats: ReplyStats | None = None
        self.error = ""


class ChatScreen(Screen):
    COMMAND_SCOPES = ("chat", "sessions")
    BINDINGS = commands.bindings("chat")
    AUTO_FOCUS = "#prompt"

    def __init__(self, engine, session_id: int | None = None, private: bool = False):
        super().__init__()
        self.engine = engine
        self.private = private  # sessions started in this run are never learned from
        self.session: Session | None = None
        self.runtime: Runtime | None = None  # set once the model has loaded
        self.job: ReplyJob | None = None  # the reply shown as it streams
        self._jobs: set[ReplyJob] = set()  # every job whose thread may still run
        self._on_ready: str | None = None  # a message sent while the model was loading
        self._first_session_id = session_id

    def compose(self):
        with Horizontal(id="body"):
            yield SessionsSidebar(self.engine.sessions, id="sidebar")
            with Vertical(id="chat"):
                yield MessageList(id="messages")
                yield PromptInput(id="prompt", placeholder=LOADING_PLACEHOLDER)
            yield MemoryPanel(self.engine.memory_status, id="memory")
        yield StatusBar(id="status")
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        await self.open_session(self._first_session_id)

    def on_unmount(self) -> None:
        # Quitting mid-reply: stop it and let its thread save the partial text before the
        # engine (and its store) is closed.
        for job in list(self._jobs):
            job.stop()
        for job in list(self._jobs):
            job.done.wait(EXIT_WAIT_SECONDS)

    def model_ready(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.query_one(StatusBar).model_ready(runtime.name, runtime.device)
        self.query_one(PromptInput).placeholder = PLACEHOLDER
        if self.session is not None:
            self._show_stats_of(self.engine.messages(self.session.id))
        text, self._on_ready = self._on_ready, None
        if text is not None:
            self._start(ReplyJob(self.session, text))
        if self.engine.pending_sessions():  # left unlearned last time, or by a model replaced
            self.engine.schedule_learning()  # starts the debounce; else the first reply does

    # -- sessions ---------------------------------------------------------------

    async def open_session(self, session_id: int | None) -> None:
        """Show a session (None: a new one, saved once its first message is sent)."""
        self._leave_reply()
        if self.session is not None and self.session.id != session_id:
            self.engine.schedule_learning(self.session.id, delay=0)
        self.session = self.engine.session(session_id) if session_id is not None else None
        messages = self.engine.messages(session_id) if session_id is not None else []
        await self.query_one(MessageList).show(messages)
        prompt = self.query_one(PromptInput)
        prompt.prompts = [m.content for m in messages if m.role == "user"]
        self.query_one(SessionsSidebar).reload(session_id)
        self.query_one(MemoryPanel).show_session(session_id)
        self.query_one(StatusBar).set_private(
            self.session.private if self.session else self.private)
        self._show_stats_of(messages)

    def _leave_reply(self) -> None:
        """Stop the reply on screen; its thread finishes (and saves it) on its own."""
        if self.job is not None:
            self.job.stop()
            self._set_job(None)

    def _show_stats_of(self, messages: list[StoredMessage]) -> None:
        """The status bar's figures for the newest reply that has them, e.g. in a reopened
        session."""
        replies = [m for m in messages if m.role == "assistant" and m.prompt_tokens]
        status = self.query_one(StatusBar)
        if not replies:
            status.set_reply(None, None)
            return
        last = replies[-1]
        used = (last.prompt_tokens + (last.completion_tokens or 0)) / self.runtime.n_ctx \
            if self.runtime is not None else None
        status.set_reply(last.tokens_per_s, used)

    async def on_sessions_sidebar_opened(self, event: SessionsSidebar.Opened) -> None:
        if self.session is None or event.session_id != self.session.id:
            await self.open_session(event.session_id)
        self.query_one(PromptInput).focus()

    async def on_session_list_action(self, event: SessionList.Action) -> None:
        await self.run_action(f"{event.action}({event.session_id})")

    def _session_or_notify(self, session_id: int | None) -> Session | None:
        if session_id is not None:
            return self.engine.session(session_id)
        if self.session is None:
            self.notify("This session is not saved yet: send a message first.")
        return self.session

    def action_rename_session(self, session_id: int | None = None) -> None:
        session = self._session_or_notify(session_id)
        if session is None:
            return

        def rename(title: str | None) -> None:
            if title is not None:
                renamed = self.engine.rename_session(session.id, title)
                if self.session is not None and self.session.id == renamed.id:
                    self.session = renamed
                self._reload_sidebar()

        self.app.push_screen(RenameDialog(session.title), rename)

    def action_delete_session(self, session_id: int | None = None) -> None:
        session = self._session_or_notify(session_id)
        if session is None:
            return

        async def delete(yes: bool | None) -> None:
            if not yes:
                return
            is_open = self.session is not None and self.session.id == session.id
            if is_open:
                self._leave_reply()
            self.engine.delete_session(session.id)
            if is_open:
                self.session = None  # gone: nothing to learn from on the way out
                await self.open_session(None)
            else:
                self._reload_sidebar()
            self.notify(f"Deleted “{session.title}”", markup=False)

        count = session.message_count
        question = (f"Delete the session “{session.title}” and its {count} "
                    f"message{'s' if count != 1 else ''}? This cannot be undone.")
        self.app.push_screen(ConfirmDialog(question), delete)

    def _reload_sidebar(self) -> None:
        self.query_one(SessionsSidebar).reload(self.session.id if self.session else None)

    async def action_new_session(self) -> None:
        await self.open_session(None)
        self.query_one(PromptInput).focus()

    def action_search_sessions(self) -> None:
        self.query_one(SessionsSidebar).focus_search()

    # -- sending ----------------------------------------------------------------

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip():
            return
        if text.startswith("/"):
            await self._run_slash(text)
        else:
            self._start(ReplyJob(self.session, text))

    async def _run_slash(self, text: str) -> None:
        name, _, argument = text[1:].partition(" ")
        command = commands.SLASH.get(name.strip().lower())
        if command is None:
            self.notify(f"Unknown command /{name.strip()}: /help lists them. To send text that "
                        "starts with /, begin it with a space.", severity="warning", markup=False)
            return
        action = f"{command.action}({argument.strip()!r})" if command.argument else command.action
        try:
            await self.run_action(action)
        except BadArgument as exc:  # the command stays in the prompt, to be corrected
            self.notify(f"{exc}. Usage: /{command.slash} {command.argument}",
                        severity="warning", markup=False)
            return
        self.query_one(PromptInput).clear()

    def _start(self, job: ReplyJob) -> None:
        if self.runtime is None:
            if job.text is None:
                self.notify("The model is still loading; try again in a moment.")
                return
            self._on_ready = job.text
            self.notify("The model is still loading: your message is sent as soon as it is "
                        "ready.")
            return
        if self.job is not None:
            self.notify("A reply is still being written: wait for it, or press Esc to stop it.")
            return
        self._jobs.add(job)
        self._set_job(job)
        self.query_one(StatusBar).set_activity("thinking…")
        self._generate(job)

    def _set_job(self, job: ReplyJob | None) -> None:
        self.job = job
        if job is None:
            self.query_one(StatusBar).set_activity("")
        self.refresh_bindings()  # Esc (stop) is offered only while a reply streams

    @work(thread=True, exit_on_error=False, group="replies")
    def _generate(self, job: ReplyJob) -> None:
        ended = ReplyEnded(job)
        try:
            self._produce(job, ended)
        except Exception as exc:  # shown to the user; the store already marked the reply
            ended.error = str(exc) if isinstance(exc, (EngramError, ValueError)) \
                else f"{type(exc).__name__}: {exc}"
        finally:
            self.post_message(ended)
            job.done.set()

    def _produce(self, job: ReplyJob, ended: ReplyEnded) -> None:
        """On the worker thread: commit the message, stream the reply, fill in ``ended``."""
        engine = self.engine
        session = job.session or engine.new_session(private=self.private)
        conversation = engine.conversation(session.id)  # re-read: /system may have changed it
        sampling = engine.settings.sampling()
        try:
            reply = (conversation.send(job.text, sampling) if job.text is not None
                     else conversation.regenerate(sampling))
        except Exception:
            if job.session is None:  # refused before anything was said: leave no empty session
                engine.delete_session(session.id)
            raise
        job.attach(reply)
        self.post_message(ReplyStarted(job, conversation.session, reply.stats))
        pending: list[str] = []
        posted_at = 0.0
        try:
            for piece in reply:
                pending.append(piece)
                if time.monotonic() - posted_at >= STREAM_INTERVAL:
                    self.post_message(ReplyChunk(job, "".join(pending)))
                    pending.clear()
                    posted_at = time.monotonic()
        finally:
            if pending:
                self.post_message(ReplyChunk(job, "".join(pending)))
            ended.message, ended.stats = reply.message, reply.stats

    async def on_reply_started(self, event: ReplyStarted) -> None:
        job = event.job
        if job is not self.job:
            return
        self.session = event.session
        messages = self.query_one(MessageList)
        views = []
        if job.text is not None:
            prompt = self.query_one(PromptInput)
            if prompt.text == job.text:
                prompt.clear()
            prompt.remember(job.text.strip())
            views.append(MessageView("user", job.text.strip()))
        else:
            shown = messages.views()
            if shown and shown[-1].role == "assistant":
                await shown[-1].remove()
        job.view = MessageView("assistant", "", "waiting")
        views.append(job.view)
        await messages.add(*views)
        self._reload_sidebar()
        self.query_one(MemoryPanel).show_session(self.session.id)
        stats = event.stats
        self.query_one(StatusBar).set_reply(None, stats.context_used, stats.dropped_turns)
        self.query_one(StatusBar).set_activity("writing…")
        if stats.dropped_turns:
            self.notify(f"The context window is full: the {stats.dropped_turns} oldest messages "
                        "are no longer in the model's view.", severity="warning")

    async def on_reply_chunk(self, event: ReplyChunk) -> None:
        if event.job is self.job and event.job.view is not None:
            await event.job.view.append(event.text)

    async def on_reply_ended(self, event: ReplyEnded) -> None:
        job = event.job
        self._jobs.discard(job)
        if job is not self.job:
            # Left behind by a session switch; it is saved. Show it if its session is open again.
            if event.message is not None and self.session is not None \
                    and event.message.session_id == self.session.id and self.job is None:
                await self.open_session(self.session.id)
            else:
                self._reload_sidebar()
            return
        self._set_job(None)
        if event.message is None:
            self.notify(f"Not sent: {event.error}", severity="warning", timeout=8, markup=False)
            return
        await job.view.finish(event.message.status, event.message.content, event.error)
        stats = event.stats
        self.query_one(StatusBar).set_reply(stats.tokens_per_s, stats.context_used,
                                            stats.dropped_turns)
        self._reload_sidebar()

    def action_stop(self) -> None:
        if self.job is not None:
            self.job.stop()
            self.query_one(StatusBar).set_activity("stopping…")

    def action_regenerate(self) -> None:
        if self.session is None:
            self.notify("Nothing to regenerate yet.")
            return
        self._start(ReplyJob(self.session, None))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.job is not None
        if action in ("copy_message", "copy_code"):
            # Not offered from the sessions list: its own keys need the footer's room there.
            return (self.focused is None
                    or self.focused.parent is not self.query_one(SessionsSidebar))
        return True

    # -- everything else ---------------------------------------------------------

    def action_system_prompt(self, text: str | None = None) -> None:
        """The key puts ``/system <current prompt>`` in the prompt, to be edited and sent;
        ``/system <text>`` sets it; ``/system`` alone shows it."""
        if text is None:
            self._prefill(f"/system {self._system_prompt()}")
        else:
            self.set_system_prompt(text)

    def _prefill(self, text: str) -> None:
        """Put a command in the prompt, to be completed and sent."""
        prompt = self.query_one(PromptInput)
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    def _system_prompt(self) -> str:
        if self.session is not None:
            return self.session.system_prompt or ""
        return self.engine.settings.system_prompt

    def set_system_prompt(self, text: str) -> None:
        if not text:
            self.notify(f"System prompt: {self._system_prompt() or '(none)'}\n"
                        "Change it with /system <text>.", timeout=10, markup=False)
            return
        if self.session is None:
            self.session = self.engine.new_session(private=self.private)
        self.session = self.engine.set_system_prompt(self.session.id, text)
        self._reload_sidebar()
        self.notify("System prompt set for this session.")

    def action_model(self) -> None:
        if self.runtime is None:
            self.notify("The model is still loading; try again once it is ready.")
            return
        self.app.push_screen(ModelPicker(self.engine.settings.model_folders,
                                         self.runtime.model.path), self._switch_to)

    def _switch_to(self, choice: Choice | None) -> None:
        if choice is None or self.runtime is None:
            return
        if choice.path is not None and choice.path.resolve() == self.runtime.model.path.resolve():
            self.notify(f"{choice.name} is the model in use.", markup=False)
            return
        if self.job is not None:
            self.notify("A reply is being written: stop it (Esc) or let it finish, then choose "
                        "the model again.", severity="warning")
            return
        self.runtime = None  # until the new one is ready: a message is held, memory waits
        self.query_one(StatusBar).set_activity(f"loading {inert(choice.name)}…")
        self.query_one(PromptInput).placeholder = LOADING_PLACEHOLDER
        model_picker.load(self, self.engine, choice)

    async def on_model_switched(self, event: ModelSwitched) -> None:
        await self.open_session(None)
        self.model_ready(event.runtime)
        self.notify(f"Now chatting with {event.runtime.name}, with its own memory, in a new "
                    "session (the earlier ones are in the list).", markup=False)

    def on_model_refused(self, event: ModelRefused) -> None:
        assert self.engine.runtime is not None  # the model before, still loaded
        self.model_ready(self.engine.runtime)
        self.notify(f"{event.choice.name} could not be loaded: {event.reason}",
                    title="Still on the model before", severity="error", timeout=15,
                    markup=False)

    def action_toggle_memory(self) -> None:
        self.query_one(MemoryPanel).toggle()

    # -- memory ------------------------------------------------------------------------

    def on_screen_resume(self) -> None:
        self._memory_changed()

    def _memory_changed(self, _=None) -> None:
        self.query_one(MemoryPanel).show_session(self.session.id if self.session else None)

    def _model_loaded(self) -> bool:
        """Memory changes need the model (they swap what it computes with)."""
        if self.runtime is None:
            self.notify("The model is still loading; try again in a moment.")
        return self.runtime is not None

    def action_memory(self, select: int | None = None) -> None:
        if self._model_loaded():
            self.app.push_screen(MemoryScreen(self.engine, self.session and self.session.id,
                                              select))

    def action_rollback_memory(self, version: str = "") -> None:
        """``/rollback``: to the active version's parent; ``/rollback 7`` (or v7): to v7."""
        version_id = number(version, "v")
        if self._model_loaded():
            memory_actions.rollback(self.app, self.engine, version_id, self._memory_changed)

    def action_forget_session(self, session: str = "") -> None:
        """``/forget``: the open session; ``/forget 3`` (or s3): session 3. Then the memory
        screen shows the new version: the session's questions answered before and after."""
        session_id = number(session, "s")
        if session_id is None and self.session is not None:
            session_id = self.session.id
        if session_id is None:
            self.notify("This session is not saved yet, so it is not in the memory.")
        elif self._model_loaded():
            memory_actions.forget(self.app, self.engine, session_id,
                                  lambda version: self.action_memory(version.id))

    def action_reset_memory(self) -> None:
        if self._model_loaded():
            memory_actions.reset(self.app, self.engine, self._memory_changed)

    def action_pause_learning(self) -> None:
        memory_actions.pause(self.app, self.engine, True, self._memory_changed)

    def action_resume_learning(self) -> None:
        memory_actions.pause(self.app, self.engine, False, self._memory_changed)

    def action_export_memory(self, argument: str | None = None) -> None:
        """``/export PATH [archive|gguf|peft]``; from the palette, the prompt asks for PATH."""
        if argument is None:
            self._prefill("/export ")
            return
        path, *rest = words(argument, 1, 2)
        fmt = rest[0] if rest else "archive"
        engine = self.engine
        memory_actions.in_background(
            self.app, lambda: engine.export_memory(Path(path).expanduser(), fmt),
            lambda written: memory_text.exported(written, fmt,
                                                 engine.active_version()))

    def action_import_memory(self, argument: str | None = None) -> None:
        """``/import PATH``: an archive made by ``/export`` or ``engram memory export``."""
        if argument is None:
            self._prefill("/import ")
            return
        [path] = words(argument, 1, 1)
        if self._model_loaded():
            memory_actions.in_background(
                self.app, lambda: self.engine.import_memory(Path(path).expanduser()),
                memory_text.imported, self._imported)

    def _imported(self, _) -> None:
        self._memory_changed()
        self._reload_sidebar()  # the archive's sessions were added

    def action_settings(self) -> None:
        self.app.push_screen(SettingsScreen(self.engine))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def _target_message(self) -> MessageView | None:
        """The focused message, else the last reply: what the copy keys act on."""
        focused = self.focused
        if isinstance(focused, MessageView):
            return focused
        return self.query_one(MessageList).last_reply()

    def action_copy_message(self) -> None:
        view = self._target_message()
        if view is None or not view.text:
            self.notify("Nothing to copy yet.")
            return
        self.app.copy_to_clipboard(view.text)
        self.notify(f"Copied the message ({len(view.text):,} characters).")

    def action_copy_code(self) -> None:
        view = self._target_message()
        blocks = view.code_blocks() if view is not None else []
        if not blocks:
            self.notify("No code block in that message.")
            return
        self.app.copy_to_clipboard(blocks[-1])
        self.notify(f"Copied a code block ({len(blocks[-1].splitlines())} lines).")
