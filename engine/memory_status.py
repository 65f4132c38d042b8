"""What the UI may show about memory: one snapshot type, so later features only fill it in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemoryStatus:
    overlay_active: bool = False
    overlay_version: int | None = None
    learning: bool = False  # a training job is running
    learning_progress: float | None = None  # 0..1 while learning
    learning_message: str = ""  # what the job is doing, or how the last one ended
    learning_phase: str = ""  # the phase a running job is in (engine.learning.progress.PHASES)
    phase_progress: float | None = None  # 0..1 of that phase
    phase_left_s: float | None = None  # an estimate of the seconds the phase still needs
    learning_paused: bool = False  # `engram memory pause`: nothing is learned
    cells_enabled: bool = False
    cell_magnitudes: list[float] = field(default_factory=list)  # per layer, this session
    problem: str = ""  # a damaged or foreign version set aside, a saved state not used

    def summary(self) -> str:
        overlay = f"overlay v{self.overlay_version}" if self.overlay_active else "no overlay"
        learning = (f"learning {self.learning_progress or 0:.0%}" if self.learning
                    else "learning paused" if self.learning_paused else "idle")
        return f"{overlay} · {learning}"
