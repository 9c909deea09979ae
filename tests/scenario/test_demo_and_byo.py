"""End to end: the newcomer's demo command, and bring-your-own data on a real data set."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from resources.mlflow_registry import MlflowRegistry
from unified_assets.lifecycle import run_lifecycle
from unified_assets.ml.sklearn_datasets import write_breast_cancer_example
from unified_assets.settings import Settings


@pytest.mark.slow
def test_demo_command_runs_the_lifecycle_headless(tmp_path):
    cli = Path(sys.executable).with_name("unified-ai")
    out = subprocess.run(
        [str(cli), "demo", "--batches", "3", "--rows", "1500", "--home", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Quiet: the summary stands alone; Dagster's run events go to a file (--verbose prints them).
    assert "DEBUG" not in out.stderr and "DEBUG" not in out.stdout
    assert "DEBUG" in (tmp_path / "demo" / "demo-events.log").read_text()
    assert "run events: " in out.stdout
    assert "batches ingested: 3" in out.stdout
    assert "models trained: 2" in out.stdout
    aucs = [float(x) for x in re.findall(r"roc_auc=([0-9.]+)", out.stdout)]
    assert len(aucs) == 2 and min(aucs) > 0.6
    version = re.search(r"champion: payments-risk v(\d+)", out.stdout).group(1)
    client = MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}").client()
    champion = client.get_model_version_by_alias("payments-risk", "champion")
    assert str(champion.version) == version, out.stdout


def test_demo_rejects_a_bad_argument(tmp_path):
    cli = Path(sys.executable).with_name("unified-ai")
    out = subprocess.run([str(cli), "demo", "--batches", "0"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "--batches must be at least 1" in out.stderr


@pytest.mark.slow
def test_bring_your_own_data_breast_cancer_end_to_end(settings, instance, tmp_path):
    spec_path = write_breast_cancer_example(tmp_path / "byo", batches=3)
    byo = Settings("local", settings.home, dataset_spec=str(spec_path))
    summary = run_lifecycle(byo, instance)
    assert summary.batches_ingested == ["biopsies-000", "biopsies-001", "biopsies-002"]
    sklearn = summary.candidates["sklearn"]
    assert sklearn.model_name == "breast-cancer"
    assert sklearn.overall["roc_auc"] > 0.95
    assert {s["segment"] for s in sklearn.segments} == {"size_band", "texture_band"}
    assert sklearn.overall["rows"] + summary.candidates["torch"].overall["rows"] > 150
    assert summary.production["champion"] is not None
    client = MlflowRegistry(tracking_uri=byo.mlflow_tracking_uri).client()
    alias = client.get_model_version_by_alias("breast-cancer", "champion")
    assert str(alias.version) == summary.production["champion"]


def test_the_summary_lists_each_rejected_batch_with_its_findings(settings, instance):
    import pandas as pd

    from unified_assets.definitions import build_definitions
    from unified_assets.lifecycle import ingest_landed, rejected_findings
    from unified_assets.ml.generator import write_batches

    (good, bad) = write_batches(settings.landing_dir, batches=2, rows=300)
    frame = pd.read_parquet(bad)
    frame.drop(columns=["amount"]).to_parquet(bad)
    defs = build_definitions(settings)
    summary = ingest_landed(defs, instance)
    summary.batch_findings = rejected_findings(instance, sorted(summary.batches_rejected))
    assert list(summary.batches_rejected) == [bad.stem]
    text = "\n".join(summary.lines())
    assert f"rejected {bad.stem} (failed checks: " in text
    finding = next(line for line in text.splitlines() if line.startswith("    - "))
    assert "amount" in finding, text
