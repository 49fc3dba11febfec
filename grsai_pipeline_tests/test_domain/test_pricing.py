"""SPEC 1: prices per model (and per duration for sora-2), with overrides."""

from __future__ import annotations

from typing import Any

import pytest

from grsai_pipeline.domain.pricing import DEFAULT_PRICES, PriceTable
from grsai_pipeline.domain.tasks import validate_task


def price(table: PriceTable, **task: Any) -> int:
    return table.price_of(validate_task({"prompt": "a cat", **task}))


def test_default_price_keys_cover_every_model_and_sora_duration() -> None:
    assert set(DEFAULT_PRICES) == {"sora-2:10", "sora-2:15", "veo-flash", "veo-pro"}
    assert all(isinstance(v, int) and v >= 0 for v in DEFAULT_PRICES.values())


@pytest.mark.parametrize(
    ("task", "key"),
    [
        ({"model": "sora-2"}, "sora-2:10"),
        ({"model": "sora-2", "duration": 10}, "sora-2:10"),
        ({"model": "sora-2", "duration": 15}, "sora-2:15"),
        ({"model": "veo-flash"}, "veo-flash"),
        ({"model": "veo-pro", "aspect_ratio": "9:16"}, "veo-pro"),
    ],
)
def test_default_price_of_each_task(task: dict[str, Any], key: str) -> None:
    assert price(PriceTable(), **task) == DEFAULT_PRICES[key]


def test_defaults_are_the_documented_figures() -> None:
    table = PriceTable()
    assert price(table, model="sora-2") == 10
    assert price(table, model="sora-2", duration=15) == 15
    assert price(table, model="veo-flash") == 20
    assert price(table, model="veo-pro") == 40
    assert table.as_dict() == dict(DEFAULT_PRICES)


def test_overrides_change_only_their_keys() -> None:
    table = PriceTable({"sora-2:15": 33, "veo-pro": 0})
    assert price(table, model="sora-2", duration=15) == 33
    assert price(table, model="veo-pro") == 0
    assert price(table, model="sora-2", duration=10) == DEFAULT_PRICES["sora-2:10"]
    assert price(table, model="veo-flash") == DEFAULT_PRICES["veo-flash"]


def test_as_dict_is_a_copy() -> None:
    table = PriceTable()
    table.as_dict()["veo-pro"] = 1
    assert price(table, model="veo-pro") == DEFAULT_PRICES["veo-pro"]


@pytest.mark.parametrize("key", ["sora-2", "sora-2:12", "veo3.1-fast", "VEO-PRO"])
def test_unknown_price_key_is_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="unknown price key") as info:
        PriceTable({key: 5})
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("value", [-1, -100, 1.5, "10", True, None])
def test_price_that_is_not_a_non_negative_integer_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match=">= 0") as info:
        PriceTable({"veo-flash": value})  # type: ignore[dict-item]
    assert "veo-flash" in str(info.value)
