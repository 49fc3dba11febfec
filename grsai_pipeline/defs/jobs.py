"""``batch_pipeline``: the four assets of one batch, in one process (no step subprocesses)."""

from __future__ import annotations

import dagster as dg

from grsai_pipeline.defs.assets import BATCH_ASSETS

batch_pipeline = dg.define_asset_job(
    "batch_pipeline",
    selection=dg.AssetSelection.assets(*BATCH_ASSETS),
    executor_def=dg.in_process_executor,
    description="Validate, submit, follow and settle one batch (a partition per batch).",
)
