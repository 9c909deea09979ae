"""The production stack (scripts/stack.sh) against the local sqlite path (scripts/dev.sh) on the
same data: time from landed batches to the first champion, and ingestion runs per minute with
four runs in flight.

    .venv/bin/python bench/production_stack.py [--batches 4] [--rows 1500] [--runs 8]
                                               [--repeats 1] [--timeout 900]

Sides. stack: `bash scripts/stack.sh up` in a fresh temp state folder on free loopback ports
(Postgres, moto S3, MLflow server, `dagster api grpc`, dagster-daemon, dagster-webserver);
batches land in its S3 bucket (tests/stack/stack.py `Stack.land`). sqlite: `bash scripts/dev.sh`
(the README's run command: `dagster dev`, sqlite instance, sqlite MLflow, local folders) in a
fresh temp UNIFIED_AI_HOME on free ports; batches land in its landing folder, each written
hidden and renamed into place. dev.sh seeds the README's batches into an empty landing folder,
so a placeholder *directory* named `bench-placeholder.parquet` sits there until the UI answers
(the landing sensor lists files only). Same data on both: `generate_batch(i, rows)` (seed 7)
for i < --batches. Same policy on both: the shipped rules with `first_deployment: false`, so
the first champion is approved by the policy and no person is in the loop (the stack still
lays its signature requirement over it, which policy approvals do not need). Threads pinned
(OMP/OpenBLAS/MKL = 1) in every process of both sides. On both sides, before any clock: the
UI answers, the `landing_zone_sensor` and `pool_limits` sensors have ticked, and
`report_automation` (Evidently reports for people; tens of CPU seconds each) is stopped through
GraphQL, as tests/stack/conftest.py stops it on the stack.

Measured the same way on both sides, from here:
  lifecycle  clock from just before the batches land to MLflow's `champion` alias of
             payments-risk existing (MLflow REST API, polled every second).
  runs/min   once the instance is idle (10 s without a queued or running run), `--runs`
             `ingest_batch` runs over the landed partitions are submitted through the
             webserver's GraphQL API (as the launchpad does: queued, launched by the daemon's
             run queue), keeping 4 in flight; runs/min = successful runs / (first submission
             to last run end) x 60. Failed runs, the most runs seen in progress at once, other
             runs that ran meanwhile, and lock errors ("database is locked" and the like) in
             each side's logs are printed, not hidden.
Also printed per side: load averages, and host_busy_* = the share of the host's CPUs busy
during the phase (every process, the side's own and anyone else's; near 1.0: saturated).
Each side is stopped after its phases (stack.sh down; SIGTERM to dev.sh's process group);
a process of it still running 30 s later is killed and reported. Temp folders are removed,
on Ctrl-C and SIGTERM too.
Sides alternate per repeat (stack first in even repeats); medians over repeats.

How to read it: `stack_ratio` = stack lifecycle seconds / sqlite lifecycle seconds (goal <= 1.3);
`runs_per_min` = the stack's ingestion runs per minute with 4 in flight; the line before gives
the sqlite path's runs per minute and stack/sqlite (goal >= 4). `nan` means a side did not
finish that phase (the reason is printed above).
Last line: `stack_ratio=<x> runs_per_min=<y>`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from lifecycle_overhead import host_busy_seconds  # noqa: E402
from run_command import THREADS, answers, env_for, free_port, stop_group  # noqa: E402

from tests.policies import write_policy  # noqa: E402
from tests.stack.conftest import FOREIGN, free_ports  # noqa: E402
from tests.stack.stack import COMPONENTS, SENSOR_TICKS, Run, Stack, stack_sh  # noqa: E402
from tests.stack.test_production_stack import LOCK_ERRORS  # noqa: E402

IN_FLIGHT = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
IN_PARALLEL = 4
SIDES = ("stack", "sqlite")
BENCH_TAG = "unified-ai/bench"
POLICY = {"approval": {"require_human_when": {"first_deployment": False}}}
STOP_SENSOR = """
mutation Stop($id: String) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""
RUN_STEPS = """
query Steps($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { creationTime startTime stepStats { stepKey status startTime endTime } }
  }
}"""
SENSOR_ID = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { id sensorState { status } }
  }
}"""


class Unfinished(RuntimeError):
    """A phase that did not finish: reported, and the figure becomes nan."""


class DevServer(Stack):
    """`dagster dev` (scripts/dev.sh) seen through the same handle as the stack: its webserver's
    GraphQL API and its MLflow UI server's REST API (Stack's methods, other addresses)."""

    def __init__(self, home: Path, port: int, mlflow_port: int):  # no super(): there is no env file
        self.state = home
        self.script_env = {}
        self.env = {}
        self.webserver = f"http://127.0.0.1:{port}"
        self.mlflow = f"http://127.0.0.1:{mlflow_port}"
        self._port = port
        self.expected_failures: set[str] = set()

    def port(self, component: str) -> int:
        assert component == "webserver", component
        return self._port


@dataclass
class Outcome:
    side: str
    repeat: int
    startup_s: float | None = None
    lifecycle_s: float | None = None
    runs_per_min: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --- shared measurement -------------------------------------------------------------------


def until(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0,
          alive: Callable[[], bool] = lambda: True) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if not alive():
            raise Unfinished(f"{what}: the side's processes exited")
        if time.monotonic() > deadline:
            raise Unfinished(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def selector(sensor: str) -> dict[str, str]:
    return {"repositoryLocationName": "unified_ai", "repositoryName": "__repository__",
            "sensorName": sensor}


def ticks(handle: Stack, sensor: str) -> int:
    result = handle.graphql(SENSOR_TICKS, {"selector": selector(sensor)})["sensorOrError"]
    return len(result["sensorState"]["ticks"]) if result["__typename"] == "Sensor" else 0


def prepare(handle: Stack, timeout: float, alive: Callable[[], bool]) -> None:
    """Sensors ticking, the pools sized, Evidently's reports off: the same start on both."""
    for sensor in ("landing_zone_sensor", "pool_limits"):
        until(f"a first {sensor} tick", lambda s=sensor: _quiet(ticks, handle, s), timeout,
              alive=alive)
    found = handle.graphql(SENSOR_ID, {"selector": selector("report_automation")})["sensorOrError"]
    if found["__typename"] != "Sensor":
        raise Unfinished(f"no report_automation sensor: {found}")
    stopped = handle.graphql(STOP_SENSOR, {"id": found["id"]})["stopSensor"]
    if stopped["__typename"] != "StopSensorMutationResult":
        raise Unfinished(f"report_automation did not stop: {stopped}")


def _quiet(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`, or None while the server is not answering yet (a poll goes on)."""
    try:
        return call(*args)
    except (OSError, AssertionError, KeyError, ValueError):
        return None


def lifecycle(handle: Stack, land: Callable[[], list[str]], timeout: float,
              alive: Callable[[], bool]) -> tuple[float, list[str], list[str]]:
    """Seconds from the landing to the champion alias; the batch keys; the run timeline."""
    started, wall = time.perf_counter(), time.time()
    keys = land()
    version = until("the first champion", lambda: _quiet(handle.alias, "champion"), timeout,
                    alive=alive)
    seconds = time.perf_counter() - started
    lines = [f"champion v{version} after {seconds:.1f}s"]
    for run in sorted(handle.runs(), key=lambda r: r.start or math.inf):
        found = _quiet(handle.graphql, RUN_STEPS, {"runId": run.run_id}) or {}
        detail = found.get("runOrError", {})
        steps = ", ".join(f"{st['stepKey']} {st['endTime'] - st['startTime']:.1f}s"
                          for st in detail.get("stepStats", []) if st["startTime"] and st["endTime"])
        lines.append(f"run {run.job:24s} {run.tags.get('unified-ai/trigger', '-'):12s} "
                     f"created {_at(detail.get('creationTime'), wall)} start {_at(run.start, wall)} "
                     f"end {_at(run.end, wall)} {run.status}; steps: {steps or '-'}")
    return seconds, keys, lines


def _at(value: float | None, origin: float) -> str:
    return f"{value - origin:6.1f}" if value else "     -"


def wait_idle(handle: Stack, timeout: float, alive: Callable[[], bool], quiet_s: float = 10.0
              ) -> None:
    since: list[float] = []

    def idle_long_enough() -> bool:
        busy = any(r.status in IN_FLIGHT for r in handle.runs())
        if busy:
            since.clear()
        elif not since:
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] >= quiet_s

    until("an idle instance after the first champion", idle_long_enough, timeout, alive=alive)


def throughput(handle: Stack, keys: list[str], runs: int, timeout: float,
               alive: Callable[[], bool]) -> dict[str, Any]:
    """`runs` ingest_batch runs over `keys`, IN_PARALLEL kept in flight through GraphQL."""
    mine: dict[str, str] = {}  # run id -> partition
    before = {r.run_id for r in handle.runs()}
    first_submit = time.time()
    deadline = time.monotonic() + timeout
    seen: dict[str, Run] = {}
    while True:
        current = {r.run_id: r for r in handle.runs()}
        seen |= {i: r for i, r in current.items() if i in mine}
        open_runs = [i for i in mine if seen.get(i) is None or seen[i].status not in FINISHED]
        while len(mine) < runs and len(open_runs) < IN_PARALLEL:
            key = keys[len(mine) % len(keys)]
            run_id = handle.submit("ingest_batch", {"dagster/partition": key, BENCH_TAG: "runs"})
            mine[run_id] = key
            open_runs.append(run_id)
        if len(mine) == runs and not open_runs:
            break
        if not alive():
            raise Unfinished("runs/min: the side's processes exited")
        if time.monotonic() > deadline:
            states = sorted(seen[i].status if i in seen else "?" for i in mine)
            raise Unfinished(f"runs/min: {len(open_runs)} of {runs} runs unfinished after "
                             f"{timeout:.0f} s ({states})")
        time.sleep(1.0)
    done = [seen[i] for i in mine]
    ok = [r for r in done if r.status == "SUCCESS"]
    last_end = max((r.end or time.time()) for r in done)
    window = last_end - first_submit
    spans = [(r.start, r.end) for r in done if r.start and r.end]
    most = max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)
    others = [r for r in handle.runs() if r.run_id not in before and r.run_id not in mine]
    return {"runs_per_min": len(ok) / window * 60 if window > 0 else None, "window_s": window,
            "succeeded": len(ok), "failed": len(done) - len(ok), "max_in_progress": most,
            "run_s": statistics.median(e - s for s, e in spans) if spans else None,
            "other_runs": sorted(f"{r.job}:{r.status}" for r in others)}


def busy_share(busy_before: float, wall_s: float) -> float:
    """Share of the host's CPUs busy since `busy_before` (all processes, this side's and
    anyone else's): near 1.0 the host was saturated and waits for a CPU are in the figure."""
    cpus = len(os.sched_getaffinity(0))
    return round((host_busy_seconds() - busy_before) / (wall_s * cpus), 2) if wall_s > 0 else 0.0


def lock_errors(files: list[Path]) -> dict[str, int]:
    found: dict[str, int] = {}
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        count = len(LOCK_ERRORS.findall(text))
        if count:
            found[str(path)] = count
    return found


def measure(side: str, handle: Stack, land: Callable[[], list[str]], args: argparse.Namespace,
            outcome: Outcome, alive: Callable[[], bool]) -> None:
    print(f"  [{side} {outcome.repeat}] answering after {_s(outcome.startup_s)}; waiting for "
          "the sensors' first ticks", flush=True)
    prepare(handle, args.timeout, alive)
    print(f"  [{side} {outcome.repeat}] landing {args.batches} batches", flush=True)
    outcome.detail["load_at_landing"] = os.getloadavg()[0]
    busy = host_busy_seconds()
    seconds, keys, lines = lifecycle(handle, land, args.timeout, alive)
    outcome.detail["host_busy_lifecycle"] = busy_share(busy, seconds)
    outcome.detail["load_at_champion"] = os.getloadavg()[0]
    outcome.lifecycle_s = seconds
    for line in lines:
        print(f"  [{side} {outcome.repeat}] {line}", flush=True)
    wait_idle(handle, args.timeout, alive)
    print(f"  [{side} {outcome.repeat}] idle; {args.runs} ingest_batch runs, {IN_PARALLEL} in "
          "flight", flush=True)
    busy, started = host_busy_seconds(), time.perf_counter()
    result = throughput(handle, keys, args.runs, args.timeout, alive)
    result["host_busy_runs"] = busy_share(busy, time.perf_counter() - started)
    result["load_after_runs"] = os.getloadavg()[0]
    outcome.runs_per_min = result.pop("runs_per_min")
    outcome.detail |= result


# --- the two sides ------------------------------------------------------------------------


def proc_environ_has(mark: bytes) -> set[int]:
    """Processes whose environment holds `mark` (a unique temp path: only ours)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if mark in Path(f"/proc/{entry}/environ").read_bytes():
                    found.add(int(entry))
    return found


def kill_leftovers(find: Callable[[], set[int]], what: str, outcome: Outcome,
                   grace_s: float = 30.0) -> None:
    """Processes `find` still finds after `grace_s` (e.g. code servers that stop on a missed
    heartbeat) are reported and killed."""
    deadline = time.monotonic() + grace_s
    while (pids := find()) and time.monotonic() < deadline:
        time.sleep(1.0)
    if not pids:
        return
    commands = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            commands.append(f"{pid}: {' '.join(a.decode(errors='replace') for a in argv)[:100]}")
    outcome.problems.append(f"{len(pids)} {what} process(es) outlived the stop; killed: "
                            + "; ".join(commands))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def stack_side(scratch: Path, policy: Path, outcome: Outcome) -> Iterator[tuple[Stack, Callable]]:
    folder = scratch / f"stack-{outcome.repeat}"
    folder.mkdir()
    folder.chmod(0o711)  # under root, the postgres user must traverse it
    web, grpc, mlflow, s3, pg = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env |= {name: "1" for name in THREADS}
    env |= {"UNIFIED_AI_STACK_DIR": str(folder / "stack"), "UNIFIED_AI_POLICY": str(policy),
            "PORT": str(web), "GRPC_PORT": str(grpc), "MLFLOW_PORT": str(mlflow),
            "S3_PORT": str(s3), "PG_PORT": str(pg), "STACK_TIMEOUT": "240"}
    state = folder / "stack"
    try:
        started = time.perf_counter()
        up = stack_sh("up", env=env, timeout=900)
        if up.returncode != 0:
            raise Unfinished(f"stack.sh up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
        outcome.startup_s = time.perf_counter() - started
        handle = Stack(state, env)

        def alive() -> bool:  # every recorded component still running (no bash per poll)
            try:
                for component in COMPONENTS:
                    os.kill(handle.pid(component), 0)
            except (OSError, ValueError):
                return False
            return True

        try:
            yield handle, alive
        finally:
            outcome.detail["lock_errors"] = lock_errors(sorted((state / "logs").glob("*.log")))
    finally:
        down = stack_sh("down", env=env, timeout=300)
        if down.returncode != 0:
            outcome.problems.append(f"stack.sh down failed: {down.stderr[-500:]}")
        mark = f"UNIFIED_AI_STACK_DIR={state}\0".encode()
        kill_leftovers(lambda: proc_environ_has(mark), "stack", outcome)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def sqlite_side(scratch: Path, policy: Path, outcome: Outcome, timeout: float
                ) -> Iterator[tuple[DevServer, Callable]]:
    home = scratch / f"sqlite-{outcome.repeat}"
    placeholder = home / "landing" / "bench-placeholder.parquet"
    placeholder.mkdir(parents=True)  # a folder: dev.sh seeds nothing, the sensor lists files
    port, mlflow_port = free_port(), free_port()
    env = env_for(home) | {"PORT": str(port), "MLFLOW_PORT": str(mlflow_port),
                           "UNIFIED_AI_POLICY": str(policy)}
    log_path = scratch / f"sqlite-{outcome.repeat}-dev.log"
    process = None
    try:
        with log_path.open("w") as log:
            started = time.perf_counter()
            process = subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            running = process

            def alive() -> bool:
                return running.poll() is None

            until("dagster dev's UI", lambda: answers(f"http://127.0.0.1:{port}/server_info"),
                  timeout, alive=alive)
            until("the MLflow UI", lambda: answers(f"http://127.0.0.1:{mlflow_port}/health"),
                  timeout, alive=alive)
            outcome.startup_s = time.perf_counter() - started
            placeholder.rmdir()
            try:
                yield DevServer(home, port, mlflow_port), alive
            finally:
                files = [log_path, *(p for p in home.rglob("*") if p.is_file()
                                     and p.suffix in (".log", ".err", ".out", ".txt"))]
                outcome.detail["lock_errors"] = lock_errors(files)
    finally:
        if process is not None and process.poll() is None:
            stop_group(process)
        mark = f"UNIFIED_AI_HOME={home}\0".encode()
        kill_leftovers(lambda: proc_environ_has(mark), "sqlite-side", outcome)
        shutil.rmtree(home, ignore_errors=True)
        log_path.unlink(missing_ok=True)


def land_local(landing: Path, indexes: range, rows: int) -> list[str]:
    """As `Stack.land` on S3: generated batches, each written hidden then renamed into place."""
    from unified_assets.ml.generator import batch_name, generate_batch

    names = []
    for index in indexes:
        name = batch_name(index)
        hidden = landing / f".{name}.parquet"
        generate_batch(index, rows).to_parquet(hidden, index=False)
        os.replace(hidden, landing / f"{name}.parquet")
        names.append(name)
    return names


def run_side(side: str, repeat: int, scratch: Path, policy: Path, args: argparse.Namespace
             ) -> Outcome:
    outcome = Outcome(side, repeat)
    indexes = range(args.batches)
    print(f"[{side} {repeat}] starting", flush=True)
    try:
        if side == "stack":
            with stack_side(scratch, policy, outcome) as (handle, alive):
                measure(side, handle, lambda: handle.land(indexes, args.rows), args, outcome, alive)
        else:
            with sqlite_side(scratch, policy, outcome, args.timeout) as (handle, alive):
                landing = handle.state / "landing"
                measure(side, handle, lambda: land_local(landing, indexes, args.rows), args,
                        outcome, alive)
    except Unfinished as why:
        outcome.problems.append(str(why))
    except Exception as error:  # the other side still runs; its figure is nan
        traceback.print_exc()
        outcome.problems.append(f"{type(error).__name__}: {str(error)[:500]}")
    detail = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in outcome.detail.items()}
    print(f"[{side} {repeat}] startup {_s(outcome.startup_s)} lifecycle {_s(outcome.lifecycle_s)} "
          f"runs/min {_f(outcome.runs_per_min)} {detail}", flush=True)
    for problem in outcome.problems:
        print(f"[{side} {repeat}] PROBLEM: {problem}", flush=True)
    return outcome


# --- report -------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else "-"


def _f(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "nan"


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) and present else None


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor() or "?")
    # `nproc` itself would print OMP_NUM_THREADS, which this script pins to 1.
    nproc = len(os.sched_getaffinity(0))
    import dagster

    return (f"machine: nproc={nproc} cpu={model!r} python={platform.python_version()} "
            f"dagster={dagster.__version__} platform={platform.platform()} "
            f"load={os.getloadavg()[0]:.2f}")


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] + " " + " ".join(__doc__.splitlines()[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Last line: stack_ratio=<stack/sqlite lifecycle> runs_per_min=<stack runs/min>.")
    parser.add_argument("--batches", type=int, default=4, help="batches landed (default 4)")
    parser.add_argument("--rows", type=int, default=1500, help="rows per batch (default 1500)")
    parser.add_argument("--runs", type=int, default=8,
                        help=f"ingest_batch runs per side, {IN_PARALLEL} in flight (default 8)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeats per side, sides alternating (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds each phase may take (default 900)")
    args = parser.parse_args()
    if args.batches < 3:
        parser.error("--batches must be at least 3 (the policy's bootstrap_batches)")
    signal.signal(signal.SIGTERM, on_sigterm)
    os.environ |= {name: "1" for name in THREADS}
    print(machine())
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"data: {args.batches} batches x {args.rows} rows (generate_batch, seed 7); policy: "
          f"shipped, first deployment approved by the policy (no person); threads pinned to 1; "
          f"{args.runs} ingest_batch runs, {IN_PARALLEL} in flight; repeats {args.repeats}",
          flush=True)
    outcomes: dict[str, list[Outcome]] = {side: [] for side in SIDES}
    scratch = Path(tempfile.mkdtemp(prefix="uai-production-stack-"))
    scratch.chmod(0o711)
    started = time.perf_counter()
    try:
        policy = write_policy(scratch, POLICY, name="base-policy.yaml")
        for repeat in range(args.repeats):
            order = SIDES if repeat % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                outcomes[side].append(run_side(side, repeat, scratch, policy, args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lifecycle_s = {side: median([o.lifecycle_s for o in outcomes[side]]) for side in SIDES}
    per_min = {side: median([o.runs_per_min for o in outcomes[side]]) for side in SIDES}
    ratio = (lifecycle_s["stack"] / lifecycle_s["sqlite"]
             if lifecycle_s["stack"] is not None and lifecycle_s["sqlite"] else math.nan)
    stack_rpm = per_min["stack"] if per_min["stack"] is not None else math.nan
    sqlite_rpm = per_min["sqlite"] if per_min["sqlite"] is not None else math.nan
    runs_ratio = stack_rpm / sqlite_rpm if sqlite_rpm and math.isfinite(sqlite_rpm) else (
        math.inf if sqlite_rpm == 0 and stack_rpm > 0 else math.nan)
    print(f"total {time.perf_counter() - started:.0f}s; load now {os.getloadavg()[0]:.2f}")
    print(f"lifecycle (landing -> champion alias), median: stack {_s(lifecycle_s['stack'])}, "
          f"sqlite {_s(lifecycle_s['sqlite'])} (goal: ratio <= 1.3)")
    locks = {side: sum(sum(o.detail.get("lock_errors", {}).values()) for o in outcomes[side])
             for side in SIDES}
    failed = {side: sum(o.detail.get("failed", 0) for o in outcomes[side]) for side in SIDES}
    print(f"lock errors in logs: stack {locks['stack']}, sqlite {locks['sqlite']}; failed "
          f"ingestion runs: stack {failed['stack']}, sqlite {failed['sqlite']}")
    print(f"sqlite_runs_per_min={_f(sqlite_rpm)} stack_runs_per_min={_f(stack_rpm)} "
          f"runs_ratio={_f(runs_ratio)} (goal: runs_ratio >= 4, {IN_PARALLEL} in flight)")
    print(f"stack_ratio={_f(ratio, 3)} runs_per_min={_f(stack_rpm)}")


if __name__ == "__main__":
    main()
