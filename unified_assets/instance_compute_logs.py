"""The local instance's compute logs: Dagster's local compute log manager, mirrored by a thread.

While a run (in-process executor) or a step process runs, Dagster's `LocalComputeLogManager`
sends the process's stdout and stderr to files under the instance (what the UI shows as a
step's stdout/stderr) and copies them back to the original streams (the terminal of
`dagster dev`). The copy is made by a `tail -F` process per stream, each watched by a
Python process that kills it should the run's process die (`watch_orphans.py`): four child
processes for every run and every step process, started and reaped on its critical path
(0.06-0.08 s per lifecycle of two runs here, bench/RESULTS.md) and two interpreters
started per capture.

Here a thread in the process copies each file to the original stream instead: same files,
same redirection (Dagster's `redirect_to_file`), same completion marker, same layout and UI;
nothing to orphan, so nothing to watch. Reading, subscriptions and deletion are Dagster's.
On Windows, where Dagster polls with a helper script, Dagster's capture is used.
Configured in deploy/local/dagster.yaml as the instance's `compute_logs`; subclassing is the
documented way to configure a storage, and no library offers this. Without a `base_dir` it
uses the instance's own `storage` folder, as Dagster's default does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Generator, Mapping, Sequence
from typing import IO, Any

from dagster._config import Field, StringSource
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.instance import DagsterInstance
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file
from dagster_shared.seven import IS_WINDOWS

POLL_S = 0.2  # a copier looks for new output this often (Dagster's `tail -F`: every 1 s)
CHUNK = 1 << 16
FINISH_S = 5.0  # at most this long to copy the rest when a capture ends


class ThreadMirroredComputeLogManager(LocalComputeLogManager):
    """Dagster's local compute logs, copied back to the streams by a thread (see module)."""

    def __init__(self, base_dir: str | None = None, polling_timeout: float | None = None,
                 inst_data: ConfigurableClassData | None = None):
        """`base_dir` None: the instance's `storage` folder, known once the instance
        registers itself (before any capture or read)."""
        super().__init__(base_dir or "", polling_timeout, inst_data)
        self._base_dir_set = base_dir is not None

    @classmethod
    def config_type(cls) -> dict:
        return {"base_dir": Field(StringSource, is_required=False),
                "polling_timeout": Field(float, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> ThreadMirroredComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: DagsterInstance) -> None:
        if not self._base_dir_set:  # where Dagster's default compute logs live
            self._base_dir = os.path.join(instance.root_directory, "storage")
            self._base_dir_set = True
        super().register_instance(instance)

    @contextlib.contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        if IS_WINDOWS:
            with super().capture_logs(log_key) as context:
                yield context
            return
        out = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        err = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with mirrored(sys.stdout, out), mirrored(sys.stderr, err):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))  # as Dagster: the capture is complete


@contextlib.contextmanager
def mirrored(stream: IO, path: str) -> Generator[None, None, None]:
    """Dagster's `mirror_stream_to_file` with a thread in place of `tail -F`: the stream's
    file descriptor writes to `path` inside the block, and what reaches the file is copied
    to the stream's original descriptor, the last of it before the block ends."""
    ensure_file(path)
    try:
        target = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        # No descriptor (a test runner's stand-in): Dagster's redirect does nothing either.
        with redirect_to_file(stream, path):
            yield
        return
    copier = _Copier(path, target)  # owns `target` from here on
    try:
        copier.start()
        with redirect_to_file(stream, path):
            yield
    finally:
        copier.finish()


class _Copier(threading.Thread):
    """Copies a file, as it grows, from its start to a descriptor, until `finish`; closes
    both when it ends."""

    def __init__(self, path: str, target: int) -> None:
        super().__init__(name=f"compute-log-mirror:{os.path.basename(path)}", daemon=True)
        self._path, self._target = path, target
        self._done = threading.Event()
        # Unbuffered: a buffered reader's lock, held by this thread when a step forks, would
        # never be released in the child, which closes the file when its block ends.
        self._source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed when it ends

    def run(self) -> None:
        try:
            while not self._done.wait(POLL_S):
                self._copy()
            self._copy()  # whatever was written before the block ended
        finally:
            self._close()

    def _close(self) -> None:
        self._source.close()
        os.close(self._target)

    def _copy(self) -> None:
        while chunk := self._source.read(CHUNK):
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(self._target, view):]
                except OSError:  # the original stream went away: the file still has it all
                    return

    def finish(self) -> None:
        """Ends the copy once everything written is copied. A reader that stopped reading
        the original stream (a full pipe) never holds up the step: after `FINISH_S` the
        thread is left to finish or die with the process (the file has everything), and
        keeps its descriptor, so no write of it can reach a file that reuses the number."""
        self._done.set()
        if self.is_alive():
            self.join(FINISH_S)
        elif not self._source.closed:  # never started
            self._close()
