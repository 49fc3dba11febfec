"""Runs started in-process (`grsai-pipeline run`) beside each other on one Dagster instance."""

from __future__ import annotations

import multiprocessing as mp
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

ROUNDS = 20


def add_partitions(home: str, keys: list[str], barrier: Barrier, errors: mp.Queue) -> None:
    from grsai_pipeline.cli.dagster_run import ensure_partition

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(home))
    for key in keys:
        barrier.wait(timeout=30)
        try:
            ensure_partition(instance, key)
        except Exception as exc:
            errors.put(f"{type(exc).__name__}: {exc}"[:200])


def test_runners_adding_one_partition_at_the_same_moment_all_go_on(tmp_path: Path) -> None:
    home = str(tmp_path)
    dg.DagsterInstance.from_ref(InstanceRef.from_dir(home)).dispose()
    keys = [str(uuid.uuid4()) for _ in range(ROUNDS)]
    context = mp.get_context("spawn")
    barrier, errors = context.Barrier(3), context.Queue()
    processes = [
        context.Process(target=add_partitions, args=(home, keys, barrier, errors)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    assert [p.exitcode for p in processes] == [0, 0, 0]
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        assert sorted(instance.get_dynamic_partitions("batches")) == sorted(keys)
