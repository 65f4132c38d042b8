"""Per-profile chat settings: system prompt and sampling, defaults from ``assets/default_config.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields

from engine.runtime import Sampling
from store import paths


@dataclass
class Settings:
    system_prompt: str
    temperature: float
    top_p: float
    max_tokens: int
    n_ctx: int
    learning_paused: bool  # never learn from this profile's sessions while set
    locality_threshold: float  # the locality gate refuses overlays below this share

    @classmethod
    def defaults(cls) -> "Settings":
        return cls(**tomllib.loads((paths.ASSETS / "default_config.toml").read_text()))

    @classmethod
    def from_saved(cls, saved: dict) -> "Settings":
        """Defaults overridden by what the profile saved (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**asdict(cls.defaults()), **{k: v for k, v in saved.items() if k in known}})

    def validate(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top-p must be in (0, 1]")
        if not 1 <= self.max_tokens <= 8192:
            raise ValueError("max tokens must be between 1 and 8192")
        if not 0.0 <= self.locality_threshold <= 1.0:
            raise ValueError("the locality threshold must be between 0 and 1")

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)
