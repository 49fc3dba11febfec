"""One dynamic partition per batch; the key is ``batch_jobs.id``."""

from __future__ import annotations

import dagster as dg

BATCHES = "batches"
batches = dg.DynamicPartitionsDefinition(name=BATCHES)
