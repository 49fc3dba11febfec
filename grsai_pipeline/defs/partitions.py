"""One dynamic partition per batch; the key is ``batch_jobs.id``."""

from __future__ import annotations

import dagster as dg
from sqlalchemy.exc import IntegrityError

BATCHES = "batches"
batches = dg.DynamicPartitionsDefinition(name=BATCHES)


def ensure_partition(instance: dg.DagsterInstance, batch_id: str) -> None:
    """Add the batch's partition unless it exists; another runner may add it at the same time."""
    if instance.has_dynamic_partition(BATCHES, batch_id):
        return
    try:
        instance.add_dynamic_partitions(BATCHES, [batch_id])
    except IntegrityError:
        if not instance.has_dynamic_partition(BATCHES, batch_id):
            raise
