"""The code location loads and exposes the public Dagster names of SPEC 4."""

from __future__ import annotations

import itertools

import dagster as dg

from grsai_pipeline.definitions import defs


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


def test_assets_form_the_documented_chain_partitioned_by_batches() -> None:
    graph = defs.resolve_asset_graph()
    names = ["pending_tasks", "submitted_tasks", "polled_results", "settled_ledger"]
    keys = [dg.AssetKey(name) for name in names]
    assert set(keys) <= set(graph.get_all_asset_keys())
    for upstream, downstream in itertools.pairwise(keys):
        assert graph.get(downstream).parent_keys == {upstream}
    archived = dg.AssetKey("archived_videos")
    assert graph.get(archived).parent_keys == {dg.AssetKey("polled_results")}
    for key in [*keys, archived]:
        partitions = graph.get(key).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        assert partitions.name == "batches"


def test_job_runs_all_five_assets_in_one_step_in_one_process() -> None:
    job = defs.resolve_job_def("batch_pipeline")
    assert job.executor_def.name == dg.in_process_executor.name
    assert [node.name for node in job.graph.node_defs] == ["batch_lifecycle"]
    produced = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert produced == {
        "pending_tasks",
        "submitted_tasks",
        "polled_results",
        "settled_ledger",
        "archived_videos",
    }


def test_sensor_and_schedule_run_by_default() -> None:
    sensor = defs.resolve_sensor_def("new_batches_sensor")
    schedule = defs.resolve_schedule_def("repoll_processing_schedule")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "* * * * *"
    assert sensor.job_name == "batch_pipeline"
    assert schedule.job_name == "repoll_open_batches"


def test_the_re_polling_job_is_one_op_in_one_process() -> None:
    job = defs.resolve_job_def("repoll_open_batches")
    assert job.executor_def.name == dg.in_process_executor.name
    assert job.partitions_def is None
    assert [node.name for node in job.graph.node_defs] == ["repoll_open_batches_op"]


def test_asset_checks_cover_the_ledger_and_the_videos() -> None:
    checks = {
        (k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys
    }
    assert ("settled_ledger", "ledger_balances") in checks
    assert ("polled_results", "succeeded_tasks_have_video_url") in checks


def test_ui_launched_runs_are_in_one_process_and_create_batch_is_a_job() -> None:
    implicit = defs.resolve_implicit_global_asset_job_def()
    assert implicit.executor_def.name == dg.in_process_executor.name
    create = defs.resolve_job_def("create_batch")
    assert create.executor_def.name == dg.in_process_executor.name
    assert create.partitions_def is None
