"""The local instance's compute logs (unified_assets/instance_compute_logs.py): a run's
stdout and stderr land in Dagster's files for the UI and still reach the process's own
streams, copied by a thread instead of `tail -F` and watcher processes."""

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import yaml

from tests.instances import LOCAL_INSTANCE
from unified_assets import instance_compute_logs
from unified_assets.instance_compute_logs import ThreadMirroredComputeLogManager, mirrored

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter whose stdout/stderr are pipes the test reads: a run's output
# must reach them (mirrored) and the instance's files, and no child process may be started.
RUN_SCRIPT = r"""
import json, os, subprocess, sys
import dagster as dg

def refuse(*args, **kwargs):
    raise AssertionError(f"a child process was started: {args[:1]}")

subprocess.Popen = refuse  # Dagster's capture starts `tail -F` and a watcher this way

@dg.op
def talk():
    print("printed to stdout", flush=True)
    os.write(2, b"written to fd 2\n")

@dg.job
def chatty():
    talk()

with dg.DagsterInstance.get() as instance:
    result = chatty.execute_in_process(instance=instance, raise_on_error=False)
    captured = next(e for e in result.all_events if e.event_type_value == "LOGS_CAPTURED")
    manager = instance.compute_log_manager
    log_key = manager.build_log_key_for_run(result.run_id, captured.logs_captured_data.file_key)
    data = manager.get_log_data(log_key)
    print("RESULT " + json.dumps({
        "success": result.success, "manager": type(manager).__name__,
        "stdout": data.stdout.decode(), "stderr": data.stderr.decode(),
        "complete": manager.is_capture_complete(log_key),
        "folder": os.path.dirname(manager.get_captured_local_path(log_key, "out")),
    }))
"""


def test_a_runs_output_is_captured_for_the_ui_and_mirrored_without_child_processes(tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE.read_text())
    env = os.environ | {"DAGSTER_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", RUN_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["success"] and result["manager"] == "ThreadMirroredComputeLogManager"
    assert "printed to stdout" in result["stdout"]  # the UI's stdout of the run
    assert "written to fd 2" in result["stderr"]
    assert result["complete"]
    # Where Dagster's default compute log manager keeps them: earlier runs' logs stay visible.
    assert Path(result["folder"]).is_relative_to(home / "storage")
    # Mirrored to the process's own streams (the terminal of `dagster dev`).
    assert "printed to stdout" in done.stdout
    assert "written to fd 2" in done.stderr


def test_the_mirror_copies_everything_written_before_the_block_ends(tmp_path):
    original = open(tmp_path / "terminal.txt", "w")  # noqa: SIM115 - the stream redirected
    captured = tmp_path / "logs" / "step.out"
    big = "x" * 300_000 + "\n"  # larger than any pipe or read buffer on the way
    with mirrored(original, str(captured)):
        original.write(big)
        original.flush()
        os.write(original.fileno(), b"last line, no newline")
    original.write("after the block\n")
    original.close()
    expected = big + "last line, no newline"
    assert captured.read_text() == expected
    assert (tmp_path / "terminal.txt").read_text() == expected + "after the block\n"


def test_a_terminal_that_stopped_reading_never_holds_up_the_step(tmp_path, monkeypatch):
    """`tail -F` blocked on a full pipe was killed when the step ended; the copy thread is
    left behind after `FINISH_S` instead, and the step's output is all in its file."""
    monkeypatch.setattr(instance_compute_logs, "FINISH_S", 0.2)
    read_end, write_end = os.pipe()  # nobody reads: the copy blocks once the pipe is full
    stream = os.fdopen(write_end, "w")
    captured = tmp_path / "step.out"
    output = "y" * 300_000  # several times a pipe's buffer

    def step() -> None:
        with mirrored(stream, str(captured)):
            stream.write(output)
            stream.flush()

    runner = threading.Thread(target=step, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the step waited for a reader that never came"
    assert captured.read_text() == output
    copied = b""
    while len(copied) < len(output):  # the copy resumes once someone reads, then ends
        copied += os.read(read_end, 1 << 16)
    assert copied == output.encode()
    stream.close()
    os.close(read_end)


def test_a_stream_without_a_descriptor_is_left_alone(tmp_path):
    stand_in = io.StringIO()  # a test runner's captured stdout
    with mirrored(stand_in, str(tmp_path / "step.out")):
        stand_in.write("kept in the stand-in")
    assert stand_in.getvalue() == "kept in the stand-in"


def test_the_local_instance_uses_it_in_dagsters_default_folder(tmp_path):
    config = yaml.safe_load(LOCAL_INSTANCE.read_text())["compute_logs"]
    assert config["class"] == ThreadMirroredComputeLogManager.__name__
    with dg.instance_for_test(overrides={"compute_logs": config},
                              temp_dir=str(tmp_path)) as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, ThreadMirroredComputeLogManager)
        assert Path(manager.get_captured_local_path(["run", "step"], "out")).is_relative_to(
            (tmp_path / "storage").resolve())
