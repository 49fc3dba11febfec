"""The operator's day, checked in a real browser (Playwright driving Debian's ``chromium``).

``dagster dev`` starts on a new DAGSTER_HOME beside the demo's batch, which its sensor picks
up and settles, archiving its videos on moto's S3 (``api serve`` beside it, with the link
secret the runs sign with). In the UI: the batch's partition of ``settled_ledger`` shows its
user, counts, credits and failure reasons; a video link of its ``archived_videos`` partition,
clicked, brings the browser the copy on S3 (sha256 equal to ``video_sha256``); ``create_batch``
launched from the launchpad makes a batch that the sensor then settles; and the Runs page
filtered by the tag ``batch_id`` or ``user_id`` finds the launchpad's run and the daemon's
alike.

Screenshots go to the test's tmp dir; with ``GRSAI_SAVE_SCREENSHOTS=1`` they are also copied to
``docs/screenshots`` (the README shows them). Without ``chromium`` the test is skipped, unless
``GRSAI_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from grsai_pipeline.cli.demo import DEMO_CREDITS, DEMO_USER, SAMPLE_BATCH
from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline_tests.conftest import REPO_ROOT
from grsai_pipeline_tests.e2e.conftest import WORKSPACE, dagster_process, free_port, wait_for
from grsai_pipeline_tests.helpers import new_batch, rows
from grsai_pipeline_tests.test_api.api_support import served_api

pytestmark = pytest.mark.slow

REQUIRE_BROWSER_ENV = "GRSAI_REQUIRE_BROWSER"
SAVE_SCREENSHOTS_ENV = "GRSAI_SAVE_SCREENSHOTS"
DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
# The code location of workspace.yaml; its repository is Definitions' `__repository__`.
LOCATION = "grsai_pipeline"

S3_ARCHIVE = "s3://archive-bucket/videos"  # s3_server's bucket
LINK_SECRET = "first-day-link-secret-93d2a6e1f0"

# The README's launchpad example.
UI_USER = "alice"
UI_TASKS = '[{"prompt": "A cinematic video", "model": "sora-2", "duration": 10}]'
LAUNCHPAD_CONFIG = f"user: {UI_USER}\ntasks: '{UI_TASKS}'\nidempotency_key: order-42\n"


def chromium_path() -> str:
    """Debian's chromium (``.ci/run`` installs it; Playwright's own download needs a CDN)."""
    path = shutil.which("chromium")
    if path is None:
        reason = "no chromium on PATH: the browser test drives Debian's (apt-get install chromium)"
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_BROWSER_ENV}=1 requires it")
        pytest.skip(reason)
    return path


@contextmanager
def browser_page(executable: str, debug: Path) -> Iterator[Page]:
    """A headless page; on a failure, what it showed is kept in ``debug`` (PNG and HTML)."""
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(30_000)
            try:
                yield page
            except BaseException:
                page.screenshot(path=debug / "failure.png")
                (debug / "failure.html").write_text(page.content())
                raise
        finally:
            browser.close()


class Screenshots:
    """Each screenshot in the test's tmp dir; copied to docs/screenshots when asked to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.taken: list[Path] = []

    def take(self, page: Page, name: str) -> None:
        page.wait_for_load_state("networkidle")
        path = self.folder / f"{name}.png"
        page.screenshot(path=path)
        self.taken.append(path)

    def publish(self) -> None:
        if os.environ.get(SAVE_SCREENSHOTS_ENV) != "1":
            return
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for path in self.taken:
            shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)


def batch_row(engine: sa.Engine, batch_id: str) -> dict[str, object]:
    found = rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)
    return found[0] if found else {}


def task_counts(engine: sa.Engine, batch_id: str) -> dict[str, int]:
    found = rows(
        engine,
        "SELECT status, COUNT(*) AS n FROM video_tasks WHERE batch_job_id = :b GROUP BY status",
        b=batch_id,
    )
    return {r["status"]: r["n"] for r in found}


def failure_reasons(engine: sa.Engine, batch_id: str) -> set[str]:
    """What the UI groups failures by: the error message up to its first ':'."""
    found = rows(
        engine,
        "SELECT error_message FROM video_tasks WHERE batch_job_id = :b AND status = 'failed'",
        b=batch_id,
    )
    return {(r["error_message"] or "").split(":", 1)[0].strip() for r in found}


def metadata_value(page: Page, label: str) -> str:
    """The value cell of one metadata entry of the materialization shown."""
    row = page.locator("tr").filter(has=page.get_by_text(label, exact=True)).last
    return row.locator(":scope > td").nth(1).inner_text().strip()


def partition_url(base: str, batch_id: str) -> str:
    return f"{base}/assets/settled_ledger?view=partitions&partition={batch_id}"


def runs_url(base: str, tag: str, value: str) -> str:
    # The Runs page keeps its filter in the URL: q[]=tag:<key>=<value>, one q[] per filter.
    return f"{base}/runs?{quote('q[]')}={quote(f'tag:{tag}={value}')}"


def run_rows(page: Page) -> Locator:
    """The rows of the Runs page (a virtualized table of divs, one ``data-index`` per run)."""
    return page.locator("div[data-index]")


def run_row(page: Page, run_id: str) -> Locator:
    return run_rows(page).filter(has=page.locator(f'a[href="/runs/{run_id}"]'))


def wait_for_runs_page(page: Page, url: str, succeeded: int, timeout_s: float = 60) -> None:
    """Load the filtered Runs page again until it lists this many successful runs (a run may
    still be archiving its videos after its batch settled)."""
    deadline = time.monotonic() + timeout_s
    success = run_rows(page).filter(has=page.get_by_text("Success", exact=True))
    while True:
        page.goto(url)
        run_rows(page).first.wait_for()
        if success.count() >= succeeded or time.monotonic() > deadline:
            break
        time.sleep(2)
    expect(success).to_have_count(succeeded)


def archived_videos_text(instance: dg.DagsterInstance, batch_id: str) -> str:
    """The ``videos`` text of the batch's latest ``archived_videos`` materialization."""
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey("archived_videos"), asset_partitions=[batch_id]), 1
    ).records
    if not found or found[0].asset_materialization is None:
        return ""
    videos = found[0].asset_materialization.metadata.get("videos")
    return str(videos.value) if videos is not None else ""


def reload_until(page: Page, url: str, shown: Callable[[], bool], timeout_s: float = 60) -> None:
    """Load ``url`` again until ``shown()`` (the UI reads what it shows when the page loads)."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(url)
        page.wait_for_load_state("networkidle")
        if shown():
            return
        assert time.monotonic() < deadline, f"{url} never showed what was expected"
        time.sleep(1)


def open_link_in_browser(page: Page, link: Locator) -> dict[str, Any]:
    """Click ``link``; the status, content type and body of the document the browser got, read
    through the DevTools protocol's Fetch domain at the response stage (the body as it
    arrived, then handed on unchanged)."""
    cdp = page.context.new_cdp_session(page)
    got: dict[str, Any] = {}

    def paused(event: dict[str, Any]) -> None:
        if event["resourceType"] == "Document" and "body" not in got:
            answer = cdp.send("Fetch.getResponseBody", {"requestId": event["requestId"]})
            body = answer["body"]
            got["body"] = base64.b64decode(body) if answer["base64Encoded"] else body.encode()
            got["status"] = event["responseStatusCode"]
            headers = {h["name"].lower(): h["value"] for h in event["responseHeaders"]}
            got["content-type"] = headers.get("content-type")
        cdp.send("Fetch.continueRequest", {"requestId": event["requestId"]})

    cdp.on("Fetch.requestPaused", paused)
    pattern = {"urlPattern": "*/v1/videos/*", "requestStage": "Response"}
    cdp.send("Fetch.enable", {"patterns": [pattern]})
    try:
        link.click()
        page.wait_for_url("**/v1/videos/**")
        deadline = time.monotonic() + 30
        while "body" not in got:  # Playwright hands over events while it waits
            assert time.monotonic() < deadline, "the video's answer never reached the browser"
            page.wait_for_timeout(100)
    finally:
        cdp.send("Fetch.disable")
        cdp.detach()
    return got


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_operator_day_in_the_browser(
    pipeline_env: dict[str, str],
    database_url: str,
    engine: sa.Engine,
    simulator: SimulatorServer,
    s3_server: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    executable = chromium_path()
    shots = Screenshots(tmp_path / "screenshots")
    # The demo's batch, made the way `grsai-pipeline demo` makes it; the sensor runs it.
    demo_batch = new_batch(engine, SAMPLE_BATCH, user=DEMO_USER, credits=DEMO_CREDITS)
    grant_credits(engine, UI_USER, 100)  # for the batch the launchpad will make

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # Nothing else in the new home: no telemetry, and no "Join the Dagster community" dialog
    # (Dagster's "nux", shown once per instance on 127.0.0.1) over the pages.
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
    )
    # The archive on moto's S3 (AWS_* from s3_server), its copies linked through api serve.
    settings = {"GRSAI_ARCHIVE_URL": S3_ARCHIVE, "GRSAI_LINK_SECRET": LINK_SECRET}
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent))
    assert dagster
    log = tmp_path / "dagster-dev.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [dagster, "dev", "-w", str(WORKSPACE), "-p", str(port), "-h", "127.0.0.1"]

    def settled(batch_id: str) -> bool:
        return batch_row(engine, batch_id).get("status") == "settled"

    with (
        served_api(database_url, tmp_path, settings={"GRSAI_LINK_SECRET": LINK_SECRET}) as api,
        dagster_process(
            args,
            {
                **os.environ,
                **settings,
                "DAGSTER_HOME": str(dagster_home),
                "GRSAI_API_PUBLIC_URL": api.base_url,
            },
            tmp_path,
            log,
        ),
        browser_page(executable, tmp_path) as page,
    ):
        wait_for(lambda: settled(demo_batch), 150, "the sensor's run to settle the batch", log)
        batch = batch_row(engine, demo_batch)
        counts = task_counts(engine, demo_batch)
        reasons = failure_reasons(engine, demo_batch)
        assert "input_moderation" in reasons and counts.get("failed", 0) >= len(reasons)

        # 1. The batch's partition of settled_ledger: user, counts, credits, failure reasons.
        page.goto(partition_url(base, demo_batch))
        # The new webserver's first page: 5 to 8 s on a loaded 2-core machine.
        expect(page.get_by_text("failures_by_reason", exact=True)).to_be_visible(timeout=30_000)
        expected = {
            "user_id": DEMO_USER,
            "batch_status": "settled",
            "tasks_pending": "0",
            "tasks_processing": "0",
            "tasks_succeeded": str(counts.get("succeeded", 0)),
            "tasks_failed": str(counts.get("failed", 0)),
            "credits_reserved": str(batch["reserved_credits"]),
            "credits_charged": str(batch["charged_credits"]),
            "credits_refunded": str(batch["refunded_credits"]),
        }
        assert {label: metadata_value(page, label) for label in expected} == expected
        shots.take(page, "settled-ledger-partition")
        failures_label = page.get_by_text("failures_by_reason", exact=True)
        failures = page.locator("tr").filter(has=failures_label).last
        for reason in reasons:
            expect(failures.get_by_role("cell", name=reason, exact=True)).to_be_visible()
        # The credits above the failures, then the failures by reason.
        credits = page.locator("tr").filter(has=page.get_by_text("credits_reserved", exact=True))
        credits.last.evaluate("row => row.scrollIntoView({block: 'start'})")
        shots.take(page, "settled-ledger-failures")

        # The first video link of the batch's archived_videos partition, clicked: the browser
        # gets the copy the run archived on S3 (the local default: test_ui_second_day.py).
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
            wait_for(
                lambda: "(archived copy)" in archived_videos_text(instance, demo_batch),
                90,
                "the batch's run to archive its videos",
                log,
            )
        page.goto(f"{base}/assets/archived_videos?view=partitions&partition={demo_batch}")
        # Five links make a long text: the page shows it behind "[Show Markdown]".
        videos = page.locator("tr").filter(has=page.get_by_text("videos", exact=True)).last
        videos.get_by_text("[Show Markdown]").click()
        shown = page.get_by_role("dialog")
        link = shown.locator(f'a[href^="{api.base_url}/v1/videos/"]').first
        expect(link).to_be_visible()
        expect(shown.get_by_text("(archived copy)").first).to_be_visible()
        task_id = str(link.get_attribute("href")).split("/v1/videos/")[1].split("?")[0]
        (video,) = rows(engine, "SELECT * FROM video_tasks WHERE id = :t", t=task_id)
        assert video["archived_url"].startswith(f"{S3_ARCHIVE}/"), video["archived_url"]
        received = open_link_in_browser(page, link)
        assert (received["status"], received["content-type"]) == (200, "video/mp4")
        assert len(received["body"]) == video["video_bytes"]
        assert hashlib.sha256(received["body"]).hexdigest() == video["video_sha256"]
        page.screenshot(path=shots.folder / "archived-video-opened-from-s3.png")
        opened = (
            f"first day: a video link of archived_videos clicked, {len(received['body'])} bytes "
            f"from moto's S3, sha256 {video['video_sha256'][:16]}... as video_sha256"
        )

        # 2. create_batch from the launchpad; the sensor then runs the new batch to the end.
        page.goto(f"{base}/locations/{LOCATION}/jobs/create_batch/playground")
        editor = page.locator(".CodeMirror").first
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(LAUNCHPAD_CONFIG)
        expect(page.get_by_text("No errors", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Launch Run")).to_be_enabled()
        shots.take(page, "create-batch-launchpad")
        page.get_by_role("button", name="Launch Run").click()
        page.wait_for_url("**/runs/*")
        ui_run_id = page.url.rsplit("/", 1)[-1]

        def ui_batch() -> str | None:
            found = rows(engine, "SELECT id FROM batch_jobs WHERE user_id = :u", u=UI_USER)
            return found[0]["id"] if found else None

        new_batch_id = wait_for(ui_batch, 60, "the launchpad's run to create the batch", log)
        wait_for(lambda: settled(new_batch_id), 90, "the sensor's run to settle it", log)
        page.goto(partition_url(base, new_batch_id))
        expect(page.get_by_text("credits_charged", exact=True)).to_be_visible()
        shown = {label: metadata_value(page, label) for label in ("user_id", "batch_status")}
        assert shown == {"user_id": UI_USER, "batch_status": "settled"}

        # 3. The Runs page filtered by batch_id, then by user_id: the launchpad's run and the
        #    daemon's alike, and nothing of the other batch. The re-polling run may have settled
        #    the batch before the sensor's next tick; the sensor still gives it its one run.
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:

            def sensor_run_requested() -> bool:
                found = instance.get_run_records(
                    filters=dg.RunsFilter(
                        job_name="batch_pipeline", tags={"batch_id": new_batch_id}
                    )
                )
                return bool(found)

            wait_for(sensor_run_requested, 60, "the sensor's run of the new batch", log)
            records = instance.get_run_records(
                filters=dg.RunsFilter(tags={"batch_id": new_batch_id})
            )
            jobs = {r.dagster_run.run_id: r.dagster_run.job_name for r in records}
            demo_runs = instance.get_run_records(
                filters=dg.RunsFilter(tags={"batch_id": demo_batch})
            )
        assert sorted(jobs.values()) == ["batch_pipeline", "create_batch"]
        assert jobs[ui_run_id] == "create_batch"
        launched_by = {"create_batch": "Manually launched", "batch_pipeline": "new_batches_sensor"}
        for tag, value in (("user_id", UI_USER), ("batch_id", new_batch_id)):
            wait_for_runs_page(page, runs_url(base, tag, value), succeeded=2)
            expect(run_rows(page)).to_have_count(2)
            for run_id, job in jobs.items():
                row = run_row(page, run_id)
                expect(row).to_contain_text(run_id[:8])
                expect(row).to_contain_text(job)
                expect(row).to_contain_text(launched_by[job])
                expect(row).to_contain_text(f"{tag}: {value}")
            for record in demo_runs:
                expect(run_row(page, record.dagster_run.run_id)).to_have_count(0)
        shots.take(page, "runs-filtered-by-batch-id")

    shots.publish()
    record_property("figures", opened)
