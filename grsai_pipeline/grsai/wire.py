"""Pydantic models of the Grsai wire format, exactly as SPEC section 3 lists it.

Requests are built here and only here (:func:`submit_request`); answers are parsed here and
turned into the neutral :class:`~grsai_pipeline.domain.states.RemoteResult`.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from grsai_pipeline.domain.states import RemoteResult
from grsai_pipeline.domain.tasks import TaskSpec

SORA_SUBMIT_PATH: Final = "/v1/video/sora-video"
VEO_SUBMIT_PATH: Final = "/v1/video/veo"
POLL_PATH: Final = "/v1/draw/result"
POLLING_MODE_WEBHOOK: Final = "-1"
VEO_API_MODELS: Final = {"veo-flash": "veo3.1-fast", "veo-pro": "veo3.1-pro"}


# Field names below are the API's camelCase wire names; their order is the documented one.


class SoraSubmitRequest(BaseModel):
    """Body of ``POST /v1/video/sora-video``."""

    model: Literal["sora-2"]
    prompt: str
    aspectRatio: str
    duration: int
    size: Literal["small"] = "small"
    url: str | None = None
    webHook: str
    shutProgress: bool = False


class VeoSubmitRequest(BaseModel):
    """Body of ``POST /v1/video/veo``."""

    model: Literal["veo3.1-fast", "veo3.1-pro"]
    prompt: str
    aspectRatio: str
    firstFrameUrl: str | None = None
    lastFrameUrl: str | None = None
    urls: list[str] | None = Field(None, max_length=3)
    webHook: str
    shutProgress: bool = False


def submit_request(
    task: TaskSpec, webhook: str = POLLING_MODE_WEBHOOK
) -> tuple[str, dict[str, Any]]:
    """The path and JSON body that submit ``task``; optional keys are left out when empty."""
    body: SoraSubmitRequest | VeoSubmitRequest
    if task.is_sora:
        body = SoraSubmitRequest(
            model="sora-2",
            prompt=task.prompt,
            aspectRatio=task.aspect_ratio,
            duration=task.duration or 10,
            url=task.reference_url or None,
            webHook=webhook,
        )
        return SORA_SUBMIT_PATH, body.model_dump(exclude_none=True)
    body = VeoSubmitRequest(
        model=VEO_API_MODELS[task.model],
        prompt=task.prompt,
        aspectRatio=task.aspect_ratio,
        firstFrameUrl=task.first_frame_url or None,
        lastFrameUrl=task.last_frame_url or None,
        urls=task.reference_urls or None,
        webHook=webhook,
    )
    return VEO_SUBMIT_PATH, body.model_dump(exclude_none=True)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SubmitData(_Lenient):
    id: str


class SubmitResponse(_Lenient):
    """``{"code": 0, "msg": "success", "data": {"id": "..."}}``."""

    code: int
    msg: str = ""
    data: SubmitData | None = None


class VideoResult(_Lenient):
    url: str | None = None


class PollData(_Lenient):
    id: str | None = None
    progress: float | None = None
    status: str | None = None
    failure_reason: str | None = None
    error: str | None = None
    results: list[VideoResult] | None = None  # Sora puts the video here
    url: str | None = None  # Veo puts it here


class PollResponse(_Lenient):
    code: int
    msg: str = ""
    data: PollData | None = None

    def to_result(self, *, is_sora: bool) -> RemoteResult:
        """The answer field by field; the video URL from the one place its model uses."""
        data = self.data or PollData()
        if is_sora:
            video_url = data.results[0].url if data.results else None
        else:
            video_url = data.url
        return RemoteResult(
            code=self.code,
            msg=self.msg,
            status=data.status,
            progress=None if data.progress is None else int(data.progress),
            failure_reason=data.failure_reason,
            error=data.error,
            video_url=video_url,
        )


def parse_callback(body: Any) -> PollResponse:
    """A webHook callback's body: the poll answer (``{"code", "msg", "data"}``) or its ``data``
    alone. Raises pydantic's ValidationError when it is neither."""
    if isinstance(body, dict) and "code" in body:
        return PollResponse.model_validate(body)
    return PollResponse(code=0, data=PollData.model_validate(body))
