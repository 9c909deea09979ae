"""Warm local run processes and forkservers (unified_assets/local_warm.py, served by
placement/ray_warm.py): Python's own multiprocessing, started through the launcher, runs its
children forked from a real warm server, with every fd and pipe it passed and its exit code;
anything else Python is asked to run, and any mismatch, runs as a fresh interpreter."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.spawn
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unified_assets.test_ray_warm import _alive, _wait_for, sockets  # noqa: F401
from unified_assets import local_warm
from unified_assets.placement import ray_warm

# Imported by the server; UAI_PROBE_SLEEP makes its preload take that long, and with
# UAI_PROBE_AWAIT_CLIENT its import ends only once a client waits on the run processes' socket
# (Linux lists a connection not yet accepted in /proc/net/unix under the name the listening
# socket was bound to, the server's temporary name).
PROBE = textwrap.dedent("""
    import collections, os, time
    from pathlib import Path
    LOADED_IN = os.getpid()
    time.sleep(float(os.environ.get('UAI_PROBE_SLEEP', '0')))
    def _waiting():
        folder = os.environ['UNIFIED_AI_RAY_WARM_DIR'] + '/'
        rows = Path('/proc/net/unix').read_text().splitlines()
        paths = collections.Counter(r.split()[-1] for r in rows if r.split()[-1][:1] == '/')
        return any(n > 1 for path, n in paths.items() if path.startswith(folder))
    deadline = time.monotonic() + 120
    while os.environ.get('UAI_PROBE_AWAIT_CLIENT') and not _waiting() \\
            and time.monotonic() < deadline:
        time.sleep(0.05)
""")
# A second library, whose import ends once the file UAI_GATE_FILE exists.
GATE = ("import os, time\nLOADED_IN = os.getpid()\ndeadline = time.monotonic() + 120\n"
        "while not os.path.exists(os.environ['UAI_GATE_FILE']) and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n")

# The parent side: install, wait for the server, then start children as the executors do.
DRIVER = textwrap.dedent("""
    import json, multiprocessing, os, sys, time
    from pathlib import Path
    from unified_assets import local_warm
    from unified_assets.placement import ray_warm


    def child(queue, conn, code):
        import uai_local_probe
        queue.put({"pid": os.getpid(), "probe_loaded_in": uai_local_probe.LOADED_IN,
                   "frozen": __import__("gc").get_freeze_count(),
                   "server": os.environ.get(ray_warm.SERVER_ENV), "got": conn.recv(),
                   "argv": sys.argv, "cwd": os.getcwd()})
        conn.send("pong")
        if code == "sleep":
            time.sleep(600)
        sys.exit(code)


    if __name__ == "__main__":
        method, code = sys.argv[1], sys.argv[2]
        launcher = local_warm.install(["uai_local_probe"])
        key = ray_warm.server_key([sys.executable, "-c", ""], os.environ, os.getcwd())
        sock = Path(os.environ[ray_warm.DIR_ENV]) / f"{key}.sock"
        if sys.argv[3:] == ["early"]:  # the run processes' socket
            sock = sock.with_suffix(ray_warm.EARLY_SUFFIX)
        deadline = time.monotonic() + (0 if sys.argv[3:] == ["nowait"] else 120)
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["uai_local_probe"])
        queue = ctx.Queue()
        mine, theirs = ctx.Pipe()
        process = ctx.Process(target=child, args=(queue, theirs, "sleep" if code == "sleep"
                                                  else int(code)))
        process.start()
        mine.send("ping")
        report = queue.get(timeout=120)
        report["whole_preload_in"] = sock.with_suffix(".sock").exists()
        if os.environ.get("UAI_GATE_FILE"):  # the server's last import may end now
            Path(os.environ["UAI_GATE_FILE"]).touch()
        report["answer"] = mine.recv()
        if code == "sleep":
            process.terminate()
            process.join(60)
            report["still_running_after_terminate"] = os.path.exists(f"/proc/{report['pid']}")
        process.join(120)
        report.update(exitcode=process.exitcode, launcher=str(launcher),
                      executable=os.fsdecode(multiprocessing.spawn.get_executable()))
        print(json.dumps(report))
""")


def _drive(tmp_path: Path, sockets: Path, method: str, code: str = "3",  # noqa: F811
           flags: tuple[str, ...] = (), wait: bool | str = True, **extra: str
           ) -> tuple[dict, str]:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / "uai_local_probe.py").write_text(PROBE)
    (lib / "uai_local_gate.py").write_text(GATE)
    (tmp_path / "driver.py").write_text(DRIVER)
    root = Path(local_warm.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "UNIFIED_AI_"))}
    env.update({local_warm.SWITCH_ENV: "on", ray_warm.DIR_ENV: str(sockets),
                ray_warm.IDLE_ENV: "60", "PYTHONPATH": f"{lib}:{root}", "RAY_ADDRESS": "",
                **extra})
    done = subprocess.run([sys.executable, *flags, str(tmp_path / "driver.py"), method, code,
                           wait if isinstance(wait, str) else "wait" if wait else "nowait"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_children_fork_from_the_warm_server_with_their_pipes_and_exit_code(
        tmp_path: Path, sockets: Path, method: str) -> None:  # noqa: F811
    report, stderr = _drive(tmp_path, sockets, method)
    assert report["server"], stderr
    server = int(report["server"])
    # Forked from the server, which imported the library: the child did not import it again.
    assert report["probe_loaded_in"] == server != report["pid"]
    # What the server preloaded is frozen: the child's collections never walk it.
    assert report["frozen"] > 10_000, report["frozen"]
    # The Queue's and the Pipe's fds (passed by multiprocessing, named nowhere) work both ways.
    assert report["got"] == "ping" and report["answer"] == "pong"
    assert report["exitcode"] == 3
    assert report["cwd"] == str(tmp_path)
    assert report["executable"] == report["launcher"]
    assert "fresh interpreter" not in stderr, stderr
    log = next(sockets.glob("*.log")).read_text()
    assert f"warm server {server} for" in log and "skipped" not in log


def test_a_forkserver_waits_for_a_starting_server_and_a_run_process_does_not(
        tmp_path: Path, sockets: Path) -> None:  # noqa: F811
    """Cold, a forkserver imports what the starting server is importing, beside it; a run
    process costs less than the rest of a preload."""
    report, stderr = _drive(tmp_path, sockets, "forkserver", wait=False, UAI_PROBE_SLEEP="4")
    assert report["server"] and report["probe_loaded_in"] == int(report["server"]), stderr
    for old in sockets.glob("*.sock"):
        os.kill(int(report["server"]), 9)
        old.unlink()
    report, stderr = _drive(tmp_path, sockets, "spawn", wait=False, UAI_PROBE_SLEEP="4")
    assert report["server"] is None and report["exitcode"] == 3
    assert "run process runs in a fresh interpreter" in stderr


def test_a_run_process_is_served_while_the_server_still_imports_the_training_libraries(
        tmp_path: Path, sockets: Path) -> None:  # noqa: F811
    """The first run under scripts/dev.sh came while the server was importing torch and MLflow
    (4-10 s after the code location loaded): it started cold, 2.4 s to its first step instead of
    0.4 s. A server now serves run processes once it has imported Dagster, between the imports
    of the rest; a forkserver still waits for them all (the test above)."""
    gate = tmp_path / "gate"
    report, stderr = _drive(tmp_path, sockets, "spawn", wait="early", UAI_PROBE_AWAIT_CLIENT="1",
                            UAI_GATE_FILE=str(gate),
                            **{ray_warm.PRELOAD_ENV: "uai_local_probe,uai_local_gate"})
    # Forked from the server after the probe's import and before the gate's had ended.
    assert report["server"] and report["probe_loaded_in"] == int(report["server"]), stderr
    assert report["whole_preload_in"] is False
    assert report["exitcode"] == 3 and report["answer"] == "pong"
    assert "fresh interpreter" not in stderr, stderr
    # The driver opened the gate once it had its report: the whole preload then came in.
    assert gate.exists()
    _wait_for(lambda: any(sockets.glob("*.sock")), "the whole preload's socket", 60)
    (log,) = sockets.glob("*.log")
    assert f"warm server {report['server']} for" in log.read_text()
    assert f"preloaded {len(ray_warm.BASE_PRELOAD) + 2} modules" in log.read_text()


def test_terminating_a_warm_child_ends_it(tmp_path: Path, sockets: Path) -> None:  # noqa: F811
    report, _ = _drive(tmp_path, sockets, "spawn", "sleep")
    assert report["server"] and report["answer"] == "pong"
    assert report["exitcode"] == 128 + 15  # SIGTERM, as a shell reports it
    _wait_for(lambda: not _alive(report["pid"]), "the terminated child is gone", 30)


def test_other_interpreter_flags_run_as_a_fresh_interpreter(tmp_path: Path,
                                                            sockets: Path) -> None:  # noqa: F811
    # Started from a warm process (which passes its server on in the environment), a child
    # that runs fresh does not claim to be warm.
    report, stderr = _drive(tmp_path, sockets, "spawn", flags=("-X", "dev"),
                            **{ray_warm.SERVER_ENV: "4242"})
    assert report["server"] is None and report["probe_loaded_in"] == report["pid"]
    assert report["got"] == "ping" and report["exitcode"] == 3
    assert "other interpreter flags than this server's" in stderr


def test_off_unless_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local_warm.SWITCH_ENV, raising=False)
    before = multiprocessing.spawn.get_executable()
    assert local_warm.install(["json"]) is None
    assert multiprocessing.spawn.get_executable() == before


def test_only_multiprocessing_start_commands_are_recognised() -> None:
    spawn = [str(a) for a in multiprocessing.spawn.get_command_line(tracker_fd=5, pipe_handle=7)]
    assert ray_warm.multiprocessing_command(spawn) == ("spawn", (5, 7))
    flagged = [spawn[0], "-B", "-X", "dev", "-W", "default", *spawn[-3:]]
    assert ray_warm.multiprocessing_command(flagged) == ("spawn", (5, 7))
    forkserver = [sys.executable, "-B", "-c",
                  "from multiprocessing.forkserver import main; main(4, 6, ['json'], "
                  "**{'sys_path': ['/x'], 'main_path': None})"]
    assert ray_warm.multiprocessing_command(forkserver) == ("forkserver", (4, 6))
    for other in (
        [sys.executable, "-c", "print(1)"],
        [sys.executable, "-c", spawn[-2] + "; import os", "--multiprocessing-fork"],
        [sys.executable, "-c", forkserver[-1] + "; import os"],
        [sys.executable, "script.py", "-c", spawn[-2], "--multiprocessing-fork"],
        [sys.executable, "-m", "dagster", "api", "grpc"],
        [sys.executable, "-X", "dev", "x.py", "-c", spawn[-2], "--multiprocessing-fork"],
    ):
        assert ray_warm.multiprocessing_command(other) is None, other
        assert not ray_warm.is_servable(other)


def test_a_server_refuses_anything_but_the_command_and_fds_it_knows(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin"}
    spawn = [sys.executable, *ray_warm._own_flags(), "-c", "from multiprocessing.spawn import "
             "spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)", "--multiprocessing-fork"]
    server = ray_warm._Server(key=ray_warm.server_key(spawn, env, "/w"), folder=tmp_path,
                              lock=open(os.devnull))  # noqa: SIM115
    request = {"key": server.key, "argv": spawn, "cwd": "/w", "env": env, "fds": [5, 7, 9]}
    assert ray_warm._refusal(server, request, [10, 11, 12, 13, 14, 15]) is None
    for bad in ({"fds": [7, 9]},  # a named fd not passed
                {"argv": [sys.executable, "-c", "import os"]},  # arbitrary code
                {"fds": [1, 5, 7]}):  # stdio is passed apart
        assert ray_warm._refusal(server, {**request, **bad},
                                 list(range(10, 13 + len(bad.get("fds", request["fds"]))))
                                 ) == "malformed request", bad
    assert ray_warm._refusal(server, request, [10, 11, 12]) == "malformed request"


def test_a_server_with_an_owner_stops_serving_once_the_owner_exits(
        tmp_path: Path, sockets: Path) -> None:  # noqa: F811
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _drive(tmp_path, sockets, "spawn", **{ray_warm.OWNER_ENV: str(owner.pid)})
        sock = next(sockets.glob("*.sock"))
    finally:
        owner.kill()
        owner.wait()
    _wait_for(lambda: not sock.exists(), "the server stops listening", 60)
    log = sock.with_suffix(".log")
    _wait_for(lambda: "exiting" in log.read_text(), "the server exits", 30)
    assert f"the process that owns it ({owner.pid}) exited" in log.read_text()


def test_a_local_step_records_which_process_ran_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from unified_assets.placement.serialize import process_evidence

    monkeypatch.delenv(ray_warm.SERVER_ENV, raising=False)
    assert process_evidence() == {"placement_process": "started for this run (no warm server)"}
    monkeypatch.setenv(ray_warm.SERVER_ENV, "4242")
    assert process_evidence() == {
        "placement_process": "forked from warm server 4242 (libraries preloaded)"}


WARMED = textwrap.dedent("""
    import json, sys, threading
    from unified_assets.placement import ray_warm
    preload = sys.argv[1].split(",")
    failed = ray_warm._preload(preload)
    threads = threading.active_count()  # a server whose preload starts threads never forks
    import importlib_metadata
    scans = []
    scan = importlib_metadata.packages_distributions
    importlib_metadata.packages_distributions = lambda *a, **k: scans.append(1) or scan(*a, **k)
    before = set(sys.modules)
    import torch
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # a torch step's first optimizer
    warn_dependency_requirement_mismatches(["torch", "scikit-learn", "pandas"])  # log_model's
    print(json.dumps({"failed": failed, "scans": len(scans), "threads": threads,
                      "imported": sorted(set(sys.modules) - before)}))
""")


def test_a_step_forked_from_the_preload_starts_training_and_logging_without_warm_up() -> None:
    """torch imports torch._dynamo at the first optimizer (1.1-1.8 s) and MLflow maps every
    installed distribution at the first log_model (1.1-1.6 s): the servers that fork training
    steps (warm server, training forkserver) have done both."""
    from unified_assets.definitions import RAY_PRELOAD, TRAINING_PRELOAD

    # The warm server's preload (its own base, then the libraries), and the forkserver's.
    for preload in ([*ray_warm.BASE_PRELOAD, *RAY_PRELOAD], TRAINING_PRELOAD):
        out = subprocess.run([sys.executable, "-c", WARMED, ",".join(preload)],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True,
                             text=True, check=True, timeout=300).stdout
        assert json.loads(out.strip().splitlines()[-1]) == {
            "failed": [], "scans": 0, "threads": 1, "imported": []}, preload
