"""The Dagster code location: ``defs`` is what ``workspace.yaml`` loads."""

from __future__ import annotations

import dagster as dg

from grsai_pipeline.defs.assets import BATCH_ASSETS
from grsai_pipeline.defs.creation import create_batch
from grsai_pipeline.defs.jobs import batch_pipeline
from grsai_pipeline.defs.repolling import repoll_open_batches
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.retrying import retry_failed_batches
from grsai_pipeline.defs.schedules import repoll_processing_schedule
from grsai_pipeline.defs.sensors import new_batches_sensor
from grsai_pipeline.defs.standby import repoll_standby_sensor

defs = dg.Definitions(
    assets=BATCH_ASSETS,
    jobs=[batch_pipeline, repoll_open_batches, create_batch, retry_failed_batches],
    sensors=[new_batches_sensor, repoll_standby_sensor],
    schedules=[repoll_processing_schedule],
    resources={"app_db": AppDatabase(), "grsai": GrsaiApi()},
    # "Materialize" in the UI runs the implicit asset job: in one process too, like
    # batch_pipeline (one step per run; a subprocess per step costs seconds for nothing).
    executor=dg.in_process_executor,
)
