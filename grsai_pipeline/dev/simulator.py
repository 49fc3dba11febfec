"""A local Grsai-compatible API for demos, tests and benchmarks (``grsai-pipeline simulator``).

It speaks the wire format of SPEC 3 over real HTTP and is strict about it: a request body that
does not match the documented models gets HTTP 400, so drift in the client shows up in tests.

Outcomes of a generation come from a seeded random mix, or from a directive in the prompt:
``[sim:error]``, ``[sim:input_moderation]``, ``[sim:output_moderation]``, ``[sim:no_url]``,
``[sim:api_error]`` (submit answered with a business error), ``[sim:violation]`` (a final status
SPEC 3 does not name, as integrators report), ``[sim:lost]`` (the API forgets
the task: ``-22`` forever) and ``[sim:succeeded]``. A comma list applies per submission of the
same prompt: ``[sim:error,succeeded]`` fails the first attempt and succeeds the second.

A submit whose ``webHook`` is a URL (not ``"-1"``) is called back there: once half-way with
its progress, once at its end, each with the body a poll would answer (``{"code", "msg",
"data"}``). A ``[sim:lost]`` task is never called back.

Faults are injected on demand over HTTP: ``POST /_sim/faults`` with rules such as
``{"endpoint": "submit", "status": 503, "times": 2}`` (see :class:`FaultRule`).
``GET /_sim/stats`` tells what the simulator received; ``POST /_sim/reset`` forgets it all.
With ``log_polls``, ``GET /_sim/polls`` lists when each task was polled (``DELETE`` clears it).

Generation times are ``generation_s`` (uniform) by default; with ``realistic`` they are drawn
per model with a long tail and the progress rises noisily, sometimes stuck or coarse (the mix
is in :mod:`grsai_pipeline.dev.generation`); ``time_scale`` divides every generation time, so
the same shapes run faster. ``GET /_sim/tasks`` tells each task's model, outcome, progress kind,
when it was made and ended upstream, and when a poll first told its end (wall clock, the clock
of ``/_sim/polls``).

A succeeded task's result URL is ``GET /_sim/videos/<id>.mp4`` on the simulator itself: an
MP4 container of ``video_bytes`` bytes, public (no key), from the moment the task finishes
until ``video_ttl_s`` later (then 404, as Grsai's URLs expire); faults hit it as ``"video"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from grsai_pipeline.dev.generation import (
    PROGRESS_KINDS,
    REALISTIC_DURATIONS,
    REALISTIC_PROGRESS_MIX,
    DurationModel,
    ProgressCurve,
    draw_duration,
    draw_progress,
    linear_progress,
)
from grsai_pipeline.dev.server import BackgroundServer
from grsai_pipeline.grsai.wire import (
    POLL_PATH,
    POLLING_MODE_WEBHOOK,
    SORA_SUBMIT_PATH,
    VEO_SUBMIT_PATH,
    SoraSubmitRequest,
    VeoSubmitRequest,
)

DIRECTIVE = re.compile(r"\[sim:([a-z_,]+)\]")
REQUIRED_KEYS = {
    "SoraSubmitRequest": {
        "model",
        "prompt",
        "aspectRatio",
        "duration",
        "size",
        "webHook",
        "shutProgress",
    },
    "VeoSubmitRequest": {"model", "prompt", "aspectRatio", "webHook", "shutProgress"},
}
DEFAULT_MIX = {
    "succeeded": 0.80,
    "input_moderation": 0.04,
    "output_moderation": 0.04,
    "error": 0.06,
    "no_url": 0.03,
    "api_error": 0.03,
}


class FaultRule(BaseModel):
    """One injected fault. It hits requests of ``endpoint`` whose prompt (the submitted one, or
    the polled task's) contains ``prompt_contains``, ``times`` times (None: until cleared).

    The answer is, in order of precedence: if ``status`` is set, that HTTP status with ``body``
    (raw text) and ``Retry-After``; else, if ``code`` is set, an HTTP 200 JSON answer
    ``{"code": code, "msg": msg}``; else the normal answer. Either comes ``delay_s`` late; a
    late submit is accepted first, so a client that times out has still created the task.
    """

    model_config = ConfigDict(extra="forbid")

    endpoint: Literal["submit", "poll", "video", "any"] = "any"
    prompt_contains: str | None = None
    status: int | None = Field(None, ge=100, le=599)
    body: str | None = None
    retry_after: str | None = None
    code: int | None = None
    msg: str = "error"
    delay_s: float = Field(0.0, ge=0)
    times: int | None = Field(None, ge=1)


class SimulatorConfig(BaseModel):
    """Behaviour of the simulator; every field can be changed at run time (``/_sim/config``)."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = None
    latency_s: tuple[float, float] = (0.01, 0.05)
    generation_s: tuple[float, float] = (1.0, 3.0)
    not_found_window_s: float = 0.0
    mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int | None = None
    # Keep a log of every poll (when, which task), served at GET /_sim/polls (benchmarks).
    log_polls: bool = False
    # The videos at the result URLs (GET /_sim/videos/<id>.mp4): their size, and how long
    # after the task finished they stay (Grsai's URLs expire after about two hours).
    video_bytes: int = Field(64 * 1024, ge=16)
    video_ttl_s: float | None = None
    # A pause between 1 MiB chunks of a video: a slow CDN (tests kill a download half-way).
    video_chunk_delay_s: float = Field(0.0, ge=0)
    # Realistic generations (issue 25): durations per model (``durations``, lognormal, real
    # seconds) and progress of the kinds in ``progress_mix``, instead of ``generation_s`` and a
    # linear progress. Each task is drawn from its own generator, seeded by ``seed``, its model,
    # its prompt and how many times that prompt was submitted: the same batch gives the same
    # tasks whatever the order its submits arrive in (the outcome too, in this mode).
    realistic: bool = False
    durations: dict[str, DurationModel] = Field(default_factory=lambda: dict(REALISTIC_DURATIONS))
    progress_mix: dict[str, float] = Field(default_factory=lambda: dict(REALISTIC_PROGRESS_MIX))
    # Divides every generation time (``generation_s`` or ``durations``); not the latency, the
    # not-found window or the videos' lifetime.
    time_scale: float = Field(1.0, gt=0)

    @field_validator("progress_mix")
    @classmethod
    def _known_kinds(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = set(mix) - set(PROGRESS_KINDS)
        if unknown:
            raise ValueError(f"unknown progress kinds {sorted(unknown)}; known: {PROGRESS_KINDS}")
        if not mix or any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("progress_mix needs non-negative weights, some positive")
        return mix


@dataclass
class _SimTask:
    id: str
    model: str
    prompt: str
    outcome: str
    created: float
    duration_s: float
    progress: ProgressCurve = field(default_factory=linear_progress)

    @property
    def ends_after_s(self) -> float:
        """How long after it was made its poll answers it final."""
        # Input moderation answers early, before any video exists (see _poll_data).
        return self.duration_s / 5 if self.outcome == "input_moderation" else self.duration_s


@dataclass
class _State:
    config: SimulatorConfig
    rng: random.Random
    tasks: dict[str, _SimTask] = field(default_factory=dict)
    faults: list[tuple[FaultRule, list[int]]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    submits_by_prompt: Counter[str] = field(default_factory=Counter)
    # Per prompt, the wall-clock times a submit of it arrived (tests: "nothing sent after X").
    submit_times: dict[str, list[float]] = field(default_factory=dict)
    # Callbacks under way; held here because the event loop keeps only weak references.
    callbacks: set[asyncio.Task[None]] = field(default_factory=set)
    # Per task id, the wall-clock times it was polled at (only with ``log_polls``).
    polls: dict[str, list[float]] = field(default_factory=dict)
    # Per task id, when a poll first answered it final (wall clock): when the client was told.
    told: dict[str, float] = field(default_factory=dict)


class Simulator:
    """The simulator's state and its Starlette app."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        config = config or SimulatorConfig()
        self.state = _State(config=config, rng=random.Random(config.seed))
        self.app = Starlette(
            routes=[
                Route(SORA_SUBMIT_PATH, self._submit, methods=["POST"]),
                Route(VEO_SUBMIT_PATH, self._submit, methods=["POST"]),
                Route(POLL_PATH, self._poll, methods=["POST"]),
                Route("/_sim/faults", self._faults, methods=["POST", "DELETE"]),
                Route("/_sim/config", self._config, methods=["POST"]),
                Route("/_sim/stats", self._stats, methods=["GET"]),
                Route("/_sim/polls", self._polls, methods=["GET", "DELETE"]),
                Route("/_sim/tasks", self._tasks, methods=["GET"]),
                Route("/_sim/reset", self._reset, methods=["POST"]),
                Route("/_sim/videos/{name}", self._video, methods=["GET"]),
            ]
        )

    # --- the API -------------------------------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        state = self.state
        state.stats["submit_requests"] += 1
        body = await _json_body(request)
        prompt = body.get("prompt") if isinstance(body, dict) else None
        early, late_by = await self._before_answer(
            request, "submit", prompt if isinstance(prompt, str) else ""
        )
        if early is not None:
            return early
        model_type = SoraSubmitRequest if request.url.path == SORA_SUBMIT_PATH else VeoSubmitRequest
        try:
            submitted = model_type.model_validate(body, strict=True)
            _check_keys(body, model_type)
        except (ValidationError, ValueError) as exc:
            state.stats["bad_requests"] += 1
            return JSONResponse({"code": 400, "msg": f"bad request: {exc}"[:300]}, status_code=400)
        state.submits_by_prompt[submitted.prompt] += 1
        state.submit_times.setdefault(submitted.prompt, []).append(time.time())
        config = state.config
        rng = self._task_rng(submitted.model, submitted.prompt) if config.realistic else state.rng
        outcome = self._outcome_for(submitted.prompt, rng)
        if outcome == "api_error":
            state.stats["submits_rejected"] += 1
            return JSONResponse({"code": -2, "msg": "prompt rejected by upstream policy"})
        if config.realistic:
            duration_s = draw_duration(rng, submitted.model, config.durations, config.time_scale)
            progress = draw_progress(rng, config.progress_mix)
        else:
            duration_s = rng.uniform(*config.generation_s) / config.time_scale
            progress = linear_progress()
        task = _SimTask(
            id=f"sim-{uuid.uuid4()}",
            model=submitted.model,
            prompt=submitted.prompt,
            outcome=outcome,
            created=time.monotonic(),
            duration_s=duration_s,
            progress=progress,
        )
        state.tasks[task.id] = task
        state.stats["submits_accepted"] += 1
        if submitted.webHook != POLLING_MODE_WEBHOOK and task.outcome != "lost":
            base_url = str(request.base_url).rstrip("/")
            callback = asyncio.create_task(self._call_back(task, submitted.webHook, base_url))
            state.callbacks.add(callback)
            callback.add_done_callback(state.callbacks.discard)
        # Like a slow API: the task exists upstream before the late answer leaves, so a client
        # that gives up waiting has made a task it does not know about.
        await asyncio.sleep(late_by)
        return JSONResponse({"code": 0, "msg": "success", "data": {"id": task.id}})

    async def _poll(self, request: Request) -> Response:
        state = self.state
        state.stats["poll_requests"] += 1
        body = await _json_body(request)
        task_id = body.get("id") if isinstance(body, dict) else None
        if state.config.log_polls and isinstance(task_id, str):
            state.polls.setdefault(task_id, []).append(time.time())
        task = state.tasks.get(task_id) if isinstance(task_id, str) else None
        early, late_by = await self._before_answer(request, "poll", task.prompt if task else "")
        if early is not None:
            return early
        await asyncio.sleep(late_by)
        if not isinstance(body, dict) or set(body) != {"id"} or not isinstance(task_id, str):
            return JSONResponse({"code": 400, "msg": "bad request: body must be {id}"}, 400)
        elapsed = time.monotonic() - task.created if task else 0.0
        if task is None or task.outcome == "lost" or elapsed < state.config.not_found_window_s:
            return JSONResponse({"code": -22, "msg": "task not found"})
        data = _poll_data(task, elapsed, str(request.base_url).rstrip("/"))
        if data["status"] != "running":
            state.told.setdefault(task.id, time.time())
        return JSONResponse({"code": 0, "msg": "success", "data": data})

    async def _video(self, request: Request) -> Response:
        """A task's video: real bytes, streamed, until its URL expires (then 404)."""
        state = self.state
        state.stats["video_requests"] += 1
        task = state.tasks.get(request.path_params["name"].removesuffix(".mp4"))
        early, late_by = await self._before_answer(request, "video", task.prompt if task else "")
        if early is not None:
            return early
        await asyncio.sleep(late_by)
        if task is None or task.outcome != "succeeded":
            return Response(status_code=404)
        finished = task.created + task.duration_s
        ttl = state.config.video_ttl_s
        if time.monotonic() < finished or (ttl is not None and time.monotonic() > finished + ttl):
            return Response(status_code=404)
        size, pause = state.config.video_bytes, state.config.video_chunk_delay_s

        async def body() -> AsyncIterator[bytes]:
            for chunk in video_content(task.id, size):
                yield chunk
                await asyncio.sleep(pause)

        return StreamingResponse(
            body(), media_type="video/mp4", headers={"content-length": str(size)}
        )

    async def _before_answer(
        self, request: Request, endpoint: str, prompt: str
    ) -> tuple[Response | None, float]:
        """Latency, authentication (not of videos: their URLs are public) and injected faults,
        in that order. Returns a fault's answer, or None and how long to hold back the normal
        answer."""
        config = self.state.config
        await asyncio.sleep(self.state.rng.uniform(*config.latency_s))
        expected = f"Bearer {config.api_key}"
        needs_key = config.api_key is not None and endpoint != "video"
        if needs_key and request.headers.get("authorization") != expected:
            self.state.stats["unauthorized"] += 1
            return JSONResponse({"code": 401, "msg": "invalid api key"}, status_code=401), 0.0
        rule = self._take_fault(endpoint, prompt)
        if rule is None:
            return None, 0.0
        self.state.stats[f"faults_{endpoint}"] += 1
        if rule.status is None and rule.code is None:
            return None, rule.delay_s
        await asyncio.sleep(rule.delay_s)
        if rule.status is not None:
            headers = {"Retry-After": rule.retry_after} if rule.retry_after else None
            text = (
                rule.body if rule.body is not None else f'{{"code": {rule.status}, "msg": "fault"}}'
            )
            return Response(text, status_code=rule.status, headers=headers), 0.0
        return JSONResponse({"code": rule.code, "msg": rule.msg}), 0.0

    def _take_fault(self, endpoint: str, prompt: str) -> FaultRule | None:
        for rule, remaining in self.state.faults:
            if rule.endpoint not in (endpoint, "any"):
                continue
            if rule.prompt_contains is not None and rule.prompt_contains not in prompt:
                continue
            if rule.times is not None:
                if remaining[0] <= 0:
                    continue
                remaining[0] -= 1
            return rule
        return None

    def _outcome_for(self, prompt: str, rng: random.Random) -> str:
        directive = DIRECTIVE.search(prompt)
        if directive:
            sequence = directive.group(1).split(",")
            nth = self.state.submits_by_prompt[prompt] - 1
            return sequence[min(nth, len(sequence) - 1)]
        mix = self.state.config.mix
        return rng.choices(list(mix), weights=list(mix.values()))[0]

    def _task_rng(self, model: str, prompt: str) -> random.Random:
        """The generator of one realistic task: from the seed, the model, the prompt and how
        many times it was submitted (unseeded: from the simulator's generator)."""
        seed = self.state.config.seed
        if seed is None:
            return random.Random(self.state.rng.getrandbits(64))
        nth = self.state.submits_by_prompt[prompt]
        return random.Random(f"{seed}\x00{model}\x00{nth}\x00{prompt}")

    async def _call_back(self, task: _SimTask, url: str, base_url: str) -> None:
        """Post the task's progress half-way and its end to ``url``, as Grsai's webHook does."""
        stats = self.state.stats
        async with httpx.AsyncClient(timeout=10) as client:
            for fraction in (0.5, 1.0):
                await asyncio.sleep(max(0.0, task.created + fraction * task.duration_s
                                        - time.monotonic()))  # fmt: skip
                # The task as it was at that moment (asyncio may wake a little early or late).
                data = _poll_data(task, fraction * task.duration_s, base_url)
                body = {"code": 0, "msg": "success", "data": data}
                try:
                    answer = await client.post(url, json=body)
                except httpx.HTTPError:
                    stats["callbacks_failed"] += 1
                    continue
                stats["callbacks_sent"] += 1
                if answer.is_error:
                    stats[f"callbacks_refused_{answer.status_code}"] += 1

    # --- control -------------------------------------------------------------------------

    def add_fault(self, rule: FaultRule) -> None:
        self.state.faults.append((rule, [rule.times or 0]))

    def clear_faults(self) -> None:
        self.state.faults.clear()

    async def _faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
            return JSONResponse({"faults": 0})
        body = await _json_body(request)
        try:
            rules = [
                FaultRule.model_validate(r) for r in (body if isinstance(body, list) else [body])
            ]
        except ValidationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        for rule in rules:
            self.add_fault(rule)
        return JSONResponse({"faults": len(self.state.faults)})

    async def _config(self, request: Request) -> Response:
        body = await _json_body(request)
        try:
            merged = self.state.config.model_dump() | (body if isinstance(body, dict) else {})
            self.state.config = SimulatorConfig.model_validate(merged)
        except ValidationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(self.state.config.model_dump())

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _polls(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.state.polls.clear()
        return JSONResponse(self.state.polls)

    async def _tasks(self, request: Request) -> Response:
        return JSONResponse(self.task_records())

    def task_records(self) -> dict[str, dict[str, Any]]:
        """Per task id: its model, prompt, outcome, progress kind, duration, when it was made,
        when it ended (its poll answers it final from then on) and when a poll first told it
        (None until one did); wall clock, as ``/_sim/polls``."""
        offset = time.time() - time.monotonic()
        return {
            task.id: {
                "model": task.model,
                "prompt": task.prompt,
                "outcome": task.outcome,
                "progress_kind": task.progress.kind,
                "duration_s": task.duration_s,
                "made": offset + task.created,
                "ended": offset + task.created + task.ends_after_s,
                "told": self.state.told.get(task.id),
            }
            for task in self.state.tasks.values()
        }

    async def _reset(self, request: Request) -> Response:
        config = self.state.config
        for callback in list(self.state.callbacks):
            callback.cancel()
        self.state = _State(config=config, rng=random.Random(config.seed))
        return JSONResponse({"reset": True})

    def submit_times(self) -> dict[str, list[float]]:
        """When each prompt's submits arrived (wall clock), in arrival order."""
        return {prompt: list(times) for prompt, times in self.state.submit_times.items()}

    def stats(self) -> dict[str, Any]:
        """Counters, and how many times each prompt was submitted (to count duplicates)."""
        return {
            **self.state.stats,
            "tasks": len(self.state.tasks),
            "submits_by_prompt": dict(self.state.submits_by_prompt),
        }


def video_content(task_id: str, size: int) -> Iterator[bytes]:
    """The video of a task: an MP4 container (an ``ftyp`` box, then one ``mdat`` box) of
    ``size`` bytes whose payload is derived from the task id, produced in 1 MiB chunks."""
    header = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 512, b"isom", b"mp41")
    header += struct.pack(">I4s", size - 24, b"mdat")
    block = hashlib.sha256(task_id.encode()).digest() * (1024 * 1024 // 32)
    yield header[:size]
    left = size - len(header)
    while left > 0:
        yield block[: min(left, len(block))]
        left -= len(block)


def _poll_data(task: _SimTask, elapsed: float, base_url: str) -> dict[str, Any]:
    fraction = elapsed / task.duration_s if task.duration_s > 0 else 1.0
    # Input moderation answers early, before any video exists.
    if task.outcome == "input_moderation":
        fraction *= 5
    data: dict[str, Any] = {"id": task.id, "progress": task.progress.at(fraction)}
    if fraction < 1:
        return data | {"status": "running", "failure_reason": "", "error": ""}
    if task.outcome in ("succeeded", "no_url"):
        data |= {"status": "succeeded", "progress": 100, "failure_reason": "", "error": ""}
        url = f"{base_url}/_sim/videos/{task.id}.mp4" if task.outcome == "succeeded" else None
        if task.model == "sora-2":
            data["results"] = [{"url": url}] if url else []
        else:
            data["url"] = url or ""
        return data
    if task.outcome == "violation":
        return data | {"status": "violation", "failure_reason": "", "error": "usage policy"}
    errors = {
        "input_moderation": "the prompt breaks the content policy",
        "output_moderation": "the video broke the content policy",
    }
    return data | {
        "status": "failed",
        "failure_reason": task.outcome,
        "error": errors.get(task.outcome, "generation failed upstream"),
    }


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _check_keys(body: dict[str, Any], model_type: type[BaseModel]) -> None:
    """Every documented key that is always sent is present; optional ones are never empty."""
    extra = set(body) - set(model_type.model_fields)
    if extra:
        raise ValueError(f"unexpected keys {sorted(extra)}")
    always = REQUIRED_KEYS[model_type.__name__]
    missing = always - set(body)
    if missing:
        raise ValueError(f"missing keys {sorted(missing)}")
    empty = [key for key, value in body.items() if value in (None, "", [])]
    if empty:
        raise ValueError(f"empty optional keys {sorted(empty)} must be left out")


class SimulatorServer(BackgroundServer):
    """Serve a :class:`Simulator` on a loopback port in a background thread.

    ``with SimulatorServer() as sim: sim.base_url`` gives a live URL; used by the demo, tests
    and benchmarks. Port 0 picks a free port.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(config)
        super().__init__(self.simulator.app, host, port)


def serve(host: str, port: int, config: SimulatorConfig | None = None) -> None:
    """Run the simulator in the foreground (the ``simulator`` command)."""
    uvicorn.run(Simulator(config).app, host=host, port=port, log_level="info", lifespan="off")
