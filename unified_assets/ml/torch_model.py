"""The GPU-profile candidate: a small MLP in PyTorch, on CUDA when present, else on CPU.

Imported only inside the steps that train or load it (torch costs seconds to import).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from torch import nn

from unified_assets.ml.features import DEFAULT_MAX_LEVELS, TabularEncoder


@dataclass(frozen=True)
class TorchParams:
    hidden_units: int = 64
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 7
    device: str = "auto"
    max_category_levels: int = DEFAULT_MAX_LEVELS


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    reason: str
    cuda_available: bool


def choose_device(requested: str) -> DeviceChoice:
    """`auto` uses CUDA when present; an unavailable `cuda` request falls back and says so."""
    available = torch.cuda.is_available()
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of auto, cpu, cuda; got {requested!r}")
    if requested == "cpu":
        return DeviceChoice("cpu", "CPU requested (config or placement)", available)
    if available:
        return DeviceChoice("cuda", f"CUDA device: {torch.cuda.get_device_name(0)}", True)
    return DeviceChoice("cpu", "no CUDA device on this host: GPU profile ran on CPU", False)


def build_network(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU(),
        nn.Linear(hidden // 2, 1),
    )


@dataclass
class TorchTrainingResult:
    network: nn.Module
    encoder: TabularEncoder
    device: DeviceChoice
    final_loss: float
    seconds: float


def train_torch(train: pd.DataFrame, numeric: list[str], categorical: list[str], target: str,
                params: TorchParams) -> TorchTrainingResult:
    """Mini-batch Adam on plain BCE (keeps probabilities calibrated); seeded, repeatable."""
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    choice = choose_device(params.device)
    encoder = TabularEncoder.fit(train, numeric, categorical, params.max_category_levels)
    features = torch.from_numpy(encoder.transform(train))
    labels = torch.from_numpy(train[target].to_numpy(dtype=np.float32))

    device = torch.device(choice.device)
    network = build_network(encoder.width, params.hidden_units).to(device)
    optimizer = torch.optim.Adam(
        network.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    network.train()
    last_loss = float("nan")
    for _ in range(params.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), params.batch_size):
            index = order[start : start + params.batch_size]
            x, y = features[index].to(device), labels[index].to(device)
            optimizer.zero_grad()
            loss = loss_fn(network(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            count += len(index)
        last_loss = total / count
    network.eval()
    return TorchTrainingResult(network.cpu(), encoder, choice, last_loss,
                               time.perf_counter() - started)


def predict_scores(network: nn.Module, encoder: TabularEncoder, frame: pd.DataFrame) -> np.ndarray:
    with torch.no_grad():
        logits = network(torch.from_numpy(encoder.transform(frame))).squeeze(1)
    return torch.sigmoid(logits).numpy().astype(np.float64)


class TorchRiskModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc that scores a raw feature frame, so both families load the same way."""

    def __init__(self, state: dict, encoder: TabularEncoder, hidden: int) -> None:
        self.state, self.encoder, self.hidden = state, encoder, hidden
        self._network: nn.Module | None = None

    def _net(self) -> nn.Module:
        if self._network is None:
            self._network = build_network(self.encoder.width, self.hidden)
            self._network.load_state_dict(self.state)
            self._network.eval()
        return self._network

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return predict_scores(self._net(), self.encoder, model_input)

    def __getstate__(self) -> dict:
        # The network built for scoring (the train AUC before logging) is the state dict
        # again: the logged model carries the weights once and rebuilds it on first use.
        return self.__dict__ | {"_network": None}

    @classmethod
    def from_training(cls, result: TorchTrainingResult, params: TorchParams) -> TorchRiskModel:
        state = {k: v.detach().cpu().clone() for k, v in result.network.state_dict().items()}
        return cls(state, result.encoder, params.hidden_units)
