"""The dataset the project trains on: its spec and the batch files in its landing zone."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import dagster as dg

from unified_assets.ml.dataset_spec import DatasetSpec, load_spec, payments_spec

_PARTITION_SAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def batch_key(path: Path) -> str:
    """Partition key for a batch file: its name without extension, made key-safe."""
    return _PARTITION_SAFE.sub("_", path.name.split(".")[0])


class DatasetResource(dg.ConfigurableResource):
    """Which data: a dataset spec file (bring your own) or the built-in payments domain."""

    spec_path: str | None = None
    landing_dir: str = ".unified_ai/landing"

    @cached_property
    def spec(self) -> DatasetSpec:
        if self.spec_path:
            return load_spec(self.spec_path)
        return payments_spec(Path(self.landing_dir).resolve())

    @property
    def source_dir(self) -> Path:
        return Path(self.spec.source.path)

    def batch_files(self) -> dict[str, Path]:
        """Complete batch files by partition key, in name order. Hidden and `.partial`
        files are being written and are skipped until renamed into place."""
        folder = self.source_dir
        if not folder.is_dir():
            return {}
        files = sorted(
            p for p in folder.glob(self.spec.source.glob)
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial")
        )
        return {batch_key(p): p for p in files}

    def batch_file(self, key: str) -> Path:
        files = self.batch_files()
        if key not in files:
            raise dg.Failure(
                f"batch {key!r} has no file in {self.source_dir} matching "
                f"{self.spec.source.glob!r}"
            )
        return files[key]
