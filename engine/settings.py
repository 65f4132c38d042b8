"""Per-profile chat settings: system prompt and sampling, defaults from
``assets/default_config.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace

from engine.runtime import Sampling
from store import paths

# A context below this cannot hold a system prompt and a reply; above it llama.cpp would try
# to allocate a KV cache no desktop has (and no built-in model was trained for).
CTX_RANGE = (64, 262_144)


@dataclass
class Settings:
    system_prompt: str
    temperature: float
    top_p: float
    max_tokens: int
    repeat_penalty: float
    n_ctx: int
    learning_paused: bool  # never learn from this profile's sessions while set
    locality_threshold: float  # the locality gate refuses overlays below this share …
    locality_margin: float  # … or below the model's null-overlay floor less this (≥ 1: off)
    gate_replies: bool  # the gate also refuses versions that leak or loop
    model_pairs: bool  # a model with a chat template writes question/answer pairs too
    thinking: bool  # a reasoning model may think before it answers (read when a model loads)
    model_folders: list[str]  # searched for GGUF files by `engram models`, besides the usual places

    @classmethod
    def defaults(cls) -> Settings:
        return cls(**tomllib.loads(paths.asset("default_config.toml").read_text()))

    @classmethod
    def from_saved(cls, saved: dict) -> Settings:
        """Defaults overridden by what the profile saved (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**asdict(cls.defaults()), **{k: v for k, v in saved.items() if k in known}})

    def validate(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top-p must be in (0, 1]")
        if not 1.0 <= self.repeat_penalty <= 2.0:
            raise ValueError("the repeat penalty must be between 1 (none) and 2")
        check_ctx(self.n_ctx)
        if not 1 <= self.max_tokens <= 8192:
            raise ValueError("max tokens must be between 1 and 8192")
        if not 0.0 <= self.locality_threshold <= 1.0:
            raise ValueError("the locality threshold must be between 0 and 1")
        if not 0.0 <= self.locality_margin:
            raise ValueError("the locality margin must not be negative")
        if not all(isinstance(folder, str) for folder in self.model_folders):
            raise ValueError("model folders must be paths")

    def with_gate(self, threshold: float) -> Settings:
        """A fixed locality threshold instead of the floor-relative one (0: the gate accepts
        every version, leaks and loops included: to measure what a recipe alone does)."""
        return replace(self, locality_threshold=threshold, locality_margin=1.0,
                       gate_replies=threshold > 0)

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                        repeat_penalty=self.repeat_penalty)


def check_ctx(n_ctx: int) -> int:
    """``n_ctx`` if it is a context window llama.cpp can be asked for."""
    low, high = CTX_RANGE
    if not low <= n_ctx <= high:
        raise ValueError(f"the context window must be between {low} and {high} tokens, "
                         f"not {n_ctx}")
    return n_ctx
