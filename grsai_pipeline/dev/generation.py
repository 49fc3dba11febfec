"""Realistic generations for the simulator (issue 25): how long each model takes, with a long
tail, and a progress that rises with time but noisily, sometimes stuck before the end, sometimes
only in coarse steps. ``SimulatorConfig(realistic=True)`` uses it.

Durations, in real seconds (divided by the simulator's ``time_scale``), lognormal per model
(``median * exp(sigma * N(0, 1))``) and clipped to ``[low, high]``:

===========  ======  =====  =====  =====  =====  =====  ==========================
model        median  sigma  low    high   p95    p99    so
===========  ======  =====  =====  =====  =====  =====  ==========================
sora-2       190 s   0.35   60 s   900 s  339 s  432 s  81 % within 2-5 minutes
veo3.1-fast  120 s   0.55   40 s   960 s  298 s  436 s
veo3.1-pro   240 s   0.55   60 s   960 s  595 s  871 s  0.6 % at the 16-minute cap
===========  ======  =====  =====  =====  =====  =====  ==========================

A model not in the table is drawn like ``sora-2``.

Progress kinds (``REALISTIC_PROGRESS_MIX``), one per task:

- ``noisy`` (45 %): ``100 * f ** gamma`` at the fraction ``f`` of the duration gone, ``gamma``
  uniform in [0.7, 1.4] per task (some tasks rush early, some late), plus noise: an offset drawn
  at 20 evenly spaced points (normal, sd 3 points) and interpolated between them, so successive
  answers now and then go back a point or a few;
- ``stuck`` (20 %): as ``noisy`` but rising to a ``top`` of 90-99, reached at 55-85 % of the
  duration, and held there until the end;
- ``coarse_25`` (15 %) and ``coarse_33`` (15 %): as ``noisy``, rounded down to steps of 25
  (0, 25, 50, 75) or 33 (0, 33, 66, 99);
- ``flat`` (5 %): 0 until the end (a progress that never moves).

A running task's progress is always within 0-99; the answer that says ``succeeded`` carries 100.
Everything about a task is drawn from one random generator, so a seed gives the same tasks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

KNOTS: Final = 20
NOISE_SD: Final = 3.0
GAMMA: Final = (0.7, 1.4)
STUCK_TOP: Final = (90, 99)
STUCK_FROM: Final = (0.55, 0.85)
STEPS: Final = {"noisy": 1, "stuck": 1, "coarse_25": 25, "coarse_33": 33, "flat": 1}
PROGRESS_KINDS: Final = tuple(STEPS)


class DurationModel(BaseModel):
    """How long one model's generations take: lognormal, clipped (real seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    median_s: float = Field(gt=0)
    sigma: float = Field(ge=0, le=3)
    low_s: float = Field(ge=0)
    high_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DurationModel:
        if not self.low_s <= self.median_s <= self.high_s:
            raise ValueError("low_s <= median_s <= high_s")
        return self

    def draw(self, rng: random.Random) -> float:
        value = rng.lognormvariate(math.log(self.median_s), self.sigma)
        return min(self.high_s, max(self.low_s, value))


REALISTIC_DURATIONS: Final[dict[str, DurationModel]] = {
    "sora-2": DurationModel(median_s=190, sigma=0.35, low_s=60, high_s=900),
    "veo3.1-fast": DurationModel(median_s=120, sigma=0.55, low_s=40, high_s=960),
    "veo3.1-pro": DurationModel(median_s=240, sigma=0.55, low_s=60, high_s=960),
}
FALLBACK_MODEL: Final = "sora-2"
REALISTIC_PROGRESS_MIX: Final[dict[str, float]] = {
    "noisy": 0.45,
    "stuck": 0.20,
    "coarse_25": 0.15,
    "coarse_33": 0.15,
    "flat": 0.05,
}


@dataclass(frozen=True)
class ProgressCurve:
    """One task's progress as a function of the fraction of its duration gone."""

    kind: str
    gamma: float
    top: float  # the progress the curve rises to, at ``top_at``
    top_at: float  # the fraction of the duration from which it holds at ``top``
    step: int  # answers are rounded down to multiples of this
    noise: tuple[float, ...]  # KNOTS + 1 offsets, interpolated

    def at(self, fraction: float) -> int:
        """The progress a running task answers, ``fraction`` of its duration in (0-99)."""
        if self.kind == "flat":
            return 0
        f = min(max(fraction, 0.0), 1.0)
        if f >= self.top_at:
            value = self.top
        else:
            position = f * KNOTS
            k = min(int(position), KNOTS - 1)
            weight = position - k
            offset = self.noise[k] * (1 - weight) + self.noise[k + 1] * weight
            value = min(self.top, self.top * (f / self.top_at) ** self.gamma + offset)
        progress = int(min(99.0, max(0.0, value)))
        return progress // self.step * self.step


def linear_progress() -> ProgressCurve:
    """The simulator's default progress: the fraction gone, in percent (no noise)."""
    return ProgressCurve("linear", 1.0, 100.0, 1.0, 1, (0.0,) * (KNOTS + 1))


def draw_duration(
    rng: random.Random, model: str, durations: dict[str, DurationModel], time_scale: float = 1.0
) -> float:
    """A generation time of ``model`` in seconds, divided by ``time_scale``."""
    duration_model = durations.get(model) or durations.get(FALLBACK_MODEL)
    if duration_model is None:
        duration_model = REALISTIC_DURATIONS[FALLBACK_MODEL]
    return duration_model.draw(rng) / time_scale


def draw_progress(rng: random.Random, mix: dict[str, float]) -> ProgressCurve:
    """A task's progress curve: its kind from ``mix``, then its shape and noise."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    gamma = rng.uniform(*GAMMA)
    top, top_at = 100.0, 1.0
    if kind == "stuck":
        top = float(rng.randint(*STUCK_TOP))
        top_at = rng.uniform(*STUCK_FROM)
    noise = (0.0, *(rng.gauss(0.0, NOISE_SD) for _ in range(KNOTS)))
    return ProgressCurve(kind, gamma, top, top_at, STEPS[kind], noise)
