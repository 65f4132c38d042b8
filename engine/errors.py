"""Errors a user can cause. Each message says what happened and what to do."""


class EngramError(Exception):
    """Base class: caught once at the edge (CLI / app) and shown without a traceback."""


class ModelError(EngramError):
    """The model file is missing, not a GGUF, or not loadable by llama.cpp."""


class ChatTemplateRefused(ModelError):
    """The GGUF's chat template does not parse, fails on a dialogue, or reached for Python
    internals that its sandbox denied: nothing it asked for ran."""


class InputTooLong(EngramError):
    """A message cannot fit in the context window even on its own."""


class LearningUnavailable(EngramError):
    """The model's architecture is one the torch twin cannot reproduce: chat only."""


class NotEnoughMemory(EngramError):
    """The training copy of the model would not fit in free memory: refused before loading
    (an out-of-memory kill would take the chat with it)."""


class OtherProfile(EngramError):
    """A session or overlay version of another profile was named: each profile's memory and
    sessions are its own."""
