"""Shared fixtures: real databases (SQLite files and the PostgreSQL server), the simulator
over loopback HTTP, and the environment a run reads its settings from.

PostgreSQL tests find the server through ``GRSAI_TEST_POSTGRES_URL`` (a psycopg2 URL of a
database the user may create databases from) and skip with the reason when it is unset, unless
``GRSAI_REQUIRE_POSTGRES=1`` (CI), where a missing server is an error instead.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from grsai_pipeline.config import Settings
from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer
from grsai_pipeline.store import db as store_db
from grsai_pipeline.store.migrate import upgrade_schema

PG_URL_ENV = "GRSAI_TEST_POSTGRES_URL"
REQUIRE_PG_ENV = "GRSAI_REQUIRE_POSTGRES"
# Distinctive, so that a test can search every output and table for it.
TEST_API_KEY = "sk-test-7Qf2xK9pL4vR8mN3"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Settings a test must not inherit from the developer's shell: every variable Settings reads
# (a list written out by hand had missed three of them).
_SETTING_NAMES = tuple(field.alias for field in Settings.model_fields.values() if field.alias)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the shell, and no ``.env`` file from the checkout is read."""
    for name in _SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def default_sigterm() -> None:
    """Every test starts with SIGTERM's default action. A process inherits an ignored signal,
    and in the whole suite some earlier test left SIGTERM ignored in its worker: Dagster's
    compute-log ``tail`` processes then outlived their ``terminate()``, and an in-process run
    waited 30 s for each of its two (seen: ``SigIgn`` 0x4007 on the orphaned tails)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def postgres_admin_url() -> str | None:
    return os.environ.get(PG_URL_ENV) or None


def require_postgres() -> str:
    url = postgres_admin_url()
    if url is None:
        if os.environ.get(REQUIRE_PG_ENV) == "1":
            pytest.fail(f"{PG_URL_ENV} is not set but {REQUIRE_PG_ENV}=1 requires PostgreSQL tests")
        pytest.skip(
            f"PostgreSQL tests need {PG_URL_ENV} (e.g. postgresql+psycopg2://postgres@127.0.0.1/postgres)"
        )
    return url


class PostgresDatabases:
    """Fresh databases on the test server, cloned from one migrated template."""

    def __init__(self, admin_url: str) -> None:
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.base_url = sa.engine.make_url(admin_url)
        self.template = f"grsai_tpl_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []
        # A test's database is dropped in the background while the next test runs (a drop
        # waits on the disk; 550 of them at the end of the suite took half a minute).
        self._released: queue.Queue[str | None] = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_released, daemon=True)
        self._dropper.start()

    def url_of(self, name: str) -> str:
        return self.base_url.set(database=name).render_as_string(hide_password=False)

    def create(self, *, migrated: bool = True) -> str:
        name = f"grsai_t_{uuid.uuid4().hex[:12]}"
        template = f" TEMPLATE {self.template}" if migrated else ""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}{template}")
        self.created.append(name)
        return self.url_of(name)

    def make_template(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {self.template}")
        engine = sa.create_engine(self.url_of(self.template))
        upgrade_schema(engine)
        engine.dispose()

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def release(self, url: str) -> None:
        """The test that used this database is done with it."""
        name = sa.engine.make_url(url).database
        if name in self.created:
            self.created.remove(name)
            self._released.put(name)

    def _drop_released(self) -> None:
        while (name := self._released.get()) is not None:
            self.drop(name)

    def close(self) -> None:
        self._released.put(None)
        self._dropper.join()
        for name in [*self.created, self.template]:
            self.drop(name)
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(require_postgres())
    databases.make_template()
    yield databases
    databases.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    engine.dispose()
    return path


def _forget_engine(url: str) -> None:
    engine = store_db._ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[str]:
    """A migrated, empty application database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("app") / "app.db"
        shutil.copyfile(sqlite_template, path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_databases").create()
    yield url
    _forget_engine(url)
    if request.param == "postgresql":
        request.getfixturevalue("postgres_databases").release(url)


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    return store_db.get_engine(database_url)


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A fast simulator on a loopback port that expects TEST_API_KEY; plain prompts succeed."""
    config = SimulatorConfig(
        api_key=TEST_API_KEY,
        latency_s=(0.001, 0.005),
        generation_s=(0.2, 0.5),
        mix={"succeeded": 1.0},
        seed=1234,
    )
    with SimulatorServer(config) as server:
        yield server


def pipeline_settings(database_url: str, base_url: str) -> dict[str, str]:
    """The environment of a fast run against the simulator: short intervals and budgets."""
    return {
        "GRSAI_API_KEY": TEST_API_KEY,
        "GRSAI_BASE_URL": base_url,
        "GRSAI_DATABASE_URL": database_url,
        "GRSAI_POLL_INTERVAL_S": "0.1",
        "GRSAI_POLL_BUDGET_S": "20",
        "GRSAI_MAX_CONCURRENCY": "8",
        "GRSAI_HTTP_TIMEOUT_S": "2",
        "GRSAI_RETRY_BUDGET_S": "1",
        "GRSAI_BACKOFF_BASE_S": "0.01",
        "GRSAI_BACKOFF_MAX_S": "0.05",
    }


def e2e_settings(database_url: str, base_url: str, tmp_path: Path) -> dict[str, str]:
    """``pipeline_settings`` plus a Dagster home and the short budgets of the fault tests."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return pipeline_settings(database_url, base_url) | {
        "DAGSTER_HOME": str(home),
        "GRSAI_HTTP_TIMEOUT_S": "0.5",
        "GRSAI_NOT_FOUND_GRACE_S": "0.5",
        "MAX_TASK_RETRIES": "2",
    }


@pytest.fixture
def pipeline_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, simulator: SimulatorServer
) -> dict[str, str]:
    """Settings in the environment, as a deployment sets them, pointing at the simulator."""
    env = pipeline_settings(database_url, simulator.base_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """moto's S3-compatible server on a loopback port, and the settings s3fs reads (in this
    process's environment, so commands started from it read them too)."""
    import s3fs

    # Here, not at the top: e2e/conftest.py imports this module.
    from grsai_pipeline_tests.e2e.conftest import free_port, wait_for

    port = free_port()
    log = tmp_path / "moto.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [Path(sys.executable).with_name("moto_server"), "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(endpoint, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "moto_server", log)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        httpx.put(f"{endpoint}/archive-bucket").raise_for_status()
        # fsspec keeps one S3FileSystem per set of arguments: none may point at an older server.
        s3fs.S3FileSystem.clear_instance_cache()
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=10)


# Tests that start `dagster dev`, the daemon or a browser: each keeps a core busy for a minute,
# so they run one after another on one test process (pytest-xdist's loadgroup).
HEAVY_MODULES = frozenset(
    {"test_dagster_dev", "test_many_batches", "test_postgres_deployment", "test_ui_browser",
     "test_make_dev", "test_ui_second_day", "test_production_topology"}
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in HEAVY_MODULES:
            item.add_marker(pytest.mark.xdist_group("dagster"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many tests ran against each database, so a CI log shows PostgreSQL was used,
    and the figures tests recorded (``record_property("figures", ...)``)."""
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == "figures":
                terminalreporter.write_line(str(value))
    for database in ("sqlite", "postgresql"):
        counts = {
            outcome: sum(
                1
                for report in terminalreporter.stats.get(outcome, [])
                if getattr(report, "when", "call") in ("call", "setup")
                and f"[{database}" in report.nodeid
            )
            for outcome in ("passed", "failed", "skipped", "error")
        }
        summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
        if summary:
            terminalreporter.write_line(f"application database {database}: {summary}")
