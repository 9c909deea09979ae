"""A handle on the production stack that `scripts/stack.sh up` started: its environment, and the
three places outcomes are read from (the webserver's GraphQL API, MLflow's REST API, Postgres),
the S3 landing zone batches are put in, and the CLI as a person types it."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "stack.sh"
VENV_BIN = ROOT / ".venv" / "bin"
COMPONENTS = ("postgres", "s3", "mlflow", "grpc", "daemon", "webserver")
MODEL = "payments-risk"

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""

MATERIALIZATIONS = """
query Materializations($key: AssetKeyInput!, $limit: Int) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetMaterializations(limit: $limit) {
        runId partition
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on MarkdownMetadataEntry { mdStr }
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on BoolMetadataEntry { boolValue }
          ... on JsonMetadataEntry { jsonString }
          ... on UrlMetadataEntry { url }
        }
      }
    }
  }
}"""

SENSOR_TICKS = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 200) { status runIds } } }
  }
}"""

SENSOR_ID = """
query SensorId($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { __typename ... on Sensor { sensorState { id } } }
}"""

STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""

REEXECUTE = """
mutation Reexecute($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN_ERRORS = """
fragment Err on PythonError { className message causes { className message } }
query RunErrors($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on ExecutionStepFailureEvent { message error { ...Err } }
          ... on RunFailureEvent { message error { ...Err } }
          ... on EngineEvent { message error { ...Err } }
        }
      }
    }
  }
}"""


METADATA_VALUE = ("text", "mdStr", "intValue", "floatValue", "boolValue", "jsonString", "url")


@dataclass
class Run:
    run_id: str
    job: str
    status: str
    start: float | None
    end: float | None
    tags: dict[str, str] = field(default_factory=dict)


def stack_sh(command: str, env: dict[str, str], timeout: float = 600,
             args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`bash scripts/stack.sh COMMAND ARGS` with the given environment."""
    return subprocess.run(["bash", str(SCRIPT), command, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of the stack's env file, as bash reads them (its values are %q-quoted)."""
    out = subprocess.run(["bash", "-c", f"set -a; . {shlex.quote(str(path))}; env -0"],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, check=True)
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in ("PATH", "PWD", "SHLVL", "_", "OLDPWD")}


class Stack:
    def __init__(self, state: Path, script_env: dict[str, str]):
        self.state = state
        self.script_env = script_env  # what stack.sh itself was run with
        self.env = read_env_file(state / "env")  # what the stack's Dagster processes get
        self.webserver = f"http://127.0.0.1:{self.port('webserver')}"
        self.mlflow = self.env["MLFLOW_TRACKING_URI"]
        self.bucket = self.env["UNIFIED_AI_S3_BUCKET"]
        # Runs a fault test failed on purpose: `wait_for` does not stop at them.
        self.expected_failures: set[str] = set()

    def port(self, component: str) -> int:
        return int((self.state / "run" / f"{component}.port").read_text())

    def pid(self, component: str) -> int:
        return int((self.state / "run" / f"{component}.pid").read_text().split()[0])

    def processes(self) -> set[int]:
        """Processes of this stack: stack.sh writes UNIFIED_AI_STACK_DIR into the environment of
        every Dagster process (code server, daemon, webserver, run workers); Postgres is its
        postmaster's process group."""
        mark = f"UNIFIED_AI_STACK_DIR={self.state}\0".encode()
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if mark in environ:
                found.add(int(entry))
        return found

    def kill(self, component: str) -> int:
        """SIGKILL a component's process group (a crash: no shutdown handler runs)."""
        pid = self.pid(component)
        os.killpg(pid, signal.SIGKILL)
        return pid

    def freeze(self, component: str, frozen: bool) -> None:
        """SIGSTOP / SIGCONT a component's process group: it hangs, as a stuck server does."""
        os.killpg(self.pid(component), signal.SIGSTOP if frozen else signal.SIGCONT)

    def log(self, component: str, lines: int = 60) -> str:
        path = self.state / "logs" / f"{component}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # --- S3 ---------------------------------------------------------------------------------

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["UNIFIED_AI_S3_ENDPOINT_URL"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            region_name=self.env["AWS_DEFAULT_REGION"])

    def land(self, indexes: range, rows: int, drift: Any = None) -> list[str]:
        """Generated batches put in the S3 landing zone, as an upstream system lands them."""
        from unified_assets.ml.generator import batch_name, generate_batch

        client, prefix = self.s3(), self.env["UNIFIED_AI_LANDING_URI"].split("/", 3)[3]
        bodies = {}
        for index in indexes:
            buffer = io.BytesIO()
            generate_batch(index, rows, drift=drift).to_parquet(buffer, index=False)
            bodies[batch_name(index)] = buffer.getvalue()
        # Generated first, uploaded back to back: files an upstream job lands together arrive
        # within milliseconds, so one landing-sensor tick sees them all (a tick between two
        # slow generations would split the landing into two ingestions and two retrains).
        for name, body in bodies.items():
            client.put_object(Bucket=self.bucket, Key=f"{prefix}/{name}.parquet", Body=body)
        return list(bodies)

    def snapshot(self) -> dict[str, bytes]:
        """Every object in the bucket (moto keeps them only in memory)."""
        client = self.s3()
        return {key: client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                for key in self.keys("")}

    def restore(self, objects: dict[str, bytes]) -> None:
        client = self.s3()
        for key, body in objects.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    # --- the webserver's GraphQL API --------------------------------------------------------

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.webserver}/graphql", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = json.load(response)
        assert not data.get("errors"), data["errors"]
        return data["data"]

    def runs(self, job: str | None = None) -> list[Run]:
        result = self.graphql(RUNS, {"filter": {"pipelineName": job} if job else {}})["runsOrError"]
        assert result["__typename"] == "Runs", result
        return [Run(r["runId"], r["jobName"], r["status"], r["startTime"], r["endTime"],
                    {t["key"]: t["value"] for t in r["tags"]}) for r in result["results"]]

    def wait_for(self, what: str, found: Callable[[list[Run]], Any], timeout: float = 600) -> Any:
        """Poll the runs until `found(runs)` is truthy; fail on a failed run, or on the
        deadline with the runs and the daemon's log."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs()
            value = found(runs)
            if value:
                return value
            failed = [r for r in runs if r.status == "FAILURE"
                      and r.run_id not in self.expected_failures]
            if failed or time.monotonic() > deadline:
                summary = "\n".join(f"  {r.job} {r.status} {r.run_id} {r.tags.get('unified-ai/trigger')}"
                                    for r in runs)
                why = f"a run failed ({failed[0].run_id})" if failed else f"not within {timeout} s"
                pytest.fail(f"waiting for {what}: {why}; runs:\n{summary}\n"
                            f"daemon log:\n{self.log('daemon', 30)}\ngrpc log:\n{self.log('grpc', 30)}")
            time.sleep(3)

    def poll(self, what: str, found: Callable[[], Any], timeout: float = 300,
             every: float = 1.0) -> Any:
        """Poll `found()` until it is truthy (failed runs do not stop it); fail on the deadline."""
        deadline = time.monotonic() + timeout
        while not (value := found()):
            if time.monotonic() > deadline:
                pytest.fail(f"waiting for {what}: not within {timeout} s; daemon log:\n"
                            f"{self.log('daemon', 30)}\ngrpc log:\n{self.log('grpc', 30)}")
            time.sleep(every)
        return value

    def run_errors(self, run_id: str) -> list[str]:
        """The failure messages of a run's event log (step failures, engine errors, the run's
        failure), as the UI's run page shows them."""
        run = self.graphql(RUN_ERRORS, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        out = []
        for event in run["eventConnection"]["events"]:
            error = event.get("error") or {}
            if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent") or error:
                # The run's own failure says only "an exception was thrown"; what the exception
                # was, and what caused it, is in the error and its causes.
                chain = [error, *error.get("causes", [])] if error else []
                out.append(" ".join(filter(None, [event.get("message"), *(
                    f"{e.get('className') or ''}: {e.get('message') or ''}" for e in chain)])))
        return out

    def reexecute(self, run_id: str) -> str:
        """Re-execute a run from its failed steps, as the UI's "Re-execute from failure" does."""
        result = self.graphql(REEXECUTE, {"params": {"parentRunId": run_id,
                                                      "strategy": "FROM_FAILURE"}})
        launched = result["launchRunReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def materializations(self, asset: str, limit: int = 20) -> list[dict]:
        """Newest first: runId, partition and metadata (label -> value)."""
        result = self.graphql(MATERIALIZATIONS, {"key": {"path": [asset]}, "limit": limit})
        asset_or_error = result["assetOrError"]
        if asset_or_error["__typename"] != "Asset":
            return []
        out = []
        for m in asset_or_error["assetMaterializations"]:
            metadata = {e["label"]: next((e[k] for k in METADATA_VALUE if e.get(k) is not None), None)
                        for e in m["metadataEntries"]}
            out.append({"runId": m["runId"], "partition": m["partition"], "metadata": metadata})
        return out

    def sensor_run_ids(self, sensor: str) -> list[str]:
        selector = {"repositoryLocationName": "unified_ai", "repositoryName": "__repository__",
                    "sensorName": sensor}
        result = self.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
        assert result["__typename"] == "Sensor", result
        return [run_id for tick in result["sensorState"]["ticks"] for run_id in tick["runIds"]]

    def stop_sensors(self, *names: str) -> None:
        """Turn sensors off as an operator does from the UI's sensor page."""
        for name in names:
            selector = {"repositoryLocationName": "unified_ai", "repositoryName": "__repository__",
                        "sensorName": name}
            sensor = self.graphql(SENSOR_ID, {"selector": selector})["sensorOrError"]
            assert sensor["__typename"] == "Sensor", sensor
            stopped = self.graphql(STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
            assert stopped.get("instigationState", {}).get("status") == "STOPPED", (name, stopped)

    def submit(self, job: str, tags: dict[str, str]) -> str:
        """A run submitted through the webserver, as the launchpad does (queued, then launched
        by the daemon's run queue)."""
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=self.port("webserver"))
        return client.submit_job_execution(job, repository_location_name="unified_ai",
                                           run_config={}, tags=tags)

    # --- MLflow's REST API ------------------------------------------------------------------

    def mlflow_get(self, path: str, **params: str) -> tuple[int, dict]:
        url = f"{self.mlflow}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def alias(self, name: str, model: str = MODEL) -> str | None:
        status, body = self.mlflow_get("registered-models/alias", name=model, alias=name)
        return body["model_version"]["version"] if status == 200 else None

    # --- Postgres ---------------------------------------------------------------------------

    def connect(self, database: str):
        """A psycopg2 connection to one of the stack's databases (dagster, mlflow, decisions)."""
        import psycopg2

        env = self.env
        return psycopg2.connect(host=env["DAGSTER_PG_HOST"], port=env["DAGSTER_PG_PORT"],
                                user=env["DAGSTER_PG_USERNAME"],
                                password=env["DAGSTER_PG_PASSWORD"], dbname=database)

    def sql(self, database: str, query: str) -> list[tuple]:
        """Rows of `query` on one of the stack's databases."""
        conn = self.connect(database)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(query)
                return cursor.fetchall()
        finally:
            conn.close()

    def decision_log(self) -> list[dict]:
        """Every row of the decision store (its payload, with the record kind), in order."""
        return [json.loads(payload) for (payload,) in
                self.sql("decisions", "SELECT payload FROM decision_log ORDER BY id")]

    # --- the CLI ----------------------------------------------------------------------------

    def cli(self, *args: str, signed: bool = False) -> subprocess.CompletedProcess:
        """`unified-ai ARGS` in the stack's environment (signed: with the decider's key)."""
        env = {"PATH": os.environ["PATH"], **self.env}
        if signed:
            env["UNIFIED_AI_SIGNING_KEY"] = str(self.state / "keys" / "operator.key")
        return subprocess.run([str(VENV_BIN / "unified-ai"), *args], env=env, capture_output=True,
                              text=True, timeout=600, cwd=ROOT)
