"""The user-facing edge: the ``engram`` command and the Textual TUI."""

__version__ = "0.1.0"
