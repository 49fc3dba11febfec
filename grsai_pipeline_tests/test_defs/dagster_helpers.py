"""Running the code location's job the way `grsai-pipeline run` and the daemon do."""

from __future__ import annotations

from typing import Any

import dagster as dg

from grsai_pipeline.definitions import defs

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_batch(
    instance: dg.DagsterInstance, batch_id: str, *, budget_s: float | None = None
) -> dg.ExecuteInProcessResult:
    """One run of ``batch_pipeline`` for the batch's partition (added if missing)."""
    if not instance.has_dynamic_partition("batches", batch_id):
        instance.add_dynamic_partitions("batches", [batch_id])
    config: dict[str, Any] = {"ops": {"batch_lifecycle": {"config": {"budget_s": budget_s}}}}
    return defs.resolve_job_def("batch_pipeline").execute_in_process(
        run_config=config | QUIET,
        instance=instance,
        partition_key=batch_id,
        raise_on_error=False,
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
