"""The S3 side of the landing zone and the artifact store, against a real S3-compatible
server (moto's) on loopback: listing, partial uploads, download, ingestion, late labels."""

import dataclasses
import io

import dagster as dg
import pandas as pd
import pytest

from resources.artifact_store import ArtifactStore
from resources.dataset import S3DatasetResource, split_s3_uri
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed
from unified_assets.ml.generator import batch_name, generate_batch

BUCKET = "landing-bucket"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1",
                        "UNIFIED_AI_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _put(client, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    client.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())


def _s3_settings(settings):
    return dataclasses.replace(settings, landing_uri=f"s3://{BUCKET}/landing", s3_endpoint=True)


def test_split_s3_uri():
    assert split_s3_uri("s3://b/a/b/") == ("b", "a/b")
    assert split_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        split_s3_uri("/tmp/x")


def test_sensor_lists_complete_objects_only_and_ingestion_reads_them(settings, instance, s3):
    _put(s3, f"landing/{batch_name(0)}.parquet", generate_batch(0, 600))
    _put(s3, f"landing/.{batch_name(1)}.parquet.partial", generate_batch(1, 600))
    _put(s3, f"landing/labels/{batch_name(0)}.parquet", generate_batch(0, 600)[["transaction_id"]])
    _put(s3, f"elsewhere/{batch_name(2)}.parquet", generate_batch(2, 600))
    s3.put_object(Bucket=BUCKET, Key="landing/export.csv", Body=b"a,b\n1,2\n")
    defs = build_definitions(_s3_settings(settings))
    dataset = defs.resources["dataset"]
    assert isinstance(dataset, S3DatasetResource)
    # Named for the landing sensor's note; the labels prefix and a partial upload are not.
    with dg.build_resources({"dataset": dataset}) as resources:
        assert resources.dataset.scan_batches()[1] == ["export.csv"]

    sensor = defs.resolve_sensor_def("landing_zone_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs,
                                 resources={"dataset": dataset}) as context:
        result = sensor(context)
    (request,) = result.run_requests
    assert request.partition_key == batch_name(0)
    assert request.tags["unified-ai/batch-file"] == f"s3://{BUCKET}/landing/{batch_name(0)}.parquet"

    summary = ingest_landed(defs, instance)
    assert summary.batches_ingested == [batch_name(0)]
    curated = defs.resources["values_io_manager"].load(dg.AssetKey("landed_batch"), batch_name(0))
    assert len(curated) == 600
    assert curated["row_id"].tolist() == generate_batch(0, 600)["transaction_id"].tolist()


def test_a_range_run_lists_the_prefix_once(settings, instance, s3, monkeypatch):
    """LIST requests are billed: one listing per run, not one per batch."""
    for index in range(4):
        _put(s3, f"landing/{batch_name(index)}.parquet", generate_batch(index, 200))
    defs = build_definitions(_s3_settings(settings))
    listings = []
    original = S3DatasetResource._list
    monkeypatch.setattr(S3DatasetResource, "_list",
                        lambda self, uri: listings.append(uri) or original(self, uri))
    summary = ingest_landed(defs, instance)  # lists once itself, then one run over the range
    assert summary.batches_ingested == [batch_name(i) for i in range(4)]
    assert listings == [f"s3://{BUCKET}/landing"] * 2


def test_late_labels_land_in_the_s3_labels_prefix(settings, instance, s3):
    late = generate_batch(3, 500)
    _put(s3, f"landing/{batch_name(3)}.parquet", late.drop(columns=["is_fraud"]))
    defs = build_definitions(_s3_settings(settings))
    ingest_landed(defs, instance)
    dataset = defs.resources["dataset"]
    sensor = defs.resolve_sensor_def("labels_landing_sensor")

    def tick(cursor=None):
        with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor,
                                     resources={"dataset": dataset,
                                                "store": defs.resources["store"]}) as context:
            return sensor(context)

    assert isinstance(tick(), dg.SkipReason)
    _put(s3, f"landing/labels/{batch_name(3)}.parquet", late[["transaction_id", "is_fraud"]])
    first = tick()
    (request,) = first.run_requests
    assert request.partition_key == batch_name(3)
    assert isinstance(tick(first.cursor), dg.SkipReason)
    # A corrected file (a new object version) is picked up again.
    _put(s3, f"landing/labels/{batch_name(3)}.parquet",
         late[["transaction_id", "is_fraud"]].iloc[::-1])
    (again,) = tick(first.cursor).run_requests
    assert again.run_key != request.run_key

    job = defs.resolve_job_def("ingest_labels").get_subset(
        asset_selection={dg.AssetKey("batch_labels")})
    assert job.execute_in_process(instance=instance, partition_key=batch_name(3)).success
    labels = defs.resources["values_io_manager"].load(dg.AssetKey("batch_labels"), batch_name(3))
    assert labels["is_fraud"].tolist() == late["is_fraud"].tolist()


def test_artifact_store_round_trips_on_s3(s3, s3_endpoint):
    store = ArtifactStore(root=f"s3://{BUCKET}/artifacts", s3_endpoint_url=s3_endpoint,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    frame = generate_batch(0, 50)
    assert store.write_frame("batches/b.parquet", frame) == f"s3://{BUCKET}/artifacts/batches/b.parquet"
    store.write_json("reports/r.json", {"auc": 0.81})
    assert store.exists("batches/b.parquet") and not store.exists("batches/missing.parquet")
    assert store.read_frame("batches/b.parquet")["amount"].tolist() == frame["amount"].tolist()
    assert store.read_json("reports/r.json") == {"auc": 0.81}
    assert store.local_path("reports/r.json") is None


def test_an_object_replaced_after_listing_is_not_read_as_the_listed_version(settings, s3, tmp_path):
    _put(s3, f"landing/{batch_name(0)}.parquet", generate_batch(0, 50))
    defs = build_definitions(_s3_settings(settings))
    with dg.build_resources({"dataset": defs.resources["dataset"]}) as resources:
        dataset = resources.dataset
        listed = dataset.batch(batch_name(0))
        _put(s3, f"landing/{batch_name(0)}.parquet", generate_batch(1, 70))  # re-landed
        with pytest.raises(dg.Failure, match="changed since it was listed"):
            dataset.fetch(listed)
        assert not [p for p in (settings.home / "landing-cache").rglob("*") if p.is_file()]
        current = dataset.batch(batch_name(0))
        assert current.version != listed.version
        assert len(pd.read_parquet(dataset.fetch(current))) == 70
