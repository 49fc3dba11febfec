"""Issue 25: polls per task and how fresh the end of a video is seen, adaptive polling against
fixed-interval polling at the same interval, on the same simulated tasks, in one run.

    python benchmarks/polling.py                        # 120 tasks, time scale 10, interval 2 s
    python benchmarks/polling.py --tasks 200 --max-gap 60 --seed 3
    python benchmarks/polling.py --warm                 # and adaptive again, with its history

One batch of `--tasks` tasks (half sora-2, 30 % veo-flash, 20 % veo-pro, in a seeded order) goes
through `grsai-pipeline run <batch> --until-settled`, the command users run, once per mode, each
on a fresh application database and Dagster home, against the simulator in its own process in
its realistic mode (grsai_pipeline/dev/generation.py: durations per model with a long tail,
progress noisy, stuck, coarse or flat), every task succeeding:

- fixed: GRSAI_POLL_MAX_GAP_S = GRSAI_POLL_INTERVAL_S, plain fixed-interval polling (the
  baseline, today's behaviour);
- adaptive: GRSAI_POLL_MAX_GAP_S = `--max-gap` (default 60, the setting's default);
- adaptive, warm (`--warm`): the same batch again on the adaptive mode's database, so the
  engine starts with the durations of the first run's finished tasks.

The simulator is reset before each mode and draws each task from the seed, its model and its
prompt, so every mode sees the same tasks (checked and printed). From its log of polls and its
task records (GET /_sim/tasks: when each task was made, when it ended upstream, when a poll
first answered it final) the benchmark prints per mode: polls per task (mean, p50, p95), up to
the one whose answer told its end; the delay from a video's end upstream to that answer (p50,
p95, max, and as a multiple of the interval); the longest gap between two polls of a task, from
its submit upstream to the poll that told its end, against GRSAI_POLL_MAX_GAP_S (p95 and max
over the tasks, how many tasks were over it, the worst as a multiple of it); the ratio adaptive
/ fixed of polls per task; then polls per task and the p95 delay per progress kind. Gaps are
timed between the polls' arrivals, so a fixed-interval poller, which waits the interval after
each answer, is over its limit (the interval) by about a round trip on every task. The mix is
written out: per model the count and duration p50/p95/max, and the progress kinds.

Time scale. Real generations take minutes (a 16-minute Veo at worst), too long to measure
twice in a run. `--time-scale S` (default 10) divides every duration of a task's life by S:
the simulator's generation times, and GRSAI_POLL_INTERVAL_S and GRSAI_POLL_MAX_GAP_S (the
interval 2 s is set as 0.2 s, the max gap 60 s as 6 s). Everything the poller decides is then
the real decision on a faster clock: polls per task and the delay as a multiple of the interval
do not depend on S, and seconds are printed in real seconds (measured x S). What is not scaled
(the API's latency, `--latency-ms`, 20 ms by default; the engine's own time per poll; process
start-up) weighs S times more than it would: 20 ms here stands for 200 ms of latency at the real
clock, and a pause of the engine of 0.2 s shows as 2 s: real-second delays and gaps are a
little pessimistic. `--save FILE` keeps each mode's task records and polls (JSON).

Until GRSAI_POLL_MAX_GAP_S is a setting the engine reads, both modes poll at the fixed interval
and the ratio is about 1. The application database is a SQLite file per mode (a shared
PostgreSQL database would give the adaptive mode the fixed mode's history).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
THROUGHPUT = HERE.with_name("throughput.py")  # its --serve-stand-in: the simulator, quiet
CLI = Path(sys.executable).with_name("grsai-pipeline")
API_KEY = "sk-benchmark"
MODEL_SHARES = {"sora-2": 0.5, "veo-flash": 0.3, "veo-pro": 0.2}
WIRE_MODEL = {"sora-2": "sora-2", "veo-flash": "veo3.1-fast", "veo-pro": "veo3.1-pro"}


# --- the simulator in its own process -------------------------------------------------------


class Simulator:
    """The simulator, realistic, served by throughput.py's quiet stand-in in its own process."""

    def __init__(self, config: dict[str, Any]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, str(THROUGHPUT), "--serve-stand-in", str(port), json.dumps(config)]
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/_sim/stats")
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("the simulator did not start") from None
                time.sleep(0.1)

    def call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- one mode -------------------------------------------------------------------------------


@dataclass
class Mode:
    name: str
    max_gap_s: float  # GRSAI_POLL_MAX_GAP_S, real seconds
    work: Path | None = None  # reuse this mode's database (warm)


@dataclass
class Seen:
    """What one mode left: per remote task its record and its polls; the run's cost."""

    mode: Mode
    tasks: dict[str, dict[str, Any]]  # remote id: /_sim/tasks record
    polls: dict[str, list[float]]  # remote id: poll arrival times, sorted
    statuses: Counter[str]
    wall_s: float
    cpu_s: float


def batch_file(args: argparse.Namespace, work: Path) -> Path:
    """The batch: ``--tasks`` tasks, models in their shares, in an order drawn from the seed."""
    counts = {m: round(share * args.tasks) for m, share in MODEL_SHARES.items()}
    counts["sora-2"] += args.tasks - sum(counts.values())
    models = [m for m, n in counts.items() for _ in range(n)]
    random.Random(args.seed).shuffle(models)
    tasks = [{"prompt": f"polling benchmark task {n}", "model": m} for n, m in enumerate(models)]
    path = work / "batch.json"
    path.write_text(json.dumps(tasks))
    return path


def pipeline_env(
    args: argparse.Namespace, sim: Simulator, work: Path, mode: Mode
) -> dict[str, str]:
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    scale = args.time_scale
    return {
        **os.environ,
        "GRSAI_API_KEY": API_KEY,
        "GRSAI_BASE_URL": sim.base_url,
        "GRSAI_DATABASE_URL": f"sqlite:///{work}/app.db",
        "GRSAI_MAX_CONCURRENCY": str(args.concurrency),
        "GRSAI_POLL_INTERVAL_S": f"{args.interval / scale:g}",
        "GRSAI_POLL_MAX_GAP_S": f"{mode.max_gap_s / scale:g}",
        "GRSAI_POLL_BUDGET_S": "7200",
        # Submit to settlement; copying the videos (SPEC 8) is not measured here.
        "GRSAI_ARCHIVE_URL": str(work / "videos"),
        "GRSAI_ARCHIVE_BUDGET_S": "0",
        "DAGSTER_HOME": str(home),
    }


def cli(env: dict[str, str], *command: str) -> str:
    done = subprocess.run([CLI, *command], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"grsai-pipeline {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def run_mode(args: argparse.Namespace, sim: Simulator, mode: Mode, work: Path) -> Seen:
    """Make the batch with the CLI (not timed), run it to settlement, read the simulator."""
    env = pipeline_env(args, sim, work, mode)
    if mode.work is None:
        cli(env, "db", "init")
        cli(env, "credits", "grant", "bench", str(1000 * args.tasks))
    batch_id = cli(env, "batch", "create", str(batch_file(args, work)), "--user", "bench").strip()
    sim.call("POST", "/_sim/reset")
    children_cpu_s()  # the CLI calls above are not the run's
    started = time.monotonic()
    process = subprocess.Popen(
        [CLI, "run", batch_id, "--until-settled"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = process.communicate()
    wall = time.monotonic() - started
    # communicate() has reaped the child; its CPU is in this process's children's usage.
    if process.returncode != 0:
        raise SystemExit(f"run failed ({mode.name}):\n{out.decode()}\n{err.decode()[-3000:]}")
    cpu = children_cpu_s()
    status = json.loads(cli(env, "batch", "status", batch_id, "--json"))
    tasks = sim.call("GET", "/_sim/tasks")
    polls = {task: sorted(times) for task, times in sim.call("GET", "/_sim/polls").items()}
    return Seen(mode, tasks, polls, Counter(status["counts"]), wall, cpu)


_cpu_before = 0.0


def children_cpu_s() -> float:
    """CPU (user + system) of the children reaped since the last call."""
    global _cpu_before
    usage = os.times()
    total = usage.children_user + usage.children_system
    spent, _cpu_before = total - _cpu_before, total
    return spent


# --- figures --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def longest_gap(made: float, polls: list[float]) -> float:
    """The longest stretch from the submit upstream through the polls given without a poll."""
    return max((b - a for a, b in itertools.pairwise([made, *polls])), default=math.inf)


@dataclass
class Figures:
    polls: list[float]  # per task, up to the poll that saw the end
    delays: list[float]  # scaled (the clock of the run)
    gaps: list[float]  # scaled
    never_seen: int
    after: int  # polls after the one that saw the end


def figures(seen: Seen) -> Figures:
    """Per task: the polls up to the one whose answer told its end (the simulator records when
    it answered a task final first), the delay from its end upstream to that answer, and the
    longest gap from its submit upstream to that poll."""
    result = Figures([], [], [], 0, 0)
    for remote, record in seen.tasks.items():
        polls = seen.polls.get(remote, [])
        told = record["told"]
        if told is None:
            result.never_seen += 1
            result.polls.append(len(polls))
            continue
        upto = [t for t in polls if t <= told]
        result.delays.append(max(0.0, told - record["ended"]))
        result.polls.append(len(upto))
        result.after += len(polls) - len(upto)
        result.gaps.append(longest_gap(record["made"], upto))
    return result


def same_tasks(runs: list[Seen]) -> bool:
    def by_prompt(seen: Seen) -> dict[str, tuple[str, float, str]]:
        return {r["prompt"]: (r["model"], round(r["duration_s"], 6), r["progress_kind"])
                for r in seen.tasks.values()}  # fmt: skip

    first = by_prompt(runs[0])
    return all(by_prompt(other) == first for other in runs[1:])


def print_mix(args: argparse.Namespace, seen: Seen) -> None:
    scale = args.time_scale
    print(f"the mix ({len(seen.tasks)} tasks; durations in real seconds, / {scale:g} here):")
    print(f"  {'model':<12} {'tasks':>5} {'p50':>7} {'p95':>7} {'max':>7}")
    records = list(seen.tasks.values())
    for model in sorted({r["model"] for r in records}):
        durations = [scale * r["duration_s"] for r in records if r["model"] == model]
        print(f"  {model:<12} {len(durations):>5} {statistics.median(durations):>6.0f}s"
              f" {pct(durations, 0.95):>6.0f}s {max(durations):>6.0f}s")  # fmt: skip
    kinds = Counter(r["progress_kind"] for r in records)
    shown = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
    print(f"  progress: {shown} (noisy: rises with noise; stuck: held at 90-99 for the last "
          f"15-45 %; coarse_25/33: steps of 25/33; flat: 0 until the end)")  # fmt: skip


def print_modes(args: argparse.Namespace, runs: list[Seen]) -> None:
    scale, interval = args.time_scale, args.interval

    def real(value: float) -> str:  # real seconds, and as a multiple of the interval
        return f"{scale * value:5.1f} ({scale * value / interval:4.2f}x)"

    print(f"{'mode':<15} {'max gap':>7} | {'polls per task':^20} | "
          f"{'end upstream -> told, real s (x interval)':^41} | "
          f"{'longest gap, real s':^30} | {'run s':>5} {'cpu s':>5}")  # fmt: skip
    print(f"{'':<15} {'real s':>7} | {'mean':>6} {'p50':>6} {'p95':>6} | {'p50':>13} "
          f"{'p95':>13} {'max':>13} | {'p95':>6} {'max':>6} {'over':>7} {'max/gap':>7}"
          " |")  # fmt: skip
    fixed_polls: float | None = None
    for seen in runs:
        got = figures(seen)
        mean = statistics.fmean(got.polls)
        if seen.mode.name == "fixed":
            fixed_polls = mean
        polls = f"{mean:>6.1f} {statistics.median(got.polls):>6.1f} {pct(got.polls, 0.95):>6.1f}"
        delays = " ".join(
            real(v) for v in (statistics.median(got.delays), pct(got.delays, 0.95), max(got.delays))
        )
        limit = seen.mode.max_gap_s / scale
        worst = max(got.gaps)
        over = f"{sum(1 for g in got.gaps if g > limit)}/{len(got.gaps)}"
        gaps = (f"{scale * pct(got.gaps, 0.95):>6.1f} {scale * worst:>6.1f} {over:>7}"
                f" {worst / limit:>6.2f}x")  # fmt: skip
        print(f"{seen.mode.name:<15} {seen.mode.max_gap_s:>7g} | {polls} | {delays} | {gaps} |"
              f" {seen.wall_s:>5.0f} {seen.cpu_s:>5.1f}")  # fmt: skip
        notes = []
        if got.never_seen:
            notes.append(f"{got.never_seen} tasks' end never told by a poll")
        if got.after:
            notes.append(f"{got.after} polls after the one that told the end")
        bad = {s: n for s, n in seen.statuses.items() if s != "succeeded" and n}
        if bad:
            notes.append(f"tasks not succeeded: {bad}")
        if seen.mode.name != "fixed" and fixed_polls:
            notes.append(f"polls per task {seen.mode.name} / fixed: {mean / fixed_polls:.2f}")
        if notes:
            print(f"{'':<15}   {'; '.join(notes)}")


def print_kinds(args: argparse.Namespace, runs: list[Seen]) -> None:
    """Polls per task and the p95 delay to be told the end, per progress kind and mode."""
    kinds = [
        k for k, _ in Counter(r["progress_kind"] for r in runs[0].tasks.values()).most_common()
    ]
    print("by progress kind: polls per task (mean), end upstream -> told (p95, real s)")
    print(f"  {'mode':<15}" + "".join(f" {kind:>16}" for kind in kinds))
    for seen in runs:
        cells = []
        for kind in kinds:
            polls, delays = [], []
            for remote, record in seen.tasks.items():
                if record["progress_kind"] != kind or record["told"] is None:
                    continue
                polls.append(sum(1 for t in seen.polls.get(remote, []) if t <= record["told"]))
                delays.append(args.time_scale * max(0.0, record["told"] - record["ended"]))
            shown = f"{statistics.fmean(polls):.1f} {pct(delays, 0.95):5.1f}s" if polls else "-"
            cells.append(f" {shown:>16}")
        print(f"  {seen.mode.name:<15}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="GRSAI_POLL_INTERVAL_S, real seconds")  # fmt: skip
    parser.add_argument("--max-gap", type=float, default=60.0,
                        help="GRSAI_POLL_MAX_GAP_S of the adaptive mode, real seconds")  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32, help="GRSAI_MAX_CONCURRENCY")
    parser.add_argument("--save", type=Path, help="write each mode's tasks and polls here (JSON)")
    parser.add_argument("--warm", action="store_true",
                        help="also adaptive again on the adaptive mode's database")  # fmt: skip
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    sim = Simulator({
        "api_key": API_KEY, "latency_s": [latency, latency], "mix": {"succeeded": 1.0},
        "seed": args.seed, "log_polls": True, "realistic": True, "time_scale": args.time_scale,
    })  # fmt: skip
    scale = args.time_scale
    print(f"polling: {args.tasks} tasks, seed {args.seed}, time scale {scale:g}: generation "
          f"times, GRSAI_POLL_INTERVAL_S ({args.interval:g} s real = {args.interval / scale:g} s "
          f"here) and GRSAI_POLL_MAX_GAP_S divided by {scale:g}; API latency {args.latency_ms:g}"
          f" ms here (not scaled); seconds below are real (x {scale:g}); "
          f"GRSAI_MAX_CONCURRENCY={args.concurrency}; SQLite; {os.cpu_count()} cores",
          flush=True)  # fmt: skip
    modes = [Mode("fixed", args.interval), Mode("adaptive", args.max_gap)]
    runs: list[Seen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="grsai-polling-") as tmp:
            for mode in modes:
                work = Path(tmp) / mode.name
                work.mkdir()
                runs.append(run_mode(args, sim, mode, work))
                print(f"  {mode.name}: settled in {runs[-1].wall_s:.0f} s", flush=True)
                if args.warm and mode.name == "adaptive":
                    warm = Mode("adaptive, warm", args.max_gap, work)
                    runs.append(run_mode(args, sim, warm, work))
                    print(f"  {warm.name}: settled in {runs[-1].wall_s:.0f} s", flush=True)
    finally:
        sim.stop()
    if args.save:
        args.save.write_text(json.dumps({r.mode.name: {"tasks": r.tasks, "polls": r.polls}
                                         for r in runs}))  # fmt: skip
    print_mix(args, runs[0])
    print(f"  the same tasks in every mode: {'yes' if same_tasks(runs) else 'NO'}")
    print_modes(args, runs)
    print_kinds(args, runs)


if __name__ == "__main__":
    main()
