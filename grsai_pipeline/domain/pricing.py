"""The price table: credits per task, by model (and by duration for sora-2).

Defaults are documented in the README; ``GRSAI_PRICES`` overrides any of them. The price a task
was reserved at is stored on the task and in the ledger, so changing the table never changes
what an existing reservation settles for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from grsai_pipeline.domain.tasks import SORA_DURATIONS, SORA_MODELS, VEO_MODELS, TaskSpec

DEFAULT_PRICES: Final[Mapping[str, int]] = {
    "sora-2:10": 10,
    "sora-2:15": 15,
    "veo-flash": 20,
    "veo-pro": 40,
}
PRICE_KEYS: Final = tuple(DEFAULT_PRICES)


def price_key(model: str, duration: int | None) -> str:
    """``sora-2:<seconds>`` for Sora, the model name for Veo."""
    return f"{model}:{duration}" if model in SORA_MODELS else model


class PriceTable:
    """Credits per task; every key of :data:`DEFAULT_PRICES` has a non-negative integer price."""

    def __init__(self, overrides: Mapping[str, int] | None = None) -> None:
        prices = dict(DEFAULT_PRICES)
        for key, value in (overrides or {}).items():
            if key not in DEFAULT_PRICES:
                raise ValueError(
                    f"unknown price key {key!r} (expected one of {', '.join(PRICE_KEYS)})"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"price of {key!r} must be an integer >= 0, got {value!r}")
            prices[key] = value
        self._prices = prices

    def price_of(self, task: TaskSpec) -> int:
        return self._prices[price_key(task.model, task.duration)]

    def as_dict(self) -> dict[str, int]:
        return dict(self._prices)


assert {price_key("sora-2", d) for d in SORA_DURATIONS} | set(VEO_MODELS) == set(DEFAULT_PRICES)
