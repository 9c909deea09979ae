"""Why the fraud model scored a payment as it did: per-feature attributions computed with
torch, rendered as a sentence a customer can read.

- The torch champion (`TorchRiskModel`): integrated gradients of its logit from a baseline
  of the training means (all-zero encoded input), on CUDA when the replica has it; the
  encoded columns are summed back to the raw feature they came from.
- Any other champion (the scikit-learn trees, a user's estimator): occlusion, one batch per
  payment in which each feature in turn is set to the reference value (median, or most
  frequent level, of the customers' payments); the drop in logit is its contribution.

Both are in logit units and say how much each feature pushed the risk up (positive) or down.
Imported only inside replicas and tests (torch and mlflow cost seconds to import)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

IG_STEPS = 16
TOP_REASONS = 3


@dataclass
class FraudModel:
    """A registered fraud-model version, loaded: how to score a frame and, for the torch
    family, its network and encoder for gradients."""

    name: str
    version: str
    scorer: Any  # frame -> P(fraud) per row
    numeric: list[str]
    categorical: list[str]
    network: Any = None
    encoder: Any = None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.scorer(frame), dtype=float)


def load_fraud_model(name: str, version: str, tracking_uri: str,
                     numeric: list[str], categorical: list[str]) -> FraudModel:
    """The registered `name`/`version` as a `FraudModel`; `numeric`/`categorical` are the
    dataset's features (used when the model does not say which it reads)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    try:
        inner = loaded.unwrap_python_model()
    except Exception:  # noqa: BLE001 - another flavour: score through pyfunc, explain by occlusion
        inner = None

    def score(frame: pd.DataFrame) -> np.ndarray:
        output = np.asarray(loaded.predict(frame), dtype=float)
        return output[:, 1] if output.ndim == 2 else output

    encoder = getattr(inner, "encoder", None)
    network = inner._net() if encoder is not None and hasattr(inner, "_net") else None
    if encoder is not None:
        numeric, categorical = list(encoder.numeric), list(encoder.categorical)
    elif inner is not None and hasattr(inner, "numeric") and hasattr(inner, "categorical"):
        numeric, categorical = list(inner.numeric), list(inner.categorical)
    return FraudModel(name, str(version), score, list(numeric), list(categorical), network, encoder)


def device_for(prefer_gpu: bool) -> str:
    """CUDA when the part was placed on a GPU and the replica sees one; CPU otherwise."""
    return "cuda" if prefer_gpu and torch.cuda.is_available() else "cpu"


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def integrated_gradients(model: FraudModel, frame: pd.DataFrame, device: str) -> np.ndarray:
    """(rows, features) contributions of the torch network's logit, baseline: training means."""
    encoder, network = model.encoder, model.network.to(device)
    x = torch.from_numpy(encoder.transform(frame)).to(device)
    alphas = torch.linspace(1.0 / IG_STEPS, 1.0, IG_STEPS, device=device).view(-1, 1, 1)
    path = (alphas * x.unsqueeze(0)).reshape(-1, x.shape[1]).requires_grad_(True)
    network(path).sum().backward()
    grads = path.grad.reshape(IG_STEPS, *x.shape).mean(dim=0)
    encoded = (x * grads).detach().cpu().numpy()
    # Encoded columns back to features: numerics, their missing flags, one-hot blocks.
    columns = list(encoder.numeric) + list(encoder.missing_indicators) + [
        column for column in encoder.categorical for _ in encoder.vocab[column]]
    out = np.zeros((len(frame), len(model.features)), dtype=float)
    index = {feature: i for i, feature in enumerate(model.features)}
    for j, column in enumerate(columns):
        out[:, index[column]] += encoded[:, j]
    return out


def reference_row(reference: pd.DataFrame, model: FraudModel) -> dict[str, Any]:
    """A typical payment: the median of each numeric feature, the most frequent level."""
    row: dict[str, Any] = {c: float(reference[c].median()) for c in model.numeric}
    row |= {c: reference[c].mode(dropna=True).iloc[0] for c in model.categorical}
    return row


def occlusion(model: FraudModel, frame: pd.DataFrame, reference: dict[str, Any],
              device: str) -> np.ndarray:
    """(rows, features): logit(score) minus logit(score with that feature set to reference)."""
    features = model.features
    out = np.zeros((len(frame), len(features)), dtype=float)
    for r in range(len(frame)):
        batch = pd.concat([frame.iloc[[r]]] * (len(features) + 1), ignore_index=True)
        batch[model.numeric] = batch[model.numeric].astype(float)
        batch[model.categorical] = batch[model.categorical].astype(object)
        for i, feature in enumerate(features, start=1):
            batch.loc[i, feature] = reference[feature]
        scores = _logit(torch.as_tensor(model.score(batch), device=device))
        out[r] = (scores[0] - scores[1:]).cpu().numpy()
    return out


def attribute(model: FraudModel, frame: pd.DataFrame, reference: pd.DataFrame,
              prefer_gpu: bool) -> dict:
    """Scores and per-feature contributions of `frame`'s rows, with the method and device."""
    device = device_for(prefer_gpu)
    if model.network is not None and model.encoder is not None:
        method, values = "integrated_gradients", integrated_gradients(model, frame, device)
    else:
        method = "occlusion"
        values = occlusion(model, frame, reference_row(reference, model), device)
    scores = model.score(frame)
    rows = [{feature: float(v) for feature, v in zip(model.features, row, strict=True)}
            for row in values]
    return {"method": method, "device": device, "scores": [float(s) for s in scores],
            "contributions": rows}


def explain_payments(model: FraudModel, payments: list[dict], reference: pd.DataFrame,
                     prefer_gpu: bool) -> dict:
    """`attribute` for `payments` and each one described in words (`texts`), with the model
    version: what the explainer answers, online (a Serve replica) or over a backlog."""
    result = attribute(model, pd.DataFrame(payments), reference, prefer_gpu)
    texts = [describe(p, s, c, model.label) for p, s, c in
             zip(payments, result["scores"], result["contributions"], strict=True)]
    return {**result, "texts": texts, "version": model.label}


def payment_scores(model: FraudModel, payments: list[dict],
                   frame: pd.DataFrame | None = None) -> dict[str, float]:
    """P(fraud) per transaction id, as the fraud service answers it (`frame`: the payments
    as a frame, when the caller built it already)."""
    scores = model.score(pd.DataFrame(payments) if frame is None else frame)
    ids = [str(p.get("transaction_id", i)) for i, p in enumerate(payments)]
    return dict(zip(ids, map(float, scores), strict=True))


def _money(value: float) -> str:
    return f"${value:,.2f}"


def reason(feature: str, value: Any, payment: dict) -> str:
    """One feature that raised the score, in words: its value, stated plainly. An attribution
    says the feature pushed this score up against the reference payment, not that the value
    is high, young or unusual, so no phrase claims that."""
    avg = payment.get("avg_amount_30d")
    phrases = {
        "amount": lambda v: f"the amount ({_money(v)}" + (
            f"; your 30-day average is {_money(avg)})" if avg else ")"),
        "avg_amount_30d": lambda v: f"your 30-day average spending ({_money(v)})",
        "account_age_days": lambda v: f"the account's age ({int(v)} days)",
        "txn_count_24h": lambda v: f"{int(v)} other payment(s) in the 24 hours before",
        "distance_from_home_km": lambda v: f"the distance from home ({v:,.0f} km)",
        "hour_of_day": lambda v: f"the time of day ({int(v):02d}:00)",
        "is_international": lambda v: "it was an international payment" if v else
        "it was a domestic payment",
        "card_present": lambda v: "the card was not present" if not v else "the card was present",
        "device_trust_score": lambda v: f"the device's trust score ({v:.2f})",
        "merchant_category": lambda v: f"the merchant category ({v})",
        "channel": lambda v: f"the payment channel ({v})",
        "region": lambda v: f"the region ({v})",
        "customer_tier": lambda v: f"your card tier ({v})",
    }
    phrase = phrases.get(feature)
    try:
        return phrase(value) if phrase else f"{feature.replace('_', ' ')} was {value}"
    except (TypeError, ValueError):
        return f"{feature.replace('_', ' ')} was {value}"


def describe(payment: dict, score: float, contributions: dict[str, float], model_label: str) -> str:
    """A plain-language explanation of one payment's score from its top contributions."""
    when = str(payment.get("event_time", ""))[:10]
    amount = payment.get("amount")
    what = f"Your payment of {_money(amount)}" if isinstance(amount, int | float) else "Your payment"
    where = f" at a {payment['merchant_category']} merchant" if payment.get("merchant_category") else ""
    risky = sorted(((v, f) for f, v in contributions.items() if v > 0 and math.isfinite(v)),
                   reverse=True)[:TOP_REASONS]
    risk = "under 1%" if score < 0.01 else f"{score:.0%}"
    if payment.get("status") == "declined":
        head = (f"{what}{where} on {when} was declined; the fraud model ({model_label}) rates "
                f"its risk at {risk}.")
    else:
        head = f"{what}{where} on {when} scored a fraud risk of {risk} ({model_label})."
    if not risky:
        return head + " No single feature raised the risk much."
    reasons = [reason(f, payment.get(f), payment) for _, f in risky]
    listed = "; ".join(reasons[:-1]) + (" and " if len(reasons) > 1 else "") + reasons[-1]
    return f"{head} The main reasons: {listed}."
