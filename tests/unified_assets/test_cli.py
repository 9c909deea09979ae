"""The decision commands of `unified-ai`, in process on a fresh state folder: keys, signing,
refusals, history with each change's status, and the audit of the decision log."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resources.decision_store import DecisionStore
from tests.policies import write_policy
from unified_assets.cli import build_parser, main
from unified_assets.services.identity import SIGNING_KEY_ENV, read_token, verify

ROOT = Path(__file__).resolve().parents[2]
MODEL = "payments-risk"


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("UNIFIED_AI_HOME", str(home))
    monkeypatch.setenv("UNIFIED_AI_POLICY", str(write_policy(tmp_path)))
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    return home


def _store(home) -> DecisionStore:
    return DecisionStore(url=f"sqlite:///{home / 'decisions.db'}")


def _new_key(tmp_path, capsys, name="alice") -> tuple[str, str]:
    assert main(["keys", "new", name, "--out", str(tmp_path / "keys")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith(f"{name}: "))
    return str(tmp_path / "keys" / f"{name}.key"), line.split('"')[1]


def _strict_policy(tmp_path, monkeypatch, **keys):
    path = write_policy(tmp_path, {"approval": {"require_signature": True, "keys": keys},
                                   "rollback": {"by": ["alice"]}}, name="strict.yaml")
    monkeypatch.setenv("UNIFIED_AI_POLICY", str(path))


def test_keys_new_writes_a_private_key_and_prints_the_policy_line(home, tmp_path, capsys):
    path, public = _new_key(tmp_path, capsys)
    assert (tmp_path / "keys" / "alice.key").stat().st_mode & 0o777 == 0o600
    assert public.startswith("ed25519:")
    assert main(["keys", "new", "alice", "--out", str(tmp_path / "keys")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["keys", "new", "group:leads", "--out", str(tmp_path / "keys")]) == 1
    assert "is a group" in capsys.readouterr().err


def test_sign_prints_a_token_bound_to_the_decision(home, tmp_path, capsys, monkeypatch):
    from datetime import UTC, datetime

    path, public = _new_key(tmp_path, capsys)
    assert main(["sign", "approve", "7", "--by", "alice", "--reason", "ok"]) == 1
    assert SIGNING_KEY_ENV in capsys.readouterr().err, "no key, no token"
    monkeypatch.setenv(SIGNING_KEY_ENV, path)
    assert main(["sign", "approve", "7", "--by", "alice", "--reason", "ok"]) == 0
    token = capsys.readouterr().out.strip()
    signed = verify(token, {"alice": public}, datetime.now(UTC))
    assert (signed.action, signed.model, signed.version, signed.actor) == ("approve", MODEL, "7",
                                                                         "alice")
    assert main(["sign", "rollback", "--by", "alice", "--reason", "bad", "--model", "m"]) == 0
    rollback = read_token(capsys.readouterr().out.strip())
    assert (rollback.action, rollback.model, rollback.version) == ("rollback", "m", "")


def test_a_group_cannot_approve_from_the_cli(home, capsys):
    assert main(["approve", "7", "--by", "group:ml-leads", "--reason", "leads agree"]) == 1
    assert "'group:ml-leads' is a group, not a person" in capsys.readouterr().err
    (refusal,) = [e for e in _store(home).events(MODEL) if e["kind"] == "refusal"]
    assert refusal["actor"] == "group:ml-leads"


def test_unsigned_cli_decisions_are_refused_when_the_policy_requires_signatures(
        home, tmp_path, capsys, monkeypatch):
    path, public = _new_key(tmp_path, capsys)
    _, other = _new_key(tmp_path, capsys, "bob")
    _strict_policy(tmp_path, monkeypatch, alice=public, bob=other, **{"risk-officer": other})
    assert main(["approve", "7", "--by", "alice", "--reason", "ok"]) == 1
    assert "not signed and the policy requires signatures" in capsys.readouterr().err
    monkeypatch.setenv(SIGNING_KEY_ENV, path)
    assert main(["approve", "7", "--by", "bob", "--reason", "ok"]) == 1
    assert "does not match 'bob'" in capsys.readouterr().err, "alice's key cannot sign as bob"
    # Signed with her own key, alice passes the identity checks and meets the next rule.
    assert main(["approve", "7", "--by", "alice", "--reason", "ok"]) == 1
    assert "not a registered version" in capsys.readouterr().err
    refusals = [(e["actor"], e["details"]["token"] is not None)
                for e in _store(home).events(MODEL) if e["kind"] == "refusal"]
    assert refusals == [("alice", False), ("bob", True), ("alice", True)]


def test_history_shows_whether_each_change_took_effect(home, capsys, mlflow_db_template):
    import shutil

    shutil.copy(mlflow_db_template, home / "mlflow.db")
    store = _store(home)
    for seq, (status, to) in enumerate([("done", "1"), ("abandoned", "2"), (None, "3")]):
        store.record_change(model_name=MODEL, expected_seq=seq, action="promote",
                            from_version=None, to_version=to, actor="alice", reason=f"v{to}")
        if status:
            store.record_outcome(model_name=MODEL, seq=seq + 1, status=status, actor="ledger",
                                 reason="test")
    assert main(["history"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]  # under the heading
    assert "PENDING" not in lines[0] and "ABANDONED" not in lines[0]
    assert "ABANDONED" in lines[1] and "PENDING" in lines[2]


def test_audit_verify_counts_rows_and_fails_naming_the_first_bad_one(home, capsys):
    store = _store(home)
    for version in ("1", "2"):
        store.append_event(model_name=MODEL, version=version, kind="request", actor="policy",
                           reason="first deployment")
    assert main(["audit", "verify"]) == 0
    assert "2 rows verified" in capsys.readouterr().out
    with sqlite3.connect(home / "decisions.db") as db:
        payload = db.execute("select payload from decision_log where id = 1").fetchone()[0]
        db.execute("update decision_log set payload = ? where id = 1",
                   (payload.replace("first deployment", "no request"),))
    assert main(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "audit FAILED" in err and "row 1 (event) was edited" in err


def test_plan_and_k8s_manifests_run_as_the_readme_writes_them(tmp_path, monkeypatch):
    """Found: without --rows both crashed with TypeError ('<' between None and int)."""
    from unified_assets.cli import main

    monkeypatch.setenv("UNIFIED_AI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["plan"]) == 0
    assert main(["k8s-manifests", "--out", str(tmp_path / "manifests")]) == 0
    assert sorted((tmp_path / "manifests").iterdir())
    assert main(["demo", "--rows", "0"]) == 2


def test_history_names_each_version_family_and_reads_as_a_move(home, capsys, mlflow_db_template):
    """Found: `promote v- -> v1`, and never the model family."""
    import shutil

    from resources.mlflow_registry import MlflowRegistry

    shutil.copy(mlflow_db_template, home / "mlflow.db")
    client = MlflowRegistry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").client()
    client.create_registered_model(MODEL)
    for family in ("sklearn", "torch"):
        version = client.create_model_version(MODEL, source=str(home / family)).version
        client.set_model_version_tag(MODEL, version, "family", family)
    store = _store(home)
    for seq, (action, before, to) in enumerate([("promote", None, "1"), ("promote", "1", "2"),
                                               ("rollback", "2", "1")]):
        store.record_change(model_name=MODEL, expected_seq=seq, action=action,
                            from_version=before, to_version=to, actor="alice", reason="r")
        store.record_outcome(model_name=MODEL, seq=seq + 1, status="done", actor="ledger",
                             reason="test")
    assert main(["history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"champion changes of {MODEL}")
    assert "promote   (none) → v1 sklearn" in lines[1]
    assert "promote   v1 sklearn → v2 torch" in lines[2]
    assert "rollback  v2 torch → v1 sklearn" in lines[3]


def test_k8s_manifests_are_named_by_step_and_a_recorded_cluster_gives_the_gpu_request(
        tmp_path, monkeypatch, capsys):
    """Found: files named by hash, and on a machine without GPUs the GPU step's manifest
    followed the local CPU fallback. `--cluster FILE` plans against a recorded cluster."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("UNIFIED_AI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(root)
    cluster = root / "deploy" / "cluster.example.yaml"
    assert main(["plan", "--cluster", str(cluster), "--rows", "50000"]) == 0
    out = capsys.readouterr().out
    assert "model_torch" in out and "gpu" in out.split("model_torch", 1)[1].splitlines()[0]
    # The capacity line is the file's nodes (found: "host recorded cluster ...: 1 cpu").
    (capacity,) = [line for line in out.splitlines() if line.startswith("capacity:")]
    assert capacity.startswith(f"capacity: recorded cluster {cluster}; k8s: 3 nodes"), capacity
    assert " cpu, load " not in capacity
    assert main(["k8s-manifests", "--out", str(tmp_path / "m"), "--cluster", str(cluster),
                 "--rows", "50000"]) == 0
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model_torch.yaml", "model_sklearn.yaml", "challenger.yaml"} <= files
    torch_job = yaml.safe_load((tmp_path / "m" / "model_torch.yaml").read_text())
    container = torch_job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    sklearn_job = yaml.safe_load((tmp_path / "m" / "model_sklearn.yaml").read_text())
    assert "nvidia.com/gpu" not in str(sklearn_job)


@pytest.mark.parametrize("content, problem", [
    ("nodes: []\n", "nodes: no node listed"),
    ("nodes:\n  - {name: a, pool: gpu, gpus: -1}\n", "nodes[0].gpus: -1"),
    ("nodes:\n  - {pool: gpu}\n", "nodes[0].name"),
    ("nodes:\n  - {name: a, pool: gpu, gpu: 1}\n", "nodes[0].gpu: unknown field"),
])
def test_a_bad_cluster_file_names_the_file_and_field(tmp_path, monkeypatch, capsys, content,
                                                     problem):
    monkeypatch.setenv("UNIFIED_AI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    path = tmp_path / "cluster.yaml"
    path.write_text(content)
    assert main(["plan", "--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and problem in err


def test_top_level_help_lists_every_command(capsys):
    from unified_assets.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for name in commands:
        assert f"\n    {name}" in text or f"\n  {name}" in text, name
    assert "spec infer" in text and "bash scripts/dev.sh" in text


def test_a_refused_rollback_says_why_in_one_line(home, capsys, mlflow_db_template, monkeypatch):
    """The rollback runs on the instance (launched through its run coordinator, not in the
    CLI's process); its refusal comes back as one line naming the run."""
    import shutil

    import dagster as dg

    shutil.copy(mlflow_db_template, home / "mlflow.db")
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\ntelemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    assert main(["rollback", "--by", "ops", "--reason", "live AUC fell"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rollback refused (run ") and "champion" in err[-1], err
    assert not any("Traceback" in line for line in err)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (record,) = instance.get_run_records(dg.RunsFilter(job_name="rollback_production"))
    assert record.dagster_run.run_id in err[-1]
    assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE
    assert record.dagster_run.tags["unified-ai/source"] == "cli"


def test_demo_on_a_misspelled_target_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """Found: the message was right but came as a raw DatasetSpecError traceback, exit 1."""
    import pandas as pd

    from unified_assets.ml.spec_infer import infer_spec

    monkeypatch.delenv("UNIFIED_AI_POLICY", raising=False)
    folder = tmp_path / "data" / "batches"
    folder.mkdir(parents=True)
    for i in range(2):
        pd.DataFrame({"amount": [(j * 37 % 11) / 3 for j in range(50)],
                      "churned": ["Yes", "No"] * 25}).to_csv(folder / f"part{i}.csv", index=False)
    spec = tmp_path / "data" / "spec.yaml"
    spec.write_text(infer_spec([folder], spec).text.replace('target: "churned"', 'target: "churnd"'))
    code = main(["demo", "--spec", str(spec), "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert "did you mean 'churned'" in err[-1] and "Traceback" not in "\n".join(err)


USER_CANDIDATE = '''
import dagster as dg
from unified_assets.candidates import Candidate


def train(training, config, context):
    from sklearn.dummy import DummyClassifier

    features = training.numeric_features + training.categorical_features
    return DummyClassifier().fit(training.train[features], training.train[training.target])


BASELINE = Candidate(name="baseline", trainer=train)
'''


def _console_script(tmp_path, env_extra: dict, *args: str):
    """`unified-ai` as a user types it (the installed console script, not `python -m`, which
    would put the folder on the import path by itself), run in `tmp_path`."""
    script = Path(sys.executable).with_name("unified-ai")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIFIED_AI_", "DAGSTER_"))}
    env |= {"UNIFIED_AI_HOME": str(tmp_path / "home"), **env_extra}
    return subprocess.run([str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_users_candidate_module_in_the_working_folder_loads_in_the_cli(tmp_path):
    """Found: `dagster dev` imported my_models.candidates from the folder it ran in, the CLI
    did not (ModuleNotFoundError), so `plan`, `history` and `rollback` crashed."""
    (tmp_path / "my_models").mkdir()
    (tmp_path / "my_models" / "__init__.py").write_text("")
    (tmp_path / "my_models" / "candidates.py").write_text(USER_CANDIDATE)
    done = _console_script(tmp_path, {"UNIFIED_AI_CANDIDATES": "sklearn,my_models.candidates:BASELINE"},
                           "plan", "--rows", "20000")
    assert done.returncode == 0, done.stderr
    assert "model_baseline" in done.stdout and "model_sklearn" in done.stdout


def test_a_users_candidate_module_in_the_working_folder_validates(tmp_path):
    """Found by a new user: `dagster definitions validate -w workspace.yaml` failed on the
    README's own candidate module (No module named 'my_models') though `dagster dev` loaded
    it: the workspace names no working directory, and validate adds none."""
    import shutil

    (tmp_path / "my_models").mkdir()
    (tmp_path / "my_models" / "candidates.py").write_text(USER_CANDIDATE)  # no __init__.py
    shutil.copy(ROOT / "workspace.yaml", tmp_path / "workspace.yaml")
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=tmp_path,
        capture_output=True, text=True,
        env={"UNIFIED_AI_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path), "PATH": "",
             "UNIFIED_AI_CANDIDATES": "sklearn,my_models.candidates:BASELINE"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_wrong_candidate_entry_is_one_line_in_the_cli(tmp_path):
    done = _console_script(tmp_path, {"UNIFIED_AI_CANDIDATES": "sklearn,nope"}, "plan")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "UNIFIED_AI_CANDIDATES" in line and "'nope'" in line and "Traceback" not in done.stderr


@pytest.mark.parametrize(("command", "variable", "value", "says"), [
    ("pending", "UNIFIED_AI_DATASET_SPEC", "{tmp}/nope.yaml", "{tmp}/nope.yaml: dataset spec file not found"),
    ("pending", "UNIFIED_AI_POLICY", "{tmp}/nope-policy.yaml", "{tmp}/nope-policy.yaml"),
    ("history", "UNIFIED_AI_DEPLOYMENT", "lcoal", "UNIFIED_AI_DEPLOYMENT='lcoal' is not a deployment"),
    ("plan", "UNIFIED_AI_EXECUTOR", "celery", "UNIFIED_AI_EXECUTOR='celery' is not an executor"),
    ("pending", "UNIFIED_AI_LANDING_URI", "/data/landing", "must be an s3://bucket/prefix URI"),
])
def test_a_setting_that_cannot_be_used_is_one_line_naming_it(
        home, tmp_path, command, variable, value, says):
    """A new user's typo in a setting: the command says which and stops, no traceback."""
    env = {**os.environ, variable: value.format(tmp=tmp_path)}
    done = subprocess.run([sys.executable, "-m", "unified_assets.cli", command], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert err.startswith(f"unified-ai {command}: ") and "\n" not in err, err
    assert says.format(tmp=tmp_path) in err


def test_a_version_is_accepted_as_history_prints_it(home, capsys):
    """`history` and the UI say v3; the commands take v3 as 3 (and still refuse an unknown
    one by its number)."""
    assert main(["approve", "v7", "--by", "alice", "--reason", "ok"]) != 0
    err = capsys.readouterr().err
    assert "version 7 is not a registered version" in err, err
    parser = build_parser()
    assert parser.parse_args(["rollback", "--to", "V7", "--by", "a", "--reason", "r"]).to == "7"
    assert parser.parse_args(["sign", "approve", "v12", "--by", "a", "--reason", "r"]).version \
        == "12"
    assert parser.parse_args(["approve", "7", "--by", "a", "--reason", "r"]).version == "7"
    assert parser.parse_args(["approve", "vx", "--by", "a", "--reason", "r"]).version == "vx"


def test_every_refusal_the_cli_reports_is_listed_by_incidents(home, capsys):
    """Found: `approve` printed "refused (recorded)" but `incidents --kind refusal` did not
    list it (only refused rollbacks were incidents)."""
    assert main(["approve", "99", "--by", "mallory", "--reason", "ship it"]) != 0
    assert "refused (recorded)" in capsys.readouterr().err
    assert main(["incidents", "--kind", "refusal"]) == 0
    listed = capsys.readouterr().out
    assert "refusal" in listed and "by mallory: approve refused:" in listed, listed


@pytest.mark.parametrize(("argv", "names"), [
    (["generate", "--out", "{file}", "--batches", "1"], "{file}"),
    (["k8s-manifests", "--out", "{file}"], "{file}"),
    (["byo-example", "--out", "{file}"], "{file}"),
    (["keys", "new", "bob", "--out", "{file}"], "{file}"),
    (["generate", "--out", "/proc/nope", "--batches", "1"], "/proc/nope"),
])
def test_an_output_path_that_cannot_be_used_is_one_line_naming_it(home, tmp_path, argv, names):
    """Found: `generate --out README.md` (a file, not a folder) and `--out /proc/nope` ended
    in FileExistsError / FileNotFoundError tracebacks; every other bad input was one line."""
    taken = tmp_path / "README.md"
    taken.write_text("a file the user has\n")
    argv = [a.format(file=taken) for a in argv]
    done = subprocess.run([sys.executable, "-m", "unified_assets.cli", *argv],
                          env=os.environ, capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert err.startswith(f"unified-ai {argv[0]}: ") and "\n" not in err, err
    assert names.format(file=taken) in err and "Traceback" not in err
    assert taken.read_text() == "a file the user has\n"  # nothing of the user's lost


def test_incidents_refuses_a_kind_that_does_not_exist(home, capsys):
    """Found: `incidents --kind bogus` answered "no incidents recorded of kind bogus", rc 0,
    as if it had looked."""
    from resources.decision_store import INCIDENT_KINDS

    with pytest.raises(SystemExit) as exited:
        main(["incidents", "--kind", "bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "live_regression" in err, err
    for kind in INCIDENT_KINDS:
        assert main(["incidents", "--kind", kind]) == 0
    with pytest.raises(ValueError, match="not an incident kind"):
        _store(home).record_incident(kind="typo", model_name=None, actor="x", reason="y")


def test_keys_show_prints_the_policy_line_of_an_existing_key(home, tmp_path, capsys):
    """Found: a lost policy line could not be printed again (`keys new` rightly refuses to
    overwrite the key)."""
    _, public = _new_key(tmp_path, capsys)
    assert main(["keys", "new", "alice", "--out", str(tmp_path / "keys")]) == 1
    assert "keys show alice" in capsys.readouterr().err
    assert main(["keys", "show", "alice", "--out", str(tmp_path / "keys")]) == 0
    assert f'alice: "{public}"' in capsys.readouterr().out
    assert main(["keys", "show", "bob", "--out", str(tmp_path / "keys")]) == 1
    assert "bob.key: file not found" in capsys.readouterr().err


def test_ask_names_the_device_only_where_it_adds_something():
    """Found: `explain   cpu  node 63f6fef2 cpu  47 ms` (the target, then the same device)."""
    from unified_assets.cli import _render_answer

    def part(target, device):
        return {"part": "explain", "target": target, "device": device, "ok": True,
                "latency_ms": 47, "ran_on": {"node": "63f6fef2"}, "reason": "r"}

    answer = {"decision": "answer", "reason": "r", "answer": "a", "request_id": "q",
              "latency_ms": 50, "placements": [part("cpu", "cpu"), part("gpu", "cuda"),
                                               part("gpu", "cpu")]}
    lines = [x for x in _render_answer(answer).splitlines() if x.strip().startswith("explain")]
    assert "cpu" not in lines[0].split("node")[1], lines[0]
    assert "(torch on cuda)" in lines[1] and "(torch on cpu)" in lines[2], lines


def test_serving_stop_ends_the_local_ray_group_even_a_process_that_ignores_sigterm(home, capsys):
    """Found: the README's stop line (`kill -- -PGID`) sent SIGTERM only; Ray's gcs_server
    logged "Stopping GCS server" and lived on for minutes. `unified-ai serving stop` ends the
    whole group (SIGTERM, then SIGKILL after a grace) and forgets it."""
    import json
    import signal

    temp_dir = home / "ray-temp"  # Ray's daemons name it on their command lines
    loop = f"trap '' TERM; while true; do sleep 0.2; done # --temp-dir={temp_dir}"
    stubborn = subprocess.Popen(["bash", "-c", loop], start_new_session=True)
    other = subprocess.Popen(["bash", "-c", "while true; do sleep 0.2; done"],
                             start_new_session=True)
    try:
        time.sleep(0.5)  # the trap is set
        state = home / "serving" / "ray.json"
        state.parent.mkdir(parents=True)
        # A stale record whose group id now belongs to something else: nothing is signalled.
        state.write_text(json.dumps({"dashboard": "http://127.0.0.1:9", "gcs": "127.0.0.1:9",
                                     "temp_dir": str(temp_dir), "pgid": other.pid}))
        assert main(["serving", "stop"]) == 0
        assert "was not running any more" in capsys.readouterr().out
        assert other.poll() is None and not state.exists()
        state.write_text(json.dumps({"dashboard": "http://127.0.0.1:9", "gcs": "127.0.0.1:9",
                                     "temp_dir": str(temp_dir), "pgid": stubborn.pid}))
        assert main(["serving", "stop"]) == 0
        assert "stopped the local Ray instance" in capsys.readouterr().out
        assert stubborn.wait(timeout=30) == -signal.SIGKILL
        assert not state.exists()
        assert main(["serving", "stop"]) == 0  # nothing left: says so, no error
    finally:
        for process in (stubborn, other):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def test_generate_never_imports_dagster(tmp_path):
    """scripts/dev.sh seeds the landing zone with `generate` before Dagster starts; importing
    Dagster (only to silence its notices) was a third of those 2.2 s on the first champion's
    path. The batches are still written."""
    code = ("import sys; from unified_assets.cli import main; "
            f"code = main(['generate', '--out', {str(tmp_path / 'landing')!r}, '--batches', '2', "
            "'--rows', '50']); assert code == 0; "
            "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("[]"), out
    assert sorted(p.name for p in (tmp_path / "landing").glob("*.parquet")) == [
        "batch-00000.parquet", "batch-00001.parquet"]
