"""SPEC 7: a `new_batches_sensor` tick with 1,000 new batches, and a
`repoll_processing_schedule` tick with 1,000 open batches (one run asked for), on a real
Dagster instance.

    python benchmarks/sensor_tick.py [--batches 1000]

Each tick is evaluated as the daemon does (the definitions' own resources, an instance on
disk) and then applied (partitions added). Figures: seconds per tick, runs requested.
Set GRSAI_DATABASE_URL to use PostgreSQL instead of a SQLite file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grsai-bench-"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ.setdefault("GRSAI_DATABASE_URL", f"sqlite:///{work}/app.db")
    os.environ["DAGSTER_HOME"] = str(home)

    from grsai_pipeline.config import load_settings
    from grsai_pipeline.definitions import defs
    from grsai_pipeline.store.accounts import grant_credits
    from grsai_pipeline.store.batches import create_batch
    from grsai_pipeline.store.db import get_engine
    from grsai_pipeline.store.migrate import upgrade_schema

    settings = load_settings()
    engine = get_engine(settings.database_url)
    upgrade_schema(engine)
    user = f"bench-{os.getpid()}"
    grant_credits(engine, user, 100 * args.batches)
    started = time.monotonic()
    for n in range(args.batches):
        tasks = [{"prompt": f"batch {n} task {i}", "model": "sora-2"} for i in range(3)]
        create_batch(engine, user, tasks, settings.price_table)
    print(f"{args.batches} batches of 3 tasks created in {time.monotonic() - started:.1f} s")

    instance = dg.DagsterInstance.get()  # the one in DAGSTER_HOME
    sensor = defs.resolve_sensor_def("new_batches_sensor")
    cursor = None
    for tick in ("first", "repeated"):
        started = time.monotonic()
        context = dg.build_sensor_context(
            instance_ref=instance.get_ref(), cursor=cursor, definitions=defs,
            resources=defs.resources,
        )  # fmt: skip
        data = sensor.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            keys = list(request.partition_keys)
            instance.add_dynamic_partitions(request.partitions_def_name, keys)
        cursor = data.cursor
        print(f"sensor tick ({tick}): {time.monotonic() - started:.2f} s, "
              f"{len(data.run_requests or [])} runs requested")  # fmt: skip

    schedule = defs.resolve_schedule_def("repoll_processing_schedule")
    started = time.monotonic()
    with dg.build_schedule_context(
        instance=instance, repository_def=defs.get_repository_def(), resources=defs.resources,
        scheduled_execution_time=datetime.now(UTC),
    ) as context:  # fmt: skip
        data = schedule.evaluate_tick(context)
    runs = len(data.run_requests or [])
    print(f"schedule tick: {time.monotonic() - started:.2f} s, "
          f"{runs} run(s) requested for {args.batches} open batches")  # fmt: skip


if __name__ == "__main__":
    main()
