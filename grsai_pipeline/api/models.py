"""The JSON shapes of the HTTP API, from which ``/openapi.json`` is made.

``BatchOut`` is also ``batch status --json`` (and ``BatchSummary`` each item of ``batch list
--json``), so the command line and the API cannot drift apart. Timestamps are ISO 8601 with
their UTC offset, as ``datetime.isoformat`` writes them.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt, WithJsonSchema

from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.domain.tasks import ASPECT_RATIOS, MAX_PROMPT_CHARS, MODELS, SORA_DURATIONS
from grsai_pipeline.store.accounts import MAX_BALANCE, Account
from grsai_pipeline.store.batches import BatchView
from grsai_pipeline.store.cancels import Cancel
from grsai_pipeline.store.ledger import LedgerLine

MAX_TASKS: Final = 10_000
MAX_USER_ID_CHARS: Final = 255

Timestamp = Annotated[
    datetime,
    PlainSerializer(lambda at: at.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# What a task may hold (SPEC 2). Only "a JSON object" is enforced here: a task that breaks a
# rule is stored failed with INVALID_INPUT and reserves nothing, as from `batch create`.
TASK_SCHEMA: Final = {
    "type": "object",
    "description": (
        "A video task (SPEC 2). A task that breaks a rule is stored as failed with an "
        "error_message starting INVALID_INPUT: and costs nothing; the others are reserved."
    ),
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
        "model": {"type": "string", "enum": list(MODELS)},
        "aspect_ratio": {"type": "string", "enum": list(ASPECT_RATIOS)},
        "duration": {"type": "integer", "enum": list(SORA_DURATIONS)},
        "reference_url": {"type": "string", "format": "uri"},
        "meta": {
            "type": "object",
            "description": "Model extras passed on: Veo's reference images and frames.",
            "properties": {
                "urls": {"type": "array", "items": {"type": "string", "format": "uri"}},
                "firstFrameUrl": {"type": "string", "format": "uri"},
                "lastFrameUrl": {"type": "string", "format": "uri"},
            },
            "additionalProperties": True,
        },
    },
    "required": ["prompt", "model"],
}
TaskJson = Annotated[dict[str, Any], WithJsonSchema(TASK_SCHEMA)]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_CHARS)
    tasks: list[TaskJson] = Field(min_length=1, max_length=MAX_TASKS)


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(gt=0, le=MAX_BALANCE)


# A writer of rows may store "queued", which means pending (SPEC 1).
TaskStatusName = Literal["pending", "queued", "processing", "succeeded", "failed"]


class TaskOut(BaseModel):
    id: str
    batch_index: int
    status: TaskStatusName
    model: str | None
    video_url: str | None
    error_message: str | None
    attempts: int
    progress: int
    price: int
    possible_duplicates: int
    archived_url: str | None
    archived_at: Timestamp | None
    video_bytes: int | None
    video_sha256: str | None
    archive_error: str | None
    reservation: int = Field(
        description="1 for the task's first reservation, one more per retry by backfill "
        "(the ledger's reservation number); attempts counts the submits of this one."
    )


class BatchSummary(BaseModel):
    batch_id: str
    user_id: str
    status: BatchStatus
    total_tasks: int
    counts: dict[str, int]
    progress_percent: float
    reserved_credits: int
    charged_credits: int
    refunded_credits: int
    possible_duplicates: int
    retried_by_backfill: int = Field(description="Tasks retried by backfill at least once.")
    created_at: Timestamp
    settled_at: Timestamp | None
    cancelled_at: Timestamp | None

    @classmethod
    def of(cls, view: BatchView) -> Self:
        """The batch as shown (with its tasks, read from the view's own, for ``BatchOut``)."""
        return cls.model_validate(view, from_attributes=True)


class BatchOut(BatchSummary):
    tasks: list[TaskOut]


class BatchPage(BaseModel):
    batches: list[BatchSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next, older page; null on the last page."
    )


class CancelOut(BaseModel):
    batch_id: str
    cancelled: bool = Field(description="False when there was nothing to cancel (see unchanged).")
    unchanged: str | None
    cancelled_tasks: int
    refunded_credits: int
    still_running: int = Field(description="Tasks at the API that finish and settle as usual.")
    settled: bool

    @classmethod
    def of(cls, done: Cancel) -> CancelOut:
        return cls(**asdict(done), cancelled=done.unchanged is None)


class CreditsOut(BaseModel):
    user_id: str
    balance: int = Field(description="Spendable credits.")
    held: int = Field(description="Credits reserved for work not yet settled.")
    updated_at: Timestamp

    @classmethod
    def of(cls, account: Account) -> CreditsOut:
        return cls(
            user_id=account.user_id,
            balance=account.balance,
            held=account.held,
            updated_at=account.updated_at,
        )


class LedgerEntryOut(BaseModel):
    id: int
    transaction_id: str
    kind: Literal["grant", "reserve", "charge", "refund"]
    amount: int
    batch_job_id: str | None
    video_task_id: str | None
    batch_index: int | None
    reservation: int | None
    created_at: Timestamp
    balance: int = Field(description="The account's balance after this entry.")
    held: int = Field(description="The account's held credits after this entry.")

    @classmethod
    def of(cls, line: LedgerLine) -> LedgerEntryOut:
        return cls(
            **{name: getattr(line.entry, name) for name in _ENTRY_FIELDS},
            balance=line.balance,
            held=line.held,
        )


_ENTRY_FIELDS: Final = (
    "id",
    "transaction_id",
    "kind",
    "amount",
    "batch_job_id",
    "video_task_id",
    "batch_index",
    "reservation",
    "created_at",
)


class LedgerPage(BaseModel):
    user_id: str
    entries: list[LedgerEntryOut] = Field(description="Oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next, newer page; null on the last page."
    )


class Problem(BaseModel):
    """RFC 9457 problem details; ``detail`` is the command line's one-line message."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = Field(
        default=None, description="The request field, parameter or header refused, if one."
    )
