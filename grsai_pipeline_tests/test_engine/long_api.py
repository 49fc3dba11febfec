"""An API whose generations outlast the test (every task stays at the API), every poll logged,
with the settings of a fast run pointing at it: for the tests of who polls what, and when."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings


@contextmanager
def long_running_api(
    monkeypatch: pytest.MonkeyPatch, database_url: str, *, seed: int, env: dict[str, str]
) -> Iterator[SimulatorServer]:
    """The simulator, and ``pipeline_settings`` with ``env`` on top in the environment."""
    config = SimulatorConfig(
        api_key=TEST_API_KEY, latency_s=(0.005, 0.005), generation_s=(3600, 3600),
        mix={"succeeded": 1.0}, seed=seed, log_polls=True,
    )  # fmt: skip
    with SimulatorServer(config) as sim:
        for name, value in (pipeline_settings(database_url, sim.base_url) | env).items():
            monkeypatch.setenv(name, value)
        yield sim
