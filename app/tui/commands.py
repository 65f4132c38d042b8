"""Every user action of the chat and memory screens, in one table, and the command-palette
provider over it.

One table feeds the key bindings (and so the footer), the command palette, the ``/`` commands
typed in the prompt and the help screen, so the four can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider


@dataclass(frozen=True)
class Command:
    action: str  # an action of the scope's screen (``action_<name>``)
    title: str  # in the command palette
    help: str
    key: str | None = None
    label: str = ""  # in the footer
    slash: str | None = None  # the ``/`` command typed in the prompt
    argument: str = ""  # what the ``/`` command takes (passed to the action as one string)
    scope: str = "chat"  # "sessions": the chat's sessions list, on its highlighted row;
    # "memory": the memory screen, on its selected version


COMMANDS: tuple[Command, ...] = (
    Command("new_session", "New session", "Start a new, empty session",
            "ctrl+n", "New", slash="new"),
    Command("regenerate", "Regenerate reply", "Replace the last reply with a new one",
            "ctrl+r", "Regen", slash="regen"),
    Command("stop", "Stop reply", "Stop the reply being written; its text is kept, marked stopped",
            "escape", "Stop"),
    Command("system_prompt", "Set system prompt", "Change this session's system prompt",
            "f4", "System", slash="system", argument="<text>"),
    Command("model", "Switch model", "Choose another model on this machine; it loads in the "
            "background, with its own memory", "f3", "Model", slash="model"),
    Command("toggle_memory", "Toggle memory panel", "Show or hide what the model has learned",
            "ctrl+t", "Panel", slash="panel"),
    Command("memory", "Memory versions", "What each memory version learned and changed; "
            "roll back, forget, reset", "ctrl+o", "Memory", slash="memory"),
    Command("settings", "Settings", "System prompt for new sessions and sampling, per profile",
            "ctrl+s", "Settings", slash="settings"),
    Command("search_sessions", "Search sessions", "Filter the sessions list by title or text",
            "ctrl+f", "Search"),
    Command("copy_message", "Copy message", "Copy the focused message, else the last reply",
            "f5", "Copy"),
    Command("copy_code", "Copy code block", "Copy the last code block of the focused message "
            "(else of the last reply)", "ctrl+b", "Code"),
    Command("rename_session", "Rename session", "Rename the highlighted (else the open) session",
            "f2", "Rename", scope="sessions"),
    Command("delete_session", "Delete session", "Delete the highlighted (else the open) session",
            "delete", "Delete", scope="sessions"),
    Command("rollback_memory", "Roll back memory", "Make the previous (or the given) memory "
            "version active", slash="rollback", argument="[version]"),
    Command("forget_session", "Forget this session", "Take the open (or the given) session out "
            "of the memory", slash="forget", argument="[session]"),
    Command("reset_memory", "Reset memory", "Forget everything learned (a rollback undoes it)",
            slash="reset"),
    Command("pause_learning", "Pause learning", "Learn nothing from the sessions until resumed",
            slash="pause"),
    Command("resume_learning", "Resume learning", "Learn from the sessions again",
            slash="resume"),
    Command("export_memory", "Export memory", "Save what the model learned to a file "
            "(format: archive, the default; gguf or peft: the overlay as a LoRA adapter)",
            slash="export", argument="<path> [format]"),
    Command("import_memory", "Import memory", "Load memory exported by Engram",
            slash="import", argument="<path>"),
    Command("help", "Help", "Keys and / commands", "f1", "Help", slash="help"),
    Command("rollback", "Roll back to this version", "Make the selected version active",
            "r", "Roll back", scope="memory"),
    Command("forget", "Forget this version's session", "Take the session the selected version "
            "learned out of the memory (asks first)", "f", "Forget", scope="memory"),
    Command("reset", "Reset all memory", "Forget everything learned (asks first)",
            "R", "Reset", scope="memory"),
    Command("pause", "Pause learning", "Learn nothing until resumed", "p", "Pause",
            scope="memory"),
    Command("resume", "Resume learning", "Learn from the sessions again", "p", "Resume",
            scope="memory"),
    Command("toggle_cells", "Toggle this session's cells", "Turn the open session's working-"
            "memory cells on or off", "c", "Cells", scope="memory"),
    Command("reset_cells", "Reset this session's cells", "Empty the open session's cells",
            "x", "Empty cells", scope="memory"),
)

SLASH: dict[str, Command] = {c.slash: c for c in COMMANDS if c.slash}


def bindings(scope: str) -> list[Binding]:
    """The key bindings of one scope, shown in the footer when that scope has focus."""
    return [Binding(c.key, c.action, c.label) for c in COMMANDS if c.key and c.scope == scope]


class EngramCommands(Provider):
    """The open screen's commands in the command palette (Ctrl+P)."""

    def _commands(self):
        screen = self.screen
        scopes = getattr(screen, "COMMAND_SCOPES", ())
        for command in COMMANDS:
            if command.scope in scopes and screen.check_action(command.action, ()) is not False:
                yield command, partial(screen.run_action, command.action)

    async def discover(self) -> Hits:
        for command, run in self._commands():
            yield DiscoveryHit(command.title, run, help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command, run in self._commands():
            score = matcher.match(command.title)
            if score > 0:
                yield Hit(score, matcher.highlight(command.title), run, help=command.help)
