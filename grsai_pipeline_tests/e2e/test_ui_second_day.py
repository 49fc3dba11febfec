"""The operator's second day (issue 24), checked in a real browser, in one ``dagster dev``.

Three batches settle beside ``dagster dev`` under ``make dev``'s instance (scripts/
dev-instance.yaml) and the simulator: one with a generation error (``[sim:error]`` fails
every attempt), one with a moderation failure alone, one clean; ``api serve`` runs beside it
with the same database and link secret, and the runs sign links to it. In the UI:

1. ``all_tasks_succeeded`` on ``settled_ledger``: each batch's partition shows that batch's
   result, and the check's execution history has a partition column naming each; the batch's
   own partition page names its results in the materialization's ``checks`` table.
2. Jobs, ``retry_failed_batches``, Launchpad, Launch Run: the first launch retries the
   errored task alone (reservation 2); with ``GRSAI_MAX_BACKFILL_RETRIES=1``, once it has
   failed again, the second marks it final and the third retries nothing.
3. A partition added by hand (Materialize..., "Add a partition") is removed by
   ``new_batches_sensor`` within two of its ticks; the asset page and the Catalog then show
   no failed or missing partition.
4. The clean batch's ``videos`` link on ``archived_videos``, clicked: what the browser
   received is the archived copy (sha256 equal to ``video_tasks.video_sha256``).

Screenshots as in test_ui_browser.py (the tmp dir; ``docs/screenshots`` with
``GRSAI_SAVE_SCREENSHOTS=1``); chromium required the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import InstigatorType
from playwright.sync_api import Locator, Page, expect

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import REPO_ROOT
from grsai_pipeline_tests.e2e.conftest import WORKSPACE, dagster_process, free_port, wait_for
from grsai_pipeline_tests.e2e.test_ui_browser import (
    LOCATION,
    Screenshots,
    batch_row,
    browser_page,
    chromium_path,
    open_link_in_browser,
    partition_url,
    reload_until,
)
from grsai_pipeline_tests.helpers import assert_ledger_invariants, new_batch, rows
from grsai_pipeline_tests.test_api.api_support import served_api

pytestmark = pytest.mark.slow

DEV_INSTANCE = REPO_ROOT / "scripts" / "dev-instance.yaml"
LINK_SECRET = "second-day-link-secret-4c1f9e0a7b"
RETRY_JOB = "retry_failed_batches"
SENSOR = "new_batches_sensor"
JUNK = "6101d629"
FINE = {"prompt": "a calm lake", "model": "sora-2"}
ERRORED = {"prompt": "a glass tips over [sim:error]", "model": "sora-2"}  # fails every time
FLAGGED = {"prompt": "a riot [sim:input_moderation]", "model": "sora-2"}
ASSETS = ("archived_videos", "pending_tasks", "polled_results", "settled_ledger", "submitted_tasks")
FINAL = "(final: retried by backfill 1 time(s), the limit)"
# What each launch of retry_failed_batches says it did (the end of its log).
RETRIED = "1 batch(es) with retryable failures: 1 task(s) retried for 10 credits"
MARKED_FINAL = (
    "1 batch(es) with retryable failures: 0 task(s) retried for 0 credits, 0 short of "
    "credits, 1 out of retries"
)
NOTHING = "0 batch(es) with retryable failures: 0 task(s) retried"
# The Catalog once the hand-added partition is gone: each asset's 3 partitions, none failed or
# missing.
PARTITIONS = re.compile(r"^\d+ partitions?$")
CATALOG_CLEAN = {asset: ("3 partitions", "0", "0") for asset in ASSETS}


def tasks(engine: sa.Engine) -> dict[tuple[str, int], dict[str, Any]]:
    """Every task by (batch, index)."""
    found = rows(
        engine,
        "SELECT batch_job_id, batch_index, id, status, reservation, attempts, failure_kind,"
        " error_message, video_bytes, video_sha256 FROM video_tasks",
    )
    return {(t["batch_job_id"], t["batch_index"]): t for t in found}


def check_tab(page: Page, name: str) -> Locator:
    """A tab of the check's panel (buttons; the asset's own tabs are links of the same names)."""
    return page.locator("button[role=tab]").filter(has_text=name)


def open_launchpad(page: Page, base: str, job: str) -> None:
    """Jobs (in the navigation), the job, its Launchpad, as the README says."""
    page.goto(f"{base}/runs")
    page.locator('a[href="/jobs"]').click()
    page.locator(f'a[href="/locations/{LOCATION}/jobs/{job}"]').click()
    page.get_by_role("tab", name="Launchpad").click()
    expect(page.get_by_text("No errors", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Launch Run")).to_be_enabled()


def launch_from_jobs(page: Page, base: str, job: str) -> str:
    """Jobs, the job, Launchpad, Launch Run; the new run's id."""
    open_launchpad(page, base, job)
    return launch_run(page)


def launch_run(page: Page) -> str:
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/*")
    return page.url.rsplit("/", 1)[-1]


def check_history(page: Page) -> list[tuple[str, str]]:
    """The check's execution history as shown: (partition, description) per result."""
    headers = [h.strip() for h in page.locator("thead th").all_inner_texts()]
    partition, description = headers.index("Partition"), headers.index("Description")
    shown = []
    for row in page.locator("tbody tr").all():
        cells = row.locator(":scope > td")
        shown.append(
            (cells.nth(partition).inner_text().strip(), cells.nth(description).inner_text().strip())
        )
    return shown


def catalog(page: Page) -> dict[str, tuple[str, str, str]]:
    """Per batch asset, what the Catalog's status column shows: how many partitions, failed,
    missing."""
    shown = {}
    for asset in ASSETS:
        # The innermost block holding the asset's link and its partitions count: its row.
        link = page.locator(f'a[href="/assets/{asset}"]')
        partitions = page.get_by_text(PARTITIONS)
        row = page.locator("div").filter(has=link).filter(has=partitions).last
        if not row.count():
            return {}
        count = {
            status: row.locator(f'[aria-label="partition_{status}"]').locator("xpath=..")
            for status in ("failure", "missing")
        }
        shown[asset] = (
            row.get_by_text(PARTITIONS).inner_text().strip(),
            count["failure"].inner_text().strip(),
            count["missing"].inner_text().strip(),
        )
    return shown


def show_run_log(page: Page, base: str, run_id: str, summary: str) -> None:
    """The retrying run's page, a success, its log filtered to what it retried: a line per
    batch and the ``summary``."""
    page.goto(f"{base}/runs/{run_id}")
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    page.locator("input[placeholder^='Filter']").fill("task(s) retried")
    expect(page.get_by_text(summary)).to_be_visible()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_operator_second_day_in_the_browser(
    pipeline_env: dict[str, str],
    database_url: str,
    engine: sa.Engine,
    simulator: SimulatorServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    executable = chromium_path()
    shots = Screenshots(tmp_path / "screenshots")
    errored = new_batch(engine, [FINE, ERRORED], user="ann", credits=100)
    moderated = new_batch(engine, [FLAGGED], user="bo", credits=100)
    clean = new_batch(engine, [FINE], user="cy", credits=100)
    batches = (errored, moderated, clean)

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copyfile(DEV_INSTANCE, dagster_home / "dagster.yaml")  # as scripts/dev.sh does
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent))
    assert dagster
    log = tmp_path / "dagster-dev.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [dagster, "dev", "-w", str(WORKSPACE), "-p", str(port), "-h", "127.0.0.1"]

    def settled() -> bool:
        return all(batch_row(engine, b).get("status") == "settled" for b in batches)

    with (
        ExitStack() as stack,
        served_api(database_url, tmp_path, settings={"GRSAI_LINK_SECRET": LINK_SECRET}) as api,
        dagster_process(
            args,
            {
                **os.environ,
                "DAGSTER_HOME": str(dagster_home),
                "GRSAI_LINK_SECRET": LINK_SECRET,
                "GRSAI_API_PUBLIC_URL": api.base_url,
                "GRSAI_MAX_BACKFILL_RETRIES": "1",
            },
            tmp_path,
            log,
        ),
        browser_page(executable, tmp_path) as page,
    ):
        wait_for(settled, 150, "the sensor's runs to settle the three batches", log)
        # Opened once dagster dev has made the instance's storage (two processes making a
        # new SQLite instance at once may both stamp its schema, and dagster dev then fails).
        instance = stack.enter_context(
            dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
        )
        before = tasks(engine)
        assert before[(errored, 1)]["failure_kind"] == "error"
        assert before[(moderated, 0)]["failure_kind"] == "input_moderation"
        assert before[(clean, 0)]["status"] == "succeeded"
        assert {t["reservation"] for t in before.values()} == {1}

        # 1. all_tasks_succeeded names its batch: each partition shows its own batch's result,
        #    and the check's history has a partition column.
        results = {
            errored: "1 of 2 task(s) failed (error 1); a backfill would retry 1",
            moderated: "1 of 1 task(s) failed (input_moderation 1); a backfill would retry 0",
            clean: "no task failed (1 succeeded so far)",
        }
        page.goto(partition_url(base, errored))
        page.get_by_role("tab", name="Checks").click()
        page.get_by_text("all_tasks_succeeded", exact=True).first.click()
        check_tab(page, "Execution history").click()
        expect(page.get_by_role("columnheader", name="Partition")).to_be_visible()
        for batch_id in results:
            expect(page.locator("tbody tr").filter(has_text=batch_id).first).to_be_visible()
        # Newest first: each batch's latest result is its own; a failure's reason shows only
        # in its own batch's rows (a run that ended before a task did may have said "no task
        # failed (1 succeeded so far)" of the errored batch earlier).
        # A row with neither partition nor description is an execution with no result yet.
        history = [row for row in check_history(page) if row != ("-", "-")]
        latest: dict[str, str] = {}
        for partition, description in history:
            latest.setdefault(partition, description)
        assert latest == results
        reasons = {"(error 1)": errored, "(input_moderation 1)": moderated}
        for partition, description in history:
            named = [batch for reason, batch in reasons.items() if reason in description]
            assert named in ([], [partition]), (partition, description)
        shots.take(page, "check-history-per-batch")
        check_tab(page, "Partitions").click()
        for batch_id in (moderated, clean, errored):  # the errored batch's last, for the shot
            page.get_by_title(batch_id).last.click()  # the list's entry (its key, truncated)
            expect(page.locator(f'span:text-is("{batch_id}")')).to_be_visible()  # its title
            expect(page.get_by_text(results[batch_id], exact=True)).to_be_visible()
            for other, text in results.items():
                if other != batch_id:
                    expect(page.get_by_text(text, exact=True)).to_have_count(0)
        page.mouse.move(0, 0)  # no tooltip over the list
        page.screenshot(path=shots.folder / "check-partition-result.png")
        # The batch's own partition page lists no checks (Dagster 1.13): the `checks` table of
        # its latest materialization names the batch's results there.
        page.goto(partition_url(base, errored))
        checks = page.locator("tr").filter(has=page.get_by_text("checks", exact=True)).last
        expect(checks).to_be_visible()
        tasks_result = checks.locator("tr").filter(has_text="all_tasks_succeeded")
        expect(tasks_result).to_contain_text("warning")
        expect(tasks_result).to_contain_text(results[errored])
        expect(checks.locator("tr").filter(has_text="ledger_balances")).to_contain_text("passed")
        checks.evaluate("row => row.scrollIntoView({block: 'center'})")
        shots.take(page, "partition-checks-metadata")

        # 4. The clean batch's video link (archived_videos' `videos`), clicked: the browser
        #    gets the archived bytes. The bytes of its navigation are read as they arrive
        #    (Chromium's media player keeps no body for Playwright's response.body()).
        video_page = f"{base}/assets/archived_videos?view=partitions&partition={clean}"
        link = page.locator(f'a[href^="{api.base_url}/v1/videos/"]')
        reload_until(page, video_page, lambda: link.count() == 1)
        expect(page.get_by_text("(archived copy)")).to_be_visible()
        href = str(link.get_attribute("href"))
        video = tasks(engine)[(clean, 0)]
        assert href.startswith(f"{api.base_url}/v1/videos/{video['id']}?expires=")
        link.scroll_into_view_if_needed()
        shots.take(page, "archived-video-link")
        received = open_link_in_browser(page, link)
        assert received["status"] == 200
        assert received["content-type"] == "video/mp4"
        assert len(received["body"]) == video["video_bytes"]
        assert hashlib.sha256(received["body"]).hexdigest() == video["video_sha256"]
        shots.folder.joinpath("archived-video-opened.png").write_bytes(page.screenshot())

        # 2. One launch retries the errored batch, and that task alone.
        open_launchpad(page, base, RETRY_JOB)
        page.screenshot(path=shots.folder / "retry-launchpad.png")
        first = launch_run(page)
        launched_at = time.monotonic()
        succeeded(instance, first, log)
        # (The task may be on its way already: a live re-polling run sends it within seconds.)
        retried = {k: t["reservation"] for k, t in tasks(engine).items() if t["reservation"] > 1}
        assert retried == {(errored, 1): 2}
        reserves = rows(
            engine,
            "SELECT video_task_id FROM credit_ledger WHERE kind = 'reserve' AND reservation > 1",
        )
        assert [r["video_task_id"] for r in reserves] == [before[(errored, 1)]["id"]]
        show_run_log(page, base, first, RETRIED)
        shots.take(page, "retry-failed-batches-run")

        # 3. (while the re-polling run sends the retried task) A partition added by hand.
        page.goto(f"{base}/assets/settled_ledger?view=partitions")
        page.get_by_role("button", name="Materialize…").click()
        page.get_by_role("button", name="Confirm").click()  # "also materializes" the others
        launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
        launch.get_by_text("Add a partition", exact=True).click()
        add = page.get_by_role("dialog").filter(has_text="Add a partition for")
        add.get_by_placeholder("name").fill(JUNK)
        page.screenshot(path=shots.folder / "add-a-partition.png")
        added_at = time.time()
        add.get_by_role("button", name="Save").click()
        expect(add).to_be_hidden()  # added (a refusal would say "Could not add partition")
        expect(page.get_by_text("Could not add partition")).to_have_count(0)
        # Leave without launching (Cancel did not always close the dialog in time under CI's
        # load; leaving the page discards it the same way).
        launch.get_by_role("button", name="Cancel").click()
        page.goto(f"{base}/assets")
        removed_by = wait_for(
            lambda: removal_tick(instance, JUNK, added_at), 60, "the sensor to remove it", log
        )
        removed_in = time.time() - added_at
        assert not instance.has_dynamic_partition("batches", JUNK)
        assert not instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": JUNK}))
        assert removed_by <= 2, f"removed by the sensor's tick {removed_by} after it was added"
        reload_until(
            page,
            f"{base}/assets/settled_ledger?view=partitions",
            lambda: page.get_by_text("Missing (0)", exact=True).count() == 1,
        )
        expect(page.get_by_text("Failed (0)", exact=True)).to_be_visible()
        expect(page.get_by_text(JUNK)).to_have_count(0)
        reload_until(page, f"{base}/assets", lambda: catalog(page) == CATALOG_CLEAN)
        expect(page.get_by_text(JUNK)).to_have_count(0)
        # The sensor's tick that removed it says so, and its log names the key.
        page.goto(f"{base}/locations/{LOCATION}/sensors/{SENSOR}")
        tick = page.locator("tr").filter(has_text="1 partition deleted")
        expect(tick).to_have_count(1)
        tick.get_by_role("button", name="View logs").click()
        tick_log = page.get_by_role("dialog").filter(has_text=f"Logs for {SENSOR}")
        expect(tick_log).to_contain_text(
            f"removing 1 partition(s) that name no batch (added by hand?): {JUNK}"
        )
        shots.take(page, "sensor-removed-partition")
        tick_log.get_by_role("button", name="Done").click()

        # 2, continued. The re-polling run sends the task; it fails again, the batch settles.
        def failed_again() -> bool:
            task = tasks(engine)[(errored, 1)]
            return task["status"] == "failed" and settled()

        wait_for(failed_again, 150, "the re-polling run to settle the retried batch", log)
        resettled_in = time.monotonic() - launched_at
        again = tasks(engine)[(errored, 1)]
        assert (again["reservation"], again["failure_kind"]) == (2, "error")
        second = launch_from_jobs(page, base, RETRY_JOB)
        succeeded(instance, second, log)
        final = tasks(engine)[(errored, 1)]
        assert final["status"] == "failed" and final["reservation"] == 2
        assert final["failure_kind"] == "retries_exhausted"
        assert final["error_message"].endswith(FINAL), final["error_message"]
        show_run_log(page, base, second, MARKED_FINAL)
        settled_tasks = tasks(engine)
        third = launch_from_jobs(page, base, RETRY_JOB)
        succeeded(instance, third, log)
        assert tasks(engine) == settled_tasks
        assert max(t["reservation"] for t in settled_tasks.values()) == 2
        assert rows(engine, "SELECT * FROM credit_ledger WHERE reservation > 2") == []
        assert all(batch_row(engine, b)["status"] == "settled" for b in batches)
        show_run_log(page, base, third, NOTHING)
        assert_ledger_invariants(engine)

    shots.publish()
    record_property(
        "figures",
        f"second day: the hand-added partition removed by the sensor's tick {removed_by} after "
        f"it was added ({removed_in:.1f} s); the retried batch settled again "
        f"{resettled_in:.1f} s after the launch",
    )


def succeeded(instance: dg.DagsterInstance, run_id: str, log: Path) -> None:
    """Wait for the run to end; it succeeded."""

    def ended() -> dg.DagsterRunStatus | None:
        run = instance.get_run_by_id(run_id)
        return run.status if run is not None and run.is_finished else None

    assert wait_for(ended, 90, f"run {run_id} to end", log) == dg.DagsterRunStatus.SUCCESS


def removal_tick(instance: dg.DagsterInstance, key: str, since: float) -> int | None:
    """Which tick of the sensor (1 = the first still at work at ``since``) deleted the partition
    ``key``; None before one has."""
    (state,) = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.name == SENSOR
    ]
    # A tick that started just before ``since`` may read the partitions after it (one did, in
    # a suite run: it removed the key and the test, counting from ``since``, never saw it).
    started_before = instance.get_ticks(
        state.instigator_origin_id, state.selector_id, after=since - 60
    )
    ticks = sorted(
        (t for t in started_before if t.end_timestamp is None or t.end_timestamp > since),
        key=lambda tick: tick.timestamp,
    )
    for n, tick in enumerate(ticks, start=1):
        for result in tick.tick_data.dynamic_partitions_request_results:
            if key in (result.deleted_partitions or []):
                return n
    return None
