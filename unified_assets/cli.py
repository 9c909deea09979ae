"""`unified-ai`: generate data, run the headless demo, write the bring-your-own example."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _generate(args: argparse.Namespace) -> int:
    from unified_assets.ml.generator import DriftSpec, write_batches

    drift = DriftSpec(args.drift_from, args.covariate_shift, args.label_shift)
    written = write_batches(Path(args.out), args.batches, args.rows, seed=args.seed,
                            first_batch=args.first_batch, drift=drift)
    print(f"wrote {len(written)} batch(es) of {args.rows} rows to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from unified_assets.lifecycle import run_lifecycle
    from unified_assets.ml.generator import write_batches
    from unified_assets.settings import Settings

    started = time.perf_counter()
    home = Path(args.home or tempfile.mkdtemp(prefix="unified-ai-demo-")).resolve()
    settings = Settings(deployment="local", home=home, dataset_spec=args.spec)
    if args.spec is None:
        write_batches(settings.landing_dir, args.batches, args.rows, seed=args.seed)
    print(f"demo home: {home}")
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
        summary = run_lifecycle(settings, instance)
    for line in summary.lines():
        print(line)
    print(f"mlflow: {settings.mlflow_tracking_uri}")
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def _byo_example(args: argparse.Namespace) -> int:
    from unified_assets.ml.sklearn_datasets import write_breast_cancer_example

    spec = write_breast_cancer_example(Path(args.out), batches=args.batches)
    print(f"wrote the breast-cancer example; run it with: unified-ai demo --spec {spec}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unified-ai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write payment transaction batches")
    generate.add_argument("--out", default=".unified_ai/landing", help="landing folder")
    generate.add_argument("--batches", type=int, default=8)
    generate.add_argument("--rows", type=int, default=5000, help="rows per batch")
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--first-batch", type=int, default=0, help="index of the first batch")
    generate.add_argument("--drift-from", type=int, default=None, help="first drifted batch index")
    generate.add_argument("--covariate-shift", type=float, default=0.0, help="strength, e.g. 1.0")
    generate.add_argument("--label-shift", type=float, default=0.0, help="added fraud log-odds")
    generate.set_defaults(run=_generate)

    demo = commands.add_parser("demo", help="run the whole lifecycle headless on a temp instance")
    demo.add_argument("--batches", type=int, default=6)
    demo.add_argument("--rows", type=int, default=4000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--home", default=None, help="state folder (default: a new temp folder)")
    demo.add_argument("--spec", default=None, help="dataset spec YAML (bring your own data)")
    demo.set_defaults(run=_demo)

    byo = commands.add_parser("byo-example", help="write scikit-learn's breast-cancer data + spec")
    byo.add_argument("--out", default=".unified_ai/byo-breast-cancer")
    byo.add_argument("--batches", type=int, default=3)
    byo.set_defaults(run=_byo_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batches", "rows"):
        if getattr(args, name, 1) < 1:
            print(f"unified-ai {args.command}: --{name} must be at least 1", file=sys.stderr)
            return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
