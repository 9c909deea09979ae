"""The README's run command (`scripts/dev.sh`: dagster dev and the MLflow UI) on a prepared
state folder, and
Debian's Chromium driven by Playwright. Nothing is downloaded at run time: Playwright is a
dev dependency and `scripts/browser.sh` installs the `chromium` package (the test command
runs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("UNIFIED_AI_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, every: float = 1.0):
    """Poll `condition` until it returns a truthy value; fail naming `what` after `timeout`
    (a bound on waiting, not an assertion on speed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class DagsterUI:
    url: str
    env: dict[str, str]
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def state_env(home: Path, policy: Path) -> dict[str, str]:
    """The environment `scripts/dev.sh` sets, on `home`, with the test's policy."""
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy" / "local" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIFIED_AI_", "DAGSTER_"))}
    env.update(UNIFIED_AI_HOME=str(home), DAGSTER_HOME=str(dagster_home),
               UNIFIED_AI_POLICY=str(policy), PORT=str(free_port()), MLFLOW_PORT=str(free_port()))
    env["UNIFIED_AI_MLFLOW_UI_URL"] = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    # The warm server scripts/dev.sh starts (unified_assets/local_warm.py), in a folder of
    # this state's own (short: a socket path is limited to 107 bytes).
    env["UNIFIED_AI_RAY_WARM_DIR"] = tempfile.mkdtemp(prefix="uaiw-", dir="/tmp") + "/s"
    return env


def start_run_command(env: dict[str, str], log: Path) -> Iterator[DagsterUI]:
    """The README's run command, `bash scripts/dev.sh` (dagster dev and the MLflow UI), in its
    own process group, on the ports in `env` (PORT, MLFLOW_PORT); stopped with the group."""
    with log.open("w") as out:
        process = subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    ui = DagsterUI(f"http://127.0.0.1:{env['PORT']}", env, log)
    try:
        wait_until(lambda: process.poll() is not None or answers(f"{ui.url}/server_info"), 240,
                   "the Dagster UI to answer")
        if process.poll() is not None:
            pytest.fail(f"scripts/dev.sh exited ({process.returncode}):\n{ui.tail()}")
        yield ui
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


SENSORS = """
query Sensors($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) {
    __typename
    ... on Sensors { results { name sensorState { id status } } }
  }
}"""
STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) { __typename ... on StopSensorMutationResult { instigationState { status } } }
}"""


def graphql(ui: DagsterUI, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"{ui.url}/graphql", json.dumps(
        {"query": query, "variables": variables}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.load(response)
    assert not data.get("errors"), data["errors"]
    return data["data"]


def stop_sensors(ui: DagsterUI) -> list[str]:
    """Every running sensor turned off, as an operator does on the UI's sensor page. The
    browser tests launch their runs themselves; ticking sensors (and the report runs they
    would start after each in-process training) only take the two cores from them."""
    repo = {"repositoryLocationName": "unified_ai", "repositoryName": "__repository__"}
    found = graphql(ui, SENSORS, {"repo": repo})["sensorsOrError"]
    assert found["__typename"] == "Sensors", found
    stopped = []
    for sensor in found["results"]:
        if sensor["sensorState"]["status"] == "RUNNING":
            result = graphql(ui, STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
            assert result["instigationState"]["status"] == "STOPPED", (sensor["name"], result)
            stopped.append(sensor["name"])
    return stopped


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests start the run command (`dagster dev`, the MLflow UI) and Chromium:
    under pytest-xdist they all run on one worker, one after another, never two at once."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(scope="module")
def chromium():
    """Module scope, not session: Playwright's sync API keeps an event loop running in this
    thread while it is open, and Dagster's in-process runs in later test files need none."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run `bash scripts/browser.sh` (installs Debian's "
                    "chromium) or set UNIFIED_AI_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    # Dagster's first-visit "Join the Dagster community" dialog covers the page: dismiss it
    # whenever it shows up before an action.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
    yield page
    context.close()
