"""Running the code location's job the way `grsai-pipeline run` and the daemon do."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from grsai_pipeline.definitions import defs

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_batch(
    instance: dg.DagsterInstance,
    batch_id: str,
    *,
    budget_s: float | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of ``batch_pipeline`` for the batch's partition (added if missing), with the
    ``tags`` its launcher gives it (none: as launched from the UI)."""
    if not instance.has_dynamic_partition("batches", batch_id):
        instance.add_dynamic_partitions("batches", [batch_id])
    config: dict[str, Any] = {"ops": {"batch_lifecycle": {"config": {"budget_s": budget_s}}}}
    return defs.resolve_job_def("batch_pipeline").execute_in_process(
        run_config=config | QUIET,
        instance=instance,
        partition_key=batch_id,
        raise_on_error=False,
        tags=tags,
    )


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Metadata of each asset's materialization in the run, by asset name."""
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        found[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()
        }
    return found


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def standby_tick(instance: dg.DagsterInstance) -> dg.SensorResult:
    """One tick of ``repoll_standby_sensor``."""
    context = dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
    )
    return defs.resolve_sensor_def("repoll_standby_sensor").evaluate_tick(context)


def sensor_tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    """Evaluate one tick and apply what the daemon applies: new partitions and the cursor."""
    sensor = defs.resolve_sensor_def("new_batches_sensor")
    context = dg.build_sensor_context(
        instance_ref=instance.get_ref(),
        cursor=cursor,
        definitions=defs,
        resources=defs.resources,
    )
    data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        keys = list(request.partition_keys)
        if isinstance(request, dg.DeleteDynamicPartitionsRequest):
            for key in keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
        else:
            instance.add_dynamic_partitions(request.partitions_def_name, keys)
    return data


def schedule_tick(instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], str | None]:
    schedule = defs.resolve_schedule_def("repoll_processing_schedule")
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
        resources=defs.resources,
    )
    data = schedule.evaluate_tick(context)
    return list(data.run_requests or []), data.skip_message


def start_run(instance: dg.DagsterInstance, job_name: str, tags: dict[str, str]) -> str:
    """A run the daemon launched and that Dagster sees as still going; its id."""
    job = defs.resolve_job_def(job_name)
    run = instance.create_run_for_job(job, tags=tags)
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=job.name, message="start"
        ),
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    return run.run_id
