"""One dynamic partition per batch; the key is ``batch_jobs.id``."""

from __future__ import annotations

import warnings

import dagster as dg
from sqlalchemy.exc import IntegrityError

BATCHES = "batches"
batches = dg.DynamicPartitionsDefinition(name=BATCHES)


def partitioned_check(name: str, asset: dg.AssetKey, description: str) -> dg.AssetCheckSpec:
    """A check of a batch asset whose every result names its batch (issue 24). Partitioned check
    specs are a preview feature of Dagster 1.13; it is the one way to tie a result to a
    partition, so its warning is expected here and not repeated in every process's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, description=description, partitions_def=batches)


def ensure_partition(instance: dg.DagsterInstance, batch_id: str) -> None:
    """Add the batch's partition unless it exists; another runner may add it at the same time."""
    if instance.has_dynamic_partition(BATCHES, batch_id):
        return
    try:
        instance.add_dynamic_partitions(BATCHES, [batch_id])
    except IntegrityError:
        if not instance.has_dynamic_partition(BATCHES, batch_id):
            raise
