"""Both candidates train and score on messy tables: nulls, nullable and int/bool categoricals,
high cardinality, levels first seen at predict time."""

import numpy as np
import pandas as pd
import pytest
import torch

from unified_assets.ml.features import OTHER_LEVEL
from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn, train_sklearn
from unified_assets.ml.torch_model import TorchParams, TorchRiskModel, predict_scores, train_torch

NUMERIC = ["amount", "age", "count", "flag"]
CATEGORICAL = ["merchant", "channel", "store_id", "is_member", "shop"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _with_nulls(values: pd.Series, rate: float, rng: np.random.Generator) -> pd.Series:
    return values.mask(rng.random(len(values)) < rate)


def messy_frame(rows: int, seed: int) -> pd.DataFrame:
    """Nulls at 2-40 % in every column, numerics as float/Int64/boolean, categoricals as object,
    string, Int64, boolean and a 300-level code; the label depends on several of them."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3, 1, rows)
    merchant = rng.choice(["grocery", "travel", "gaming"], rows)
    member = rng.random(rows) < 0.5
    shop = rng.integers(0, 300, rows)
    logit = 0.8 * np.log(amount) - 2.5 + 1.5 * (merchant == "gaming") - 1.0 * member + (shop % 2)
    return pd.DataFrame({
        "amount": _with_nulls(pd.Series(amount), 0.05, rng),
        "age": _with_nulls(pd.Series(rng.integers(18, 90, rows), dtype="Int64"), 0.4, rng),
        "count": pd.Series(rng.poisson(2, rows), dtype="Int64"),
        "flag": _with_nulls(pd.Series(rng.random(rows) < 0.3, dtype="boolean"), 0.1, rng),
        "merchant": _with_nulls(pd.Series(merchant, dtype=object), 0.1, rng),
        "channel": _with_nulls(pd.Series(rng.choice(["web", "pos"], rows), dtype="string"), 0.3, rng),
        "store_id": _with_nulls(pd.Series(rng.integers(0, 5, rows), dtype="Int64"), 0.02, rng),
        "is_member": _with_nulls(pd.Series(member, dtype="boolean"), 0.2, rng),
        "shop": pd.Series(shop),
        "label": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
    })


def predict_frame() -> pd.DataFrame:
    """Unseen levels, nulls where training had none, and other dtypes for the same columns."""
    frame = messy_frame(200, seed=2)
    frame.loc[:9, "merchant"] = "never-seen"
    frame.loc[10:19, "shop"] = 10_000
    frame["count"] = frame["count"].astype("float64")
    frame.loc[:4, ["count", "shop"]] = np.nan
    frame["is_member"] = frame["is_member"].astype(object)
    frame["store_id"] = frame["store_id"].astype("float64")
    return frame


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def test_sklearn_candidate_trains_and_scores_messy_data():
    train = messy_frame(1500, seed=1)
    result = fit_sklearn(train, NUMERIC, CATEGORICAL, "label",
                         SklearnParams(max_iter=40, max_category_levels=50))
    model = SklearnRiskModel(result.pipeline, result.levels, NUMERIC, CATEGORICAL)
    later = predict_frame()
    scores = model.predict(None, later)
    assert scores.shape == (len(later),) and np.isfinite(scores).all()
    assert ((scores > 0) & (scores < 1)).all()
    assert _auc(later["label"], scores) > 0.65
    assert result.levels.vocab["shop"][-1] == OTHER_LEVEL
    assert result.levels.folded["shop"] == train["shop"].nunique() - 50
    # the bare pipeline (what older callers register: sklearn types only) scores clean string rows
    clean = train.dropna().astype({"channel": object})
    strings = ["merchant", "channel"]
    bare = train_sklearn(clean, NUMERIC, strings, "label", SklearnParams(max_iter=5))
    assert np.isfinite(bare.predict_proba(clean[strings + NUMERIC])[:, 1]).all()


def test_torch_candidate_trains_and_scores_messy_data():
    train = messy_frame(1500, seed=1)
    result = train_torch(train, NUMERIC, CATEGORICAL, "label",
                         TorchParams(epochs=15, device="cpu", max_category_levels=50))
    later = predict_frame()
    scores = TorchRiskModel.from_training(result, TorchParams()).predict(None, later)
    assert scores.shape == (len(later),) and np.isfinite(scores).all()
    assert _auc(later["label"], scores) > 0.65
    assert result.encoder.missing_indicators == ["amount", "age", "flag"]
    assert result.encoder.levels.folded["shop"] == train["shop"].nunique() - 50


def test_a_300_level_categorical_next_to_150_numerics_trains_in_both():
    rng = np.random.default_rng(3)
    numeric = [f"x{i}" for i in range(150)]
    frame = pd.DataFrame(rng.normal(size=(400, 150)), columns=numeric)
    frame["code"] = [f"k{i % 300}" for i in range(400)]
    frame["label"] = (frame["x0"] + rng.normal(size=400) > 0).astype(int)
    later = frame.head(50).assign(code="unseen")
    sk = fit_sklearn(frame, numeric, ["code"], "label", SklearnParams(max_iter=5))
    scores = SklearnRiskModel(sk.pipeline, sk.levels, numeric, ["code"]).predict(None, later)
    assert np.isfinite(scores).all()
    net = train_torch(frame, numeric, ["code"], "label", TorchParams(epochs=1, device="cpu"))
    assert np.isfinite(predict_scores(net.network, net.encoder, later)).all()
    assert net.encoder.width == 150 + 100 + 1  # numerics, the 100 kept levels, <other>


def test_a_torch_model_used_for_scoring_pickles_its_weights_once():
    """The train AUC scores with the model before it is logged: the network it builds for that
    is not pickled beside the state dict (the logged artifact carried the weights twice)."""
    import cloudpickle

    train = messy_frame(400, seed=2)
    model = TorchRiskModel.from_training(
        train_torch(train, NUMERIC, CATEGORICAL, "label", TorchParams(epochs=1, device="cpu")),
        TorchParams())
    fresh = cloudpickle.dumps(model)
    before = model.predict(None, train)
    used = cloudpickle.dumps(model)
    assert model._network is not None  # still cached for the next predict in this process
    assert len(used) == len(fresh) and b"torch.nn.modules" not in used
    assert np.array_equal(cloudpickle.loads(used).predict(None, train), before)
