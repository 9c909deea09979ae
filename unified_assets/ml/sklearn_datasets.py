"""Bring-your-own-data example on a real data set that ships inside scikit-learn.

The Wisconsin breast-cancer data (569 biopsies, 30 numeric measurements) is written as
CSV batches with a dataset spec, so the whole lifecycle runs on data we did not make.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def write_breast_cancer_example(out_dir: Path, batches: int = 3) -> Path:
    """Write `batches` CSV files and `spec.yaml` under `out_dir`; return the spec path."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    # sklearn's target is 1 = benign; the positive class of interest is malignant.
    frame["malignant"] = (frame.pop("target") == 0).astype(int)
    frame.insert(0, "biopsy_id", [f"bc-{i:04d}" for i in range(len(frame))])
    # Segments: tumour size band (by mean radius tertile) and texture band.
    frame["size_band"] = np.select(
        [frame["mean_radius"] < 12.0, frame["mean_radius"] < 15.0], ["small", "medium"], "large"
    )
    frame["texture_band"] = np.where(frame["mean_texture"] < 19.0, "smooth", "coarse")
    shuffled = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)

    batch_dir = out_dir / "batches"
    batch_dir.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(shuffled), batches + 1).astype(int)
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        shuffled.iloc[start:stop].to_csv(batch_dir / f"biopsies-{index:03d}.csv", index=False)

    numeric = [c for c in frame.columns if c.startswith(("mean_", "worst_")) or "error" in c]
    spec = {
        "name": "breast-cancer",
        "source": {"path": "batches", "format": "csv"},
        "target": "malignant",
        "id_column": "biopsy_id",
        "segment_columns": ["size_band", "texture_band"],
        "numeric_features": numeric,
        "categorical_features": [],
        "ranges": {c: [0, None] for c in numeric},
    }
    spec_path = out_dir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path
