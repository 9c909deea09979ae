"""Artifact writes are atomic: a full disk (or any failed write) raises naming the key and the
path, keeps the previous content, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from resources.artifact_store import ArtifactStore, ArtifactWriteError


class _FullStream:
    """Writes half of what it is given, then fails like a disk that just filled up."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def __enter__(self) -> _FullStream:
        return self

    def __exit__(self, *exc) -> None:
        self._stream.close()

    def close(self) -> None:
        self._stream.close()

    def write(self, data: bytes) -> int:
        self._stream.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """A tiny filesystem: the real local one, except that output streams for paths `full`
    selects run out of space."""

    def __init__(self, full: Callable[[str], bool] = lambda path: True) -> None:
        from pyarrow import fs

        self._fs = fs.LocalFileSystem()
        self.full = full

    def __getattr__(self, name: str):
        return getattr(self._fs, name)

    def open_output_stream(self, path: str, *args, **kwargs):
        stream = self._fs.open_output_stream(path, *args, **kwargs)
        return _FullStream(stream) if self.full(path) else stream


def fill_disk(monkeypatch: pytest.MonkeyPatch, full: Callable[[str], bool] = lambda path: True) -> FullDisk:
    """Every ArtifactStore (also the ones a run builds from config) writes through FullDisk."""
    disk = FullDisk(full)
    monkeypatch.setattr(ArtifactStore, "_filesystem", lambda self: disk)
    return disk


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_write_is_complete_and_leaves_only_the_file(tmp_path):
    store = ArtifactStore(root=str(tmp_path / "art"))
    uri = store.write_json("batches/b.report.json", {"passed": True})
    assert uri == (tmp_path / "art" / "batches" / "b.report.json").as_uri()
    assert store.read_json("batches/b.report.json") == {"passed": True}
    assert files_under(tmp_path / "art") == ["batches/b.report.json"]


def test_disk_full_raises_naming_key_and_path_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    store = ArtifactStore(root=str(tmp_path / "art"))
    store.write_json("batches/b.report.json", {"passed": False, "version": "old"})
    fill_disk(monkeypatch)
    with pytest.raises(ArtifactWriteError) as error:
        store.write_json("batches/b.report.json", {"passed": True, "version": "new"})
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert "batches/b.report.json" in message and str(tmp_path / "art" / "batches") in message
    assert "No space left on device" in message
    monkeypatch.undo()
    assert store.read_json("batches/b.report.json") == {"passed": False, "version": "old"}
    assert files_under(tmp_path / "art") == ["batches/b.report.json"]


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    store = ArtifactStore(root=str(tmp_path / "art"))
    disk = fill_disk(monkeypatch, full=lambda path: False)

    def no_rename(source: str, target: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    disk.move = no_rename
    with pytest.raises(ArtifactWriteError, match=r"batches/x\.parquet.*Input/output error"):
        store.write_bytes("batches/x.parquet", b"data")
    assert files_under(tmp_path / "art") == []


def test_every_write_uses_its_own_temp_file(tmp_path, monkeypatch):
    store = ArtifactStore(root=str(tmp_path / "art"))
    disk = fill_disk(monkeypatch, full=lambda path: False)
    opened: list[str] = []
    real_open = disk._fs.open_output_stream
    disk.open_output_stream = lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    store.write_bytes("k.bin", b"1")
    store.write_bytes("k.bin", b"2")
    assert len(set(opened)) == 2 and all(os.path.dirname(p) == str(tmp_path / "art") for p in opened)
    assert store.read_bytes("k.bin") == b"2"
