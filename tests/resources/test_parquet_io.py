"""The values IO manager: one code path for a local folder and S3 (moto's server on
loopback), partition ranges as dicts, no value for a rejected partition, atomic writes."""

import errno
import os

import dagster as dg
import pandas as pd
import pytest

from resources.parquet_io import ParquetIOManager, ValueNotFoundError, ValueWriteError, _ParquetValues
from tests.resources.test_s3_landing import s3_endpoint  # noqa: F401 - the moto server fixture

PARTS = dg.DynamicPartitionsDefinition(name="parts")
BUCKET = "values-bucket"


@dg.asset(partitions_def=PARTS, io_manager_key="values_io_manager",
          backfill_policy=dg.BackfillPolicy.multi_run(10))
def rows(context: dg.AssetExecutionContext) -> dict:
    """Every partition but `bad` has a value; each frame carries a small profile in attrs."""
    out = {}
    for key in context.partition_keys:
        if key != "bad":
            frame = pd.DataFrame({"id": [f"{key}-1", f"{key}-2"], "amount": [1.5, 2.5]})
            frame.attrs["profile"] = {"batch": key, "rows": 2}
            out[key] = frame
    return out


@dg.asset(partitions_def=PARTS, io_manager_key="values_io_manager",
          ins={"rows": dg.AssetIn(metadata={"columns": ["amount"]})})
def doubled(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(amount=rows["amount"] * 2)


def _run(manager: ParquetIOManager, instance, selection, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([rows, doubled], selection=selection, instance=instance,
                          resources={"values_io_manager": manager}, **kwargs)


def _range(first: str, last: str) -> dict:
    return {"tags": {"dagster/asset_partition_range_start": first,
                     "dagster/asset_partition_range_end": last}}


@pytest.fixture
def s3_root(s3_endpoint, monkeypatch):  # noqa: F811 - the fixture imported above
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield ParquetIOManager(root=f"s3://{BUCKET}/values", s3_endpoint_url=s3_endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing"), client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _exercise(manager: ParquetIOManager, instance) -> None:
    instance.add_dynamic_partitions("parts", ["a", "bad", "c"])
    assert _run(manager, instance, [rows], **_range("a", "c")).success
    assert manager.exists(rows.key, "a") and not manager.exists(rows.key, "bad")
    assert manager.load(rows.key, "c")["id"].tolist() == ["c-1", "c-2"]
    assert manager.attrs(rows.key, "a") == {"profile": {"batch": "a", "rows": 2}}
    with pytest.raises(ValueNotFoundError, match="rows partition 'bad'"):
        manager.load(rows.key, "bad")

    result = _run(manager, instance, [doubled], partition_key="c")
    assert result.success
    assert result.output_for_node("doubled")["amount"].tolist() == [3.0, 5.0]
    assert list(manager.load(doubled.key, "c").columns) == ["amount"]  # only the columns asked

    # A partition that has no value now (a re-landed batch rejected) loses its earlier one.
    assert _run(manager, instance, [rows], partition_key="a").success
    assert manager.exists(rows.key, "a")

    @dg.asset(name="rows", partitions_def=PARTS, io_manager_key="values_io_manager")
    def rejected() -> dict:
        return {}  # no value for this partition (annotated None, no IO manager would run)

    assert dg.materialize([rejected], instance=instance, partition_key="a",
                          resources={"values_io_manager": manager}).success
    assert not manager.exists(rows.key, "a")
    assert not _run(manager, instance, [doubled], partition_key="a",
                    raise_on_error=False).success


def test_local_folder(tmp_path, instance):
    manager = ParquetIOManager(root=str(tmp_path / "values"))
    _exercise(manager, instance)
    assert sorted(p.name for p in (tmp_path / "values" / "rows").iterdir()) == ["c.parquet"]
    assert manager.uri(rows.key, "c") == (tmp_path / "values" / "rows" / "c.parquet").as_uri()


def test_s3_bucket(s3_root, instance):
    manager, client = s3_root
    _exercise(manager, instance)
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == ["values/doubled/c.parquet", "values/rows/c.parquet"]
    assert manager.uri(rows.key, "c") == f"s3://{BUCKET}/values/rows/c.parquet"


def test_a_failed_write_names_the_value_keeps_the_old_one_and_leaves_no_temp_file(
        tmp_path, instance, monkeypatch):
    manager = ParquetIOManager(root=str(tmp_path / "values"))
    instance.add_dynamic_partitions("parts", ["a"])
    assert _run(manager, instance, [rows], partition_key="a").success
    before = manager.load(rows.key, "a")

    class Full:
        def __init__(self, stream) -> None:
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.stream.close()

        def write(self, data: bytes) -> int:
            self.stream.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    original = _ParquetValues._open_output
    monkeypatch.setattr(_ParquetValues, "_open_output", lambda self, path: Full(original(self, path)))
    result = _run(manager, instance, [rows], partition_key="a", raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error
    while error.cause is not None and "could not store" not in error.message:
        error = error.cause
    assert "could not store rows partition 'a'" in error.message
    assert "No space left on device" in error.message and str(tmp_path / "values") in error.message
    monkeypatch.undo()
    pd.testing.assert_frame_equal(manager.load(rows.key, "a"), before)
    assert [p.name for p in (tmp_path / "values" / "rows").iterdir()] == ["a.parquet"]
    assert issubclass(ValueWriteError, OSError)


def test_a_range_output_that_is_not_a_dict_is_refused(tmp_path, instance):
    @dg.asset(name="rows", partitions_def=PARTS, io_manager_key="values_io_manager",
              backfill_policy=dg.BackfillPolicy.multi_run(10))
    def one_frame() -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    instance.add_dynamic_partitions("parts", ["a", "b"])
    result = dg.materialize([one_frame], instance=instance, raise_on_error=False,
                            resources={"values_io_manager": ParquetIOManager(root=str(tmp_path))},
                            **_range("a", "b"))
    assert not result.success
    assert not (tmp_path / "rows").exists()


def test_a_root_that_is_neither_local_nor_s3_is_an_error():
    with pytest.raises(ValueError, match="gs://b/v"):
        ParquetIOManager(root="gs://b/v").values  # noqa: B018 - the property builds the store


def fill_values_disk(monkeypatch: pytest.MonkeyPatch, full=lambda path: True) -> None:
    """Every values IO manager (also the ones a run builds from config) runs out of space
    writing the paths `full` selects."""
    from tests.resources.test_ingest_atomic_writes import _FullStream

    original = _ParquetValues._open_output

    def open_output(self, path):
        stream = original(self, path)
        return _FullStream(stream) if full(str(path)) else stream

    monkeypatch.setattr(_ParquetValues, "_open_output", open_output)


def test_the_per_path_hook_writes_the_same_parquet_and_refuses_other_values(tmp_path):
    """UPathIOManager's `dump_to_path` (for a caller writing one path) stores what
    `handle_output` stores, and refuses a non-frame naming the asset."""
    manager = ParquetIOManager(root=str(tmp_path))
    key = dg.AssetKey("landed_batch")
    path = manager.values.path_for(key, "b1")
    context = dg.build_output_context(asset_key=key)
    manager.values.dump_to_path(context, pd.DataFrame({"a": [1, 2]}), path)
    assert manager.load(key, "b1")["a"].tolist() == [1, 2]
    with pytest.raises(TypeError, match="landed_batch: the values IO manager stores pandas"):
        manager.values.dump_to_path(context, {"a": 1}, path)


@dg.asset(partitions_def=PARTS, io_manager_key="values_io_manager",
          ins={"rows": dg.AssetIn(metadata={"columns": [], "allow_missing_partitions": True})})
def counted(context: dg.AssetExecutionContext, rows: dict) -> dict:
    """A range's input as a dict partition -> frame, missing partitions left out."""
    return {key: pd.DataFrame({"batches": [len(rows)]}) for key in context.partition_keys}


def test_a_range_input_logs_one_line_and_names_the_missing_partitions_once(tmp_path, instance):
    """Found in an ingestion run's event log: loading `landed_batch` for a range of 167
    batches wrote 167 "Loading partition ... from ..." debug events (a tenth of the run's
    events, each stored). One line says what was loaded and from where, another which
    partitions have no value."""
    manager = ParquetIOManager(root=str(tmp_path / "values"))
    keys = [f"p{i}" for i in range(12)] + ["bad"]
    instance.add_dynamic_partitions("parts", keys)
    assert _run(manager, instance, [rows], **_range("p0", "bad")).success
    result = dg.materialize([rows, counted], selection=[counted], instance=instance,
                            resources={"values_io_manager": manager}, **_range("p0", "bad"))
    assert result.success
    assert manager.load(counted.key, "p3")["batches"].tolist() == [12]
    messages = [r.event_log_entry.user_message for r in
                instance.get_records_for_run(result.run_id, limit=10_000).records
                if not r.event_log_entry.is_dagster_event]  # the run's log lines, as stored
    loading = [m for m in messages if "Loading partition" in m or "Loaded 12" in m]
    assert loading == [f"Loaded 12 partitions of rows from {tmp_path / 'values' / 'rows'}"], loading
    missing = [m for m in messages if "bad" in m and "no stored value" in m]
    assert len(missing) == 1, messages


def test_a_stored_frame_is_the_file_pandas_writes_without_copying_its_attrs(tmp_path,
                                                                            monkeypatch):
    """Found profiling ingestion: pandas deep-copies `attrs` into every frame and column it
    makes while writing, and a batch carries its profile there (storing it took three times
    as long). The file is what `to_parquet` writes, attrs included; nothing is copied."""
    import io

    import pyarrow.parquet as pq
    from pandas.core import generic

    frame = pd.DataFrame({"id": ["a", "b", None], "amount": [1.5, None, 2.5],
                          "n": pd.array([1, None, 3], dtype="Int64"),
                          "cat": pd.Categorical(["x", "y", "x"])})
    frame.attrs["profile"] = {"layout_id": "abc", "columns": {"amount": [0.1, 0.2]}}
    buffer = io.BytesIO()
    frame.copy().to_parquet(buffer, index=False)  # a copy: `frame` caches no column yet
    by_pandas = buffer.getvalue()
    copies = []
    monkeypatch.setattr(generic, "deepcopy", lambda value, *a: copies.append(1) or value)
    values = ParquetIOManager(root=str(tmp_path)).values
    values._store(rows.key, "a", frame)
    ours = values.path_for(rows.key, "a").read_bytes()
    assert copies == []
    assert frame.attrs == {"profile": {"layout_id": "abc", "columns": {"amount": [0.1, 0.2]}}}
    mine, theirs = pq.read_schema(io.BytesIO(ours)), pq.read_schema(io.BytesIO(by_pandas))
    assert mine.equals(theirs, check_metadata=True)
    back = pd.read_parquet(io.BytesIO(ours))
    pd.testing.assert_frame_equal(back, pd.read_parquet(io.BytesIO(by_pandas)))
    assert back.attrs == frame.attrs
