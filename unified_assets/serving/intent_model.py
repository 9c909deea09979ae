"""The light intent classifier of the support workflow: TF-IDF (words and character n-grams,
so typos still match) and one logistic regression per intent, trained on generated messages.

One sigmoid per intent rather than a softmax over them: a message may ask two things, and
each intent it carries should score high on its own. Imported only where the model is trained
or loaded (scikit-learn and mlflow cost seconds to import)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd

from unified_assets.serving.messages import INTENTS, Message, generate_messages

MODEL_NAME = "support-intent"
FAMILY = "support-intent"
CONTENT_HASH_TAG = "content_hash"
TEXT_COLUMN = "message"
# A secondary intent is reported when it scores this high on its own.
INTENT_THRESHOLD = 0.5


@dataclass(frozen=True)
class IntentParams:
    per_intent: int = 400
    pairs: int = 150
    seed: int = 11
    c: float = 8.0


class IntentModel(mlflow.pyfunc.PythonModel):
    """Pyfunc: a frame with a `message` column in, one probability column per intent out."""

    def __init__(self, pipeline, labels: tuple[str, ...]) -> None:
        self.pipeline, self.labels = pipeline, tuple(labels)

    def scores(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(texts), dtype=float)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(t) for t in model_input[TEXT_COLUMN]]
        return pd.DataFrame(self.scores(texts), columns=list(self.labels))

    def classify(self, text: str) -> dict:
        return read_intents(self.labels, self.scores([text])[0])


def read_intents(labels: tuple[str, ...], row: np.ndarray) -> dict:
    """The intents of one message from its per-intent probabilities: every intent scoring at
    least INTENT_THRESHOLD (`other` only when nothing else does), the primary one and its
    probability (the confidence the decision reads)."""
    scores = {label: float(p) for label, p in zip(labels, row, strict=True)}
    ranked = sorted(scores, key=lambda label: -scores[label])
    chosen = [label for label in ranked if scores[label] >= INTENT_THRESHOLD]
    if len(chosen) > 1 and "other" in chosen:
        chosen.remove("other")
    primary = chosen[0] if chosen else ranked[0]
    return {"intent": primary, "intents": chosen or [primary], "confidence": scores[primary],
            "scores": scores}


def build_pipeline(c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True,
                                  min_df=2)),
    ])
    return Pipeline([("features", features),
                     ("model", OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear")))])


def _targets(messages: list[Message]) -> np.ndarray:
    return np.array([[label in m.intents for label in INTENTS] for m in messages], dtype=int)


@dataclass
class TrainedIntentModel:
    model: IntentModel
    metrics: dict[str, float]
    content_hash: str


def train_intent_model(params: IntentParams = IntentParams()) -> TrainedIntentModel:
    """Fit on generated messages and measure on messages generated with another seed
    (exact match of the intent set, and per-intent F1)."""
    from sklearn.metrics import f1_score

    train = generate_messages(params.per_intent, params.pairs, params.seed)
    holdout = generate_messages(max(40, params.per_intent // 4), max(20, params.pairs // 4),
                                params.seed + 1000)
    pipeline = build_pipeline(params.c).fit([m.text for m in train], _targets(train))
    model = IntentModel(pipeline, INTENTS)
    rows = model.scores([m.text for m in holdout])
    predicted = [set(read_intents(INTENTS, row)["intents"]) for row in rows]
    exact = float(np.mean([p == set(m.intents) for p, m in zip(predicted, holdout, strict=True)]))
    truth = _targets(holdout)
    guess = np.array([[label in p for label in INTENTS] for p in predicted], dtype=int)
    metrics = {"holdout_exact_match": exact, "train_messages": float(len(train)),
               **{f"f1_{label}": float(f1_score(truth[:, i], guess[:, i]))
                  for i, label in enumerate(INTENTS)}}
    digest = hashlib.sha256(repr((params, [(m.text, m.intents) for m in train])).encode())
    return TrainedIntentModel(model, metrics, digest.hexdigest()[:16])



def load_intent_model(name: str, version: str, tracking_uri: str) -> tuple[IntentModel, str]:
    """The registered intent model `name`/`version` and its label ("support-intent v3"), as
    the classifier loads it, online (a Serve replica) or over a backlog."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return loaded.unwrap_python_model(), f"{name} v{version}"
