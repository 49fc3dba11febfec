"""The video task as users write it, and the validation rules of SPEC section 2.

A task that breaks a rule raises :class:`InvalidTask`, whose message starts with
``INVALID_INPUT:`` and names the field and the rule. Valid tasks become a :class:`TaskSpec`
with the defaults applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from grsai_pipeline.errors import InvalidTask

SORA_MODELS: Final = ("sora-2",)
VEO_MODELS: Final = ("veo-flash", "veo-pro")
MODELS: Final = SORA_MODELS + VEO_MODELS
ASPECT_RATIOS: Final = ("9:16", "16:9")
SORA_DURATIONS: Final = (10, 15)
DEFAULT_SORA_DURATION: Final = 10
DEFAULT_ASPECT_RATIO: Final = {"sora-2": "9:16", "veo-flash": "16:9", "veo-pro": "16:9"}
MAX_PROMPT_CHARS: Final = 4000
MAX_VEO_URLS: Final = 3
TASK_FIELDS: Final = ("prompt", "model", "reference_url", "aspect_ratio", "duration", "meta")


@dataclass(frozen=True)
class TaskSpec:
    """A valid task with its defaults applied; ``prompt`` is exactly as the user wrote it."""

    prompt: str
    model: str
    aspect_ratio: str
    duration: int | None
    reference_url: str | None
    meta: dict[str, Any] | None

    @property
    def is_sora(self) -> bool:
        return self.model in SORA_MODELS

    @property
    def first_frame_url(self) -> str | None:
        return (self.meta or {}).get("firstFrameUrl")

    @property
    def last_frame_url(self) -> str | None:
        return (self.meta or {}).get("lastFrameUrl")

    @property
    def reference_urls(self) -> list[str]:
        """Veo reference images: ``meta.urls``, else ``reference_url`` (SPEC 3)."""
        urls = (self.meta or {}).get("urls")
        if urls:
            return list(urls)
        return [self.reference_url] if self.reference_url else []


def validate_task(raw: object, *, allow_unknown_fields: bool = False) -> TaskSpec:
    """Check one task against every rule of SPEC 2 and apply defaults.

    ``allow_unknown_fields`` is for rows read back from the database, which carry other columns;
    a batch file is strict so that a typo such as ``aspectRatio`` is reported, not ignored.
    """
    if not isinstance(raw, Mapping):
        raise InvalidTask("task", "must be a JSON object")
    if not allow_unknown_fields:
        for key in raw:
            if key not in TASK_FIELDS:
                raise InvalidTask(str(key), f"unknown field (expected {', '.join(TASK_FIELDS)})")

    prompt = _check_prompt(raw.get("prompt"))
    model = raw.get("model")
    if model is None:
        raise InvalidTask("model", "is required")
    if model not in MODELS:
        raise InvalidTask("model", f"must be one of {', '.join(MODELS)}")

    aspect_ratio = raw.get("aspect_ratio")
    if aspect_ratio is None:
        aspect_ratio = DEFAULT_ASPECT_RATIO[model]
    elif aspect_ratio not in ASPECT_RATIOS:
        raise InvalidTask("aspect_ratio", f"must be {' or '.join(ASPECT_RATIOS)}")

    duration = raw.get("duration")
    if model in SORA_MODELS:
        if duration is None:
            duration = DEFAULT_SORA_DURATION
        elif isinstance(duration, bool) or duration not in SORA_DURATIONS:
            raise InvalidTask("duration", "must be 10 or 15 (seconds) for sora-2")
    elif duration is not None:
        raise InvalidTask("duration", "is for sora-2 only; Veo models take no duration")

    reference_url = raw.get("reference_url")
    if reference_url is not None:
        _check_url("reference_url", reference_url)

    meta = _check_meta(raw.get("meta"))
    return TaskSpec(
        prompt=prompt,
        model=model,
        aspect_ratio=aspect_ratio,
        duration=int(duration) if duration is not None else None,
        reference_url=reference_url,
        meta=meta,
    )


def _check_prompt(prompt: object) -> str:
    if prompt is None:
        raise InvalidTask("prompt", "is required")
    if not isinstance(prompt, str):
        raise InvalidTask("prompt", "must be a string")
    if not prompt.strip():
        raise InvalidTask("prompt", "must not be empty or only whitespace")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidTask(
            "prompt", f"must be at most {MAX_PROMPT_CHARS} characters (got {len(prompt)})"
        )
    _check_storable_text("prompt", prompt)
    return prompt


def _check_storable_text(field: str, text: str) -> None:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in text:
        raise InvalidTask(field, "must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTask(field, "must be valid Unicode text (no lone surrogates)") from None


def _check_url(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidTask(field, "must be an http(s) URL string")
    _check_storable_text(field, value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise InvalidTask(field, "must be an http(s) URL")
    return value


def _check_meta(meta: object) -> dict[str, Any] | None:
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise InvalidTask("meta", "must be a JSON object")
    for key in ("firstFrameUrl", "lastFrameUrl"):
        if meta.get(key) is not None:
            _check_url(f"meta.{key}", meta[key])
    urls = meta.get("urls")
    if urls is not None:
        if not isinstance(urls, list):
            raise InvalidTask("meta.urls", "must be a list of http(s) URLs")
        if len(urls) > MAX_VEO_URLS:
            raise InvalidTask(
                "meta.urls", f"must hold at most {MAX_VEO_URLS} URLs (got {len(urls)})"
            )
        for i, url in enumerate(urls):
            _check_url(f"meta.urls[{i}]", url)
    return dict(meta)
