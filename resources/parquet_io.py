"""The one IO manager for values (landed batches, labels): pandas frames stored as Parquet
under `<root>/<asset key>/<partition>.parquet`, in a local folder or under `s3://bucket/prefix`
with the same code (Dagster's `UPathIOManager`: universal_pathlib over fsspec, s3fs for S3).

Partitioned assets store one file per partition. A run over a partition range (the landed
batches' `BackfillPolicy.multi_run`) hands its output as a dict partition -> frame; a
partition missing from the dict, or an output of None, stores no value and removes the one
an earlier run stored, so a rejected batch never leaves an older version's rows readable.

Writes are atomic: locally a hidden temp file in the same folder renamed into place, on S3
one object upload (an object appears only once complete). A failed write raises
`ValueWriteError` naming the asset, the partition and the path, and leaves no temp file.

Frame `attrs` travel with the frame (pandas keeps them in the Parquet schema metadata), so a
small dict describing a frame (a batch's column profile) is read without reading its rows:
`ParquetIOManager.attrs`.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.storage.upath_io_manager import UPathIOManager, escape_dotdot_segments
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    import pandas as pd
    from upath import UPath

VALUES_IO_MANAGER = "values_io_manager"  # the resource key assets name in `io_manager_key`
PANDAS_ATTRS = b"PANDAS_ATTRS"  # where pandas (>= 2.1) keeps `DataFrame.attrs` in Parquet
PANDAS_METADATA = b"pandas"  # pyarrow's description of the frame, `attrs` as "attributes"


class ValueWriteError(OSError):
    """A value that was not stored (disk full, permissions, network): the message names the
    asset, the partition and the path; the previous value, if any, is untouched."""


class ValueNotFoundError(FileNotFoundError):
    """No value stored for that asset partition (never materialized, or rejected)."""


def frame_bytes(frame: pd.DataFrame) -> bytes:
    """The Parquet file `frame.to_parquet(index=False)` writes, `attrs` included, without
    pandas copying `attrs` on the way: pandas deep-copies them into every intermediate frame
    and column it makes (pyarrow takes each column), which made storing a batch with its
    9 KB profile three times slower (23 ms against 8 ms here, bench/RESULTS.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    attrs = frame.attrs
    frame.attrs = {}
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    finally:
        frame.attrs = attrs
    if attrs:  # where pyarrow and pandas keep them, so `read_parquet` restores them
        metadata = dict(table.schema.metadata or {})
        described = json.loads(metadata[PANDAS_METADATA])
        described["attributes"] = attrs
        metadata[PANDAS_METADATA] = json.dumps(described).encode()
        table = table.replace_schema_metadata({**metadata, PANDAS_ATTRS: json.dumps(attrs)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")  # pandas' default codec
    return buffer.getvalue()


class _ParquetValues(UPathIOManager):
    extension = ".parquet"

    def __init__(self, base_path: UPath, local: bool) -> None:
        super().__init__(base_path=base_path)
        self._local = local

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        # A hierarchical filesystem resolves `..`: a partition key never leaves its folder.
        return super().make_safe_partition_path(base_path, escape_dotdot_segments(partition))

    def path_for(self, asset_key: dg.AssetKey, partition: str | None) -> UPath:
        path = self._base_path.joinpath(*asset_key.path)
        if partition is not None:
            path = self.make_safe_partition_path(path, partition)
        return self._with_extension(path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not context.has_asset_partitions:
            self._store(context.asset_key, None, obj)
            if obj is not None:
                context.add_output_metadata({"value_path": str(self.path_for(context.asset_key, None))})
            return
        keys = list(context.asset_partition_keys)
        if isinstance(obj, Mapping):
            unknown = sorted(set(obj) - set(keys))
            if unknown:
                raise ValueError(f"{context.asset_key.to_user_string()}: the output names "
                                 f"partitions {unknown} outside the run's {keys}")
            values = dict(obj)
        elif obj is None or len(keys) == 1:
            values = {keys[0]: obj} if obj is not None else {}
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: a run over {len(keys)} partitions "
                f"outputs a dict partition -> frame, not {type(obj).__name__}")
        for key in keys:
            self._store(context.asset_key, key, values.get(key))
        if len(keys) == 1 and values:
            context.add_output_metadata({"value_path": str(self.path_for(context.asset_key, keys[0]))})

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        # UPathIOManager's per-path hook; `handle_output` above stores through `_store`, which
        # also removes values, so this only serves a caller that writes one path directly.
        self._dump(obj, path, context.asset_key.to_user_string())

    def load_partitions(self, context: dg.InputContext) -> Any:
        """A range as a dict partition -> frame, with one log line for the range: Dagster's
        logs one per partition, and a range run of 167 batches stored 167 such events."""
        keys = list(context.asset_partition_keys)
        if len(keys) == 1:
            return super().load_partitions(context)
        allow_missing = (context.definition_metadata or {}).get("allow_missing_partitions", False)
        values, missing = {}, []
        for key in keys:
            try:
                values[key] = self.load_from_path(context, self.path_for(context.asset_key, key))
            except FileNotFoundError:
                if not allow_missing:
                    raise
                missing.append(key)
        asset = context.asset_key.to_user_string()
        context.log.debug(f"Loaded {len(values)} partitions of {asset} from "
                          f"{self._base_path.joinpath(*context.asset_key.path)}")
        if missing:
            shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more"
                                               if len(missing) > 20 else "")
            context.log.warning(f"{asset} has no stored value for {shown}: left out of the input "
                                "(allow_missing_partitions)")
        return values

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        metadata = context.definition_metadata or {}
        return self._read(path, metadata.get("columns"), context.asset_key)

    def load(self, asset_key: dg.AssetKey, partition: str | None,
             columns: list[str] | None = None) -> pd.DataFrame:
        return self._read(self.path_for(asset_key, partition), columns, asset_key, partition)

    def attrs(self, asset_key: dg.AssetKey, partition: str | None) -> dict:
        """The stored frame's `attrs`, read from the Parquet footer (no rows)."""
        import pyarrow.parquet as pq

        path = self.path_for(asset_key, partition)
        try:
            with path.open("rb") as stream:
                schema = pq.read_schema(stream)
        except FileNotFoundError as error:
            raise self._missing(asset_key, partition, path) from error
        raw = (schema.metadata or {}).get(PANDAS_ATTRS)
        return json.loads(raw) if raw else {}

    def exists(self, asset_key: dg.AssetKey, partition: str | None) -> bool:
        return self.path_for(asset_key, partition).exists()

    def _read(self, path: UPath, columns: list[str] | None, asset_key: dg.AssetKey,
              partition: str | None = None) -> pd.DataFrame:
        import pandas as pd

        try:
            with path.open("rb") as stream:
                return pd.read_parquet(stream, columns=columns)
        except FileNotFoundError as error:
            raise self._missing(asset_key, partition or path.stem, path) from error

    @staticmethod
    def _missing(asset_key: dg.AssetKey, partition: str | None, path: UPath) -> ValueNotFoundError:
        where = f" partition {partition!r}" if partition else ""
        return ValueNotFoundError(
            f"no stored value for {asset_key.to_user_string()}{where} at {path}: it was never "
            "materialized, or its latest materialization stored none (a rejected batch)")

    def _store(self, asset_key: dg.AssetKey, partition: str | None, obj: Any) -> None:

        path = self.path_for(asset_key, partition)
        what = f"{asset_key.to_user_string()}" + (f" partition {partition!r}" if partition else "")
        if obj is None:
            try:
                path.unlink(missing_ok=True)  # no value now: an earlier one must not be read
            except OSError as error:
                raise ValueWriteError(f"could not remove the earlier value of {what} at {path}: "
                                      f"{error}") from error
            return
        self._dump(obj, path, what)

    def _dump(self, obj: Any, path: UPath, what: str) -> None:
        import pandas as pd

        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{what}: the values IO manager stores pandas DataFrames, got "
                            f"{type(obj).__name__}")
        self._write(path, frame_bytes(obj), what)

    def _open_output(self, path: UPath):
        """The one place bytes are written (tests make it fail like a full disk)."""
        return path.open("wb")

    def _write(self, path: UPath, data: bytes, what: str) -> None:
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp") if self._local else None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._open_output(temp or path) as out:
                out.write(data)
            if temp is not None:
                os.replace(temp.path, path.path)
        except Exception as error:
            note = ""
            if temp is not None:
                try:
                    temp.unlink(missing_ok=True)
                except OSError as cleanup:
                    note = f"; the temp file {temp} could not be removed ({cleanup})"
            message = f"could not store {what} at {path}: {type(error).__name__}: {error}{note}"
            number = getattr(error, "errno", None)
            raise (ValueWriteError(number, message) if number else ValueWriteError(message)) \
                from error


class ParquetIOManager(dg.ConfigurableIOManager):
    """Values as Parquet under `root`: a local folder or `s3://bucket/prefix` (credentials and
    an S3-compatible endpoint from EnvVars). Bodies that pick partitions at run time (a
    training window, the champion's training batches) read through `load`/`attrs`/`exists`,
    the same code the inputs use."""

    root: str = Field(description="A local folder or s3://bucket/prefix; with s3_bucket, a "
                      "prefix in that bucket.")
    s3_bucket: str | None = Field(default=None, description="Store under s3://<s3_bucket>/<root>.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint.")
    s3_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    _values: _ParquetValues | None = PrivateAttr(default=None)

    @property
    def values(self) -> _ParquetValues:
        if self._values is None:
            from upath import UPath

            root = f"s3://{self.s3_bucket}/{self.root.strip('/')}" if self.s3_bucket else self.root
            if root.startswith("s3://"):
                options: dict[str, Any] = {"client_kwargs": {"region_name": self.s3_region}}
                if self.s3_endpoint_url:
                    options["endpoint_url"] = self.s3_endpoint_url
                if self.aws_access_key_id:
                    options |= {"key": self.aws_access_key_id,
                                "secret": self.aws_secret_access_key}
                self._values = _ParquetValues(UPath(root.rstrip("/"), **options), local=False)
            elif "://" in root and not root.startswith("file://"):
                raise ValueError(f"values root {root!r}: use a local folder or s3://bucket/prefix")
            else:
                local = UPath(os.path.abspath(root.removeprefix("file://")))
                self._values = _ParquetValues(local, local=True)
        return self._values

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self.values.handle_output(context, obj)

    def load_input(self, context: dg.InputContext) -> Any:
        return self.values.load_input(context)

    def load(self, asset_key: dg.AssetKey, partition: str | None,
             columns: list[str] | None = None) -> pd.DataFrame:
        """The stored frame of one asset partition; `ValueNotFoundError` when there is none."""
        return self.values.load(asset_key, partition, columns)

    def attrs(self, asset_key: dg.AssetKey, partition: str | None) -> dict:
        """The stored frame's `attrs` (e.g. a batch's profile), without its rows."""
        return self.values.attrs(asset_key, partition)

    def exists(self, asset_key: dg.AssetKey, partition: str | None) -> bool:
        return self.values.exists(asset_key, partition)

    def uri(self, asset_key: dg.AssetKey, partition: str | None) -> str:
        path = self.values.path_for(asset_key, partition)
        return str(path) if not self.values._local else path.as_uri()
