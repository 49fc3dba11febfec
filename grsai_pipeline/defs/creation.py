"""``create_batch``: a batch launched from the Dagster UI's launchpad, with the same
validation and reservation as ``grsai-pipeline batch create``.

The launchpad's config is flat::

    user: alice
    tasks: '[{"prompt": "A cinematic video", "model": "sora-2"}]'   # or a YAML list
    idempotency_key: order-42                                      # optional

The run writes the batch (its tasks, and one reservation per valid task, all or nothing), adds
its partition and tags itself with the batch and its user; ``new_batches_sensor`` then
requests the batch's run. Bad input fails the run with one line naming the field, and writes
nothing.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from collections.abc import Iterator
from typing import Any

import dagster as dg

from grsai_pipeline.defs.partitions import ensure_partition
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import CREATE_JOB, batch_run_tags
from grsai_pipeline.domain.batch_file import parse_batch_json, task_list
from grsai_pipeline.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    StoreError,
)
from grsai_pipeline.store.batches import create_batch as write_batch

CREATE_OP = "create_batch_op"

LAUNCHPAD_CONFIG = {
    "user": dg.Field(str, description="The user whose credits pay for the batch."),
    "tasks": dg.Field(
        dg.Any,
        description="The batch file's JSON: a list of task objects (SPEC 2), as a JSON string "
        "or as a YAML list.",
    ),
    "idempotency_key": dg.Field(
        dg.Noneable(str),
        is_required=False,
        default_value=None,
        description="Makes a retry safe: the same key with the same tasks returns the first "
        "batch and writes nothing; with other tasks the run fails and writes nothing.",
    ),
}


def read_tasks(value: object) -> list[dict[str, Any]]:
    """The ``tasks`` config as a batch file's tasks, by ``batch create``'s rules."""
    if isinstance(value, str):
        return parse_batch_json(value, "tasks")
    return task_list(value, "tasks")


@dg.op(name=CREATE_OP, config_schema=LAUNCHPAD_CONFIG, out=dg.Out(dg.Nothing))
def create_batch_op(
    context: dg.OpExecutionContext, app_db: AppDatabase, grsai: GrsaiApi
) -> Iterator[dg.Output[None]]:
    """Write the batch and reserve its credits, add its partition, and tag this run."""
    config = context.op_config
    user: str = config["user"]
    try:
        tasks = read_tasks(config["tasks"])
        new = write_batch(
            app_db.engine(),
            user,
            tasks,
            grsai.settings().price_table,
            idempotency_key=config.get("idempotency_key"),
        )
    except IdempotencyConflict as exc:
        # Its message names the command line's flag; here the field is the config's.
        raise dg.Failure(description=f"idempotency_key {exc.rule}", allow_retries=False) from None
    except (InvalidInput, InsufficientCredits, StoreError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    ensure_partition(context.instance, new.batch_id)
    # Whoever launched it (the launchpad, mostly), the trigger says the batch came from the UI.
    tags = batch_run_tags(new.batch_id, "ui", user)
    context.instance.add_run_tags(
        context.run_id, {k: v for k, v in tags.items() if k not in context.run.tags}
    )
    replayed = " (replayed: this key's first batch; nothing written)" if new.replayed else ""
    context.log.info(
        f"batch {new.batch_id}: {new.total_tasks} task(s), {new.invalid_tasks} invalid, "
        f"{new.reserved_credits} credits reserved{replayed}; new_batches_sensor requests its run"
    )
    yield dg.Output(
        None,
        metadata={
            "batch_id": new.batch_id,
            "user_id": user,
            "tasks": new.total_tasks,
            "tasks_valid": new.total_tasks - new.invalid_tasks,
            "tasks_invalid": new.invalid_tasks,
            "credits_reserved": new.reserved_credits,
            "replayed": new.replayed,
        },
    )


@dg.config_mapping(config_schema=LAUNCHPAD_CONFIG)
def _launchpad(values: dict[str, Any]) -> dict[str, Any]:
    return {"ops": {CREATE_OP: {"config": values}}}


@dg.job(
    name=CREATE_JOB,
    config=_launchpad,
    executor_def=dg.in_process_executor,
    description="Creates a batch from the launchpad (user, tasks as the batch file's JSON, "
    "optional idempotency_key) with the same validation and reservation as `batch create`; "
    "new_batches_sensor then runs it.",
)
def create_batch() -> None:
    create_batch_op()
