"""The batch's asset checks, each with a description that says what failing means, and the
fields of their results, for a batch's own run and the re-polling run alike.

Each check is partitioned like its asset, so every result names its batch: the check's
Partitions tab lists each batch's latest result, and its history has a partition column (issue
24). The asset's partition page does not list checks; the ``checks`` table in each
materialization's metadata (defs/reports.py) names that batch's results there.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from typing import Any

import dagster as dg

from grsai_pipeline.defs.partitions import partitioned_check
from grsai_pipeline.store.batches import BatchView
from grsai_pipeline.store.outcomes import BatchOutcomes

POLLED_KEY = dg.AssetKey("polled_results")
SETTLED_KEY = dg.AssetKey("settled_ledger")

VIDEO_CHECK = partitioned_check(
    "succeeded_tasks_have_video_url",
    POLLED_KEY,
    "Fails when a task is succeeded but has no video_url: its user is charged for "
    "a video we cannot hand over (each such task is named). A bug or a bad write, never the "
    "API's doing: answers without a URL fail their task instead.",
)
LEDGER_CHECK = partitioned_check(
    "ledger_balances",
    SETTLED_KEY,
    "Fails when the batch's reserved, charged or refunded credits, or its user's "
    "balance or held credits, differ from what its credit_ledger entries add up to (each "
    "difference is named; `grsai-pipeline db verify` checks every account). 'Execution "
    "failed' is not that: it means the run stopped before the check could look (a bad key, "
    "a missing setting, an unknown batch); the run's error says why, and the ledger is "
    "unchanged.",
)
TASKS_CHECK = partitioned_check(
    "all_tasks_succeeded",
    SETTLED_KEY,
    "Warns (does not fail the run) when some of the batch's tasks failed: the "
    "failed ones are refunded, and the metadata groups them by reason and says how many a "
    "backfill of this partition would retry (generation errors, exhausted submits, time-outs).",
)


def video_check(missing: list[int]) -> dict[str, Any]:
    return {
        "passed": not missing,
        "description": f"{len(missing)} succeeded task(s) without a video_url (listed by index)"
        if missing
        else "every succeeded task has its video_url",
        "metadata": {"tasks_without_video": dg.MetadataValue.json(missing)},
    }


def ledger_check(problems: list[str]) -> dict[str, Any]:
    return {
        "passed": not problems,
        "description": f"the ledger does not match: {problems[0]}"
        if problems
        else "the batch's credits and its user's balance match the ledger",
        "metadata": {"problems": dg.MetadataValue.json(problems)},
    }


def tasks_check(view: BatchView, outcomes: BatchOutcomes) -> dict[str, Any]:
    """WARN when a task failed: how many, by reason, and how many a backfill would retry."""
    failed = view.counts.get("failed", 0)
    reasons = ", ".join(f"{g.reason} {g.tasks}" for g in outcomes.failures)
    return {
        "passed": failed == 0,
        "severity": dg.AssetCheckSeverity.WARN,
        "description": (
            f"{failed} of {view.total_tasks} task(s) failed ({reasons}); "
            f"a backfill would retry {outcomes.retryable}"
            + (f" ({outcomes.used_up} out of retries: final)" if outcomes.used_up else "")
            if failed
            else f"no task failed ({view.counts.get('succeeded', 0)} succeeded so far)"
        ),
        "metadata": {
            "tasks_failed": failed,
            "failed_tasks_a_backfill_would_retry": outcomes.retryable,
            "failed_tasks_out_of_retries": outcomes.used_up,
            "failures_by_reason": dg.MetadataValue.json(
                {
                    g.reason: {"tasks": g.tasks, "retryable": g.retryable, "used_up": g.used_up}
                    for g in outcomes.failures
                }
            ),
        },
    }
