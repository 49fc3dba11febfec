"""Fixtures of the command-line tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from grsai_pipeline.store import db as store_db


@pytest.fixture(autouse=True)
def forget_cli_engines() -> Iterator[None]:
    """Commands called in this process cache an engine per URL (some relative to the working
    directory of one test): close the ones a test opened, so none outlives it."""
    before = set(store_db._ENGINES)
    yield
    for url in set(store_db._ENGINES) - before:
        engine = store_db._ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()
