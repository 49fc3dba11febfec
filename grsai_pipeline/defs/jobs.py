"""``batch_pipeline``: the four assets of one batch, in one process (no step subprocesses)."""

from __future__ import annotations

import dagster as dg

from grsai_pipeline.defs.assets import BATCH_ASSETS

BATCH_ID_TAG = "batch_id"
TRIGGER_TAG = "grsai/trigger"

batch_pipeline = dg.define_asset_job(
    "batch_pipeline",
    selection=dg.AssetSelection.assets(*BATCH_ASSETS),
    executor_def=dg.in_process_executor,
    description="Validate, submit, follow and settle one batch (a partition per batch).",
)


def batch_run_tags(batch_id: str, trigger: str) -> dict[str, str]:
    """Tags of a run of one batch: the batch for filtering in the UI, and what started it."""
    return {BATCH_ID_TAG: batch_id, TRIGGER_TAG: trigger}
