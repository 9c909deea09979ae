"""Candidates are declarations: a user adds a model in one place and it is trained, gated by
the policy and eligible for promotion, with no other module edited (issue 13)."""

from __future__ import annotations

import dagster as dg
import pytest
from pydantic import Field

from unified_assets.candidates import Candidate, CandidateError, resolve_candidates
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import run_lifecycle
from unified_assets.ml.generator import write_batches
from unified_assets.settings import CANDIDATES_ENV, load_settings

HERE = "tests.unified_assets.test_candidates"


# --- the README's example: a third candidate in a few lines -------------------------------
class LogisticConfig(dg.Config):
    c: float = Field(default=1.0, gt=0, description="Inverse regularization strength.")


def train_logistic(training, config: LogisticConfig, context):
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, categorical = training.numeric_features, training.categorical_features
    model = make_pipeline(
        make_column_transformer(
            (make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            (OneHotEncoder(handle_unknown="ignore"), categorical)),
        LogisticRegression(C=config.c, max_iter=500))
    return model.fit(training.train[numeric + categorical], training.train[training.target])


LOGISTIC = Candidate(name="logistic", trainer=train_logistic, config=LogisticConfig,
                     compute="cpu-training", kinds=frozenset({"scikit-learn"}),
                     description="Logistic regression on scaled numerics and one-hot levels.")
# ------------------------------------------------------------------------------------------

NOT_A_CANDIDATE = object()


def test_a_declared_candidate_gets_model_and_evaluation_assets_and_feeds_the_challenger(settings):
    settings = _with(settings, "sklearn", "torch", f"{HERE}:LOGISTIC")
    graph = build_definitions(settings).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"model_logistic", "evaluation_logistic", "quality_report_logistic"} <= keys
    challenger_inputs = {k.to_user_string() for k in graph.get(dg.AssetKey("challenger")).parent_keys}
    assert challenger_inputs == {"evaluation_sklearn", "evaluation_torch", "evaluation_logistic"}
    model = graph.get(dg.AssetKey("model_logistic"))
    assert model.group_name == "training" and "scikit-learn" in model.kinds
    assert model.pools == {"cpu-pool"}


def test_a_users_candidate_is_trained_gated_and_promoted(settings, instance):
    """The only candidate declared is the user's: it is trained, registered in MLflow, judged
    by every gate of the policy and, passing them, promoted to champion."""
    settings = _with(settings, f"{HERE}:LOGISTIC")
    write_batches(settings.landing_dir, batches=3, rows=1500)
    summary = run_lifecycle(settings, instance)
    assert list(summary.candidates) == ["logistic"], summary.failed
    report = summary.candidates["logistic"]
    assert report.family == "logistic"
    assert set(report.gates) >= {"quality_floors", "beats_champion", "segment_fairness"}
    assert report.passed_gates is True, report.gates
    assert summary.challenger.family == "logistic"
    assert summary.production["champion"] == report.version
    model = instance.fetch_materializations(dg.AssetKey("model_logistic"), limit=1).records[0]
    metadata = model.asset_materialization.metadata
    assert metadata["train_roc_auc"].value > 0.6
    assert metadata["placement_target"].value == "cpu"


def test_candidates_come_from_the_environment_by_name_or_import_path():
    assert load_settings({}).candidates == ("sklearn", "torch")
    chosen = load_settings({CANDIDATES_ENV: f" torch , {HERE}:LOGISTIC "}).candidates
    assert [c.name for c in resolve_candidates(chosen)] == ["torch", "logistic"]


@pytest.mark.parametrize(("entries", "says"), [
    (("xgboost",), "'xgboost' is neither a shipped candidate"),
    (("no_such_module_x:THING",), "module 'no_such_module_x' cannot be imported"),
    ((f"{HERE}:MISSING",), f"module '{HERE}' has no 'MISSING'"),
    ((f"{HERE}:NOT_A_CANDIDATE",), "is a object, not a unified_assets.candidates.Candidate"),
    (("sklearn", "sklearn"), "both declare a candidate named 'sklearn'"),
    ((), "no candidate declared"),
])
def test_a_wrong_candidate_entry_fails_the_load_naming_the_setting_and_entry(entries, says):
    with pytest.raises(CandidateError) as raised:
        resolve_candidates(entries)
    assert says in str(raised.value) and CANDIDATES_ENV in str(raised.value)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"name": "Bad Name"}, "must be lowercase letters"),
    ({"name": "ok", "compute": "tpu"}, "is not a profile"),
    ({"name": "ok", "config": dict}, "must be a dagster Config class"),
])
def test_a_malformed_declaration_is_refused_where_it_is_written(kwargs, says):
    with pytest.raises(ValueError, match=says):
        Candidate(trainer=train_logistic, **kwargs)


def _with(settings, *candidates: str):
    from dataclasses import replace

    return replace(settings, candidates=candidates)


def test_the_readmes_candidate_module_passes_the_test_commands_lint(tmp_path) -> None:
    """Found by a new user: the README's `my_models/candidates.py`, put beside the README as
    it says, failed `scripts/test.sh` at its `ruff check .` (import order), so no test ran."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```python\n(# my_models/candidates\.py.*?)```",
                        (root / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    folder = root / f"my_models_lint_{tmp_path.name}"  # beside the README: the project's config
    folder.mkdir()
    try:
        (folder / "candidates.py").write_text(blocks[0])
        done = subprocess.run([sys.executable, "-m", "ruff", "check", str(folder)], cwd=root,
                              capture_output=True, text=True)
    finally:
        (folder / "candidates.py").unlink(missing_ok=True)
        folder.rmdir()
    assert done.returncode == 0, done.stdout + done.stderr
