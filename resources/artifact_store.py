"""Artifact store for curated batches and reports: a local folder or any S3-compatible bucket.

One code path for both through pyarrow's filesystem layer, so tests of the local store
exercise the same read/write code that runs against S3 in production. Every write is
atomic: locally a temp file in the same folder renamed into place, on S3 a single object
upload (an object appears only once complete). A write that fails raises
`ArtifactWriteError` naming the key and the path and leaves no temp file behind.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    import pandas as pd


class ArtifactWriteError(OSError):
    """A write that did not take effect (disk full, permissions, network): the message names
    the key and the path; the previous content, if any, is untouched."""


class ArtifactStore(dg.ConfigurableResource):
    """`root` is a local path or `s3://bucket/prefix`; S3 credentials come from EnvVars."""

    root: str
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    _fs: Any = PrivateAttr(default=None)

    def _filesystem(self):
        if self._fs is None:
            from pyarrow import fs

            if self.root.startswith("s3://"):
                self._fs = fs.S3FileSystem(
                    endpoint_override=self.s3_endpoint_url,
                    region=self.s3_region,
                    access_key=self.aws_access_key_id,
                    secret_key=self.aws_secret_access_key,
                    allow_bucket_creation=True,
                )
            else:
                self._fs = fs.LocalFileSystem()
        return self._fs

    def _path(self, key: str) -> str:
        base = self.root.removeprefix("s3://").rstrip("/")
        return f"{base}/{key.lstrip('/')}"

    def uri(self, key: str) -> str:
        if self.root.startswith("s3://"):
            return f"s3://{self._path(key)}"
        from pathlib import Path

        return Path(self._path(key)).resolve().as_uri()

    def local_path(self, key: str) -> str | None:
        return None if self.root.startswith("s3://") else self._path(key)

    def write_bytes(self, key: str, data: bytes) -> str:
        """Replace `key` with `data` all at once, or raise and leave it as it was."""
        filesystem, path = self._filesystem(), self._path(key)
        if self.root.startswith("s3://"):
            try:
                with filesystem.open_output_stream(path) as out:
                    out.write(data)
            except Exception as error:
                raise self._write_error(key, path, error) from error
            return self.uri(key)
        folder, name = path.rsplit("/", 1)
        # Hidden, unique per write (two runs never share one), same folder (rename is atomic).
        temp = f"{folder}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            filesystem.create_dir(folder, recursive=True)
            with filesystem.open_output_stream(temp) as out:
                out.write(data)
            filesystem.move(temp, path)
        except Exception as error:
            leftover = self._discard(temp)
            raise self._write_error(key, path, error, leftover) from error
        return self.uri(key)

    def _discard(self, temp: str) -> str:
        """Remove a temp file a failed write left; '' when gone, else why it stayed."""
        from pyarrow import fs

        try:
            filesystem = self._filesystem()
            if filesystem.get_file_info(temp).type != fs.FileType.NotFound:
                filesystem.delete_file(temp)
        except Exception as error:  # noqa: BLE001 - reported with the write error
            return f"; the temp file {temp} could not be removed ({error})"
        return ""

    @staticmethod
    def _write_error(key: str, path: str, error: Exception, note: str = "") -> ArtifactWriteError:
        message = f"could not write {key!r} to {path}: {type(error).__name__}: {error}{note}"
        number = getattr(error, "errno", None)
        return ArtifactWriteError(number, message) if number else ArtifactWriteError(message)

    def read_bytes(self, key: str) -> bytes:
        with self._filesystem().open_input_stream(self._path(key)) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        from pyarrow import fs

        info = self._filesystem().get_file_info(self._path(key))
        return info.type != fs.FileType.NotFound

    def write_frame(self, key: str, frame: pd.DataFrame) -> str:
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self.write_bytes(key, buffer.getvalue())

    def read_frame(self, key: str, columns: list[str] | None = None) -> pd.DataFrame:
        import io

        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read_bytes(key)), columns=columns)

    def write_json(self, key: str, payload: Any) -> str:
        return self.write_bytes(key, json.dumps(payload, indent=2, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))
