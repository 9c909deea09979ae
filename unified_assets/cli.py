"""`unified-ai`: generate data, run the headless demo, write the bring-your-own example."""

from __future__ import annotations

import argparse
import os
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


def _context():
    """Settings and resources of the configured deployment (same as the code location)."""
    from unified_assets.definitions import build_definitions
    from unified_assets.settings import load_settings

    settings = load_settings()
    resources = build_definitions(settings).resources
    return settings, resources, resources["dataset"].spec.name


def _pending(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from unified_assets.approvals import approval_state

    _, resources, model = _context()
    events = resources["decisions"].events(model)
    now = datetime.now(UTC)
    rows = []
    for version in dict.fromkeys(e["version"] for e in events if e["kind"] == "request"):
        state = approval_state(events, version, now)
        if state.state == "pending":
            rows.append(f"v{version}  expires {state.request['expires_at']:%Y-%m-%d %H:%M}  "
                        f"because: {state.request['reason']}")
    print("\n".join(rows) if rows else f"no pending approval requests for {model}")
    return 0


def _decide(args: argparse.Namespace) -> int:
    from unified_assets.approvals import ApprovalRefused
    from unified_assets.assets.deployment import record_decision

    _, resources, model = _context()
    try:
        record_decision(resources["decisions"], resources["mlflow_registry"], resources["policy"],
                        model, args.version, args.decision, args.by, args.reason, source="cli")
    except ApprovalRefused as refused:
        print(f"refused (recorded): {refused}", file=sys.stderr)
        return 1
    follow = ("promotion follows via the approval sensor" if args.decision == "approve"
              else "this candidate will not be promoted")
    print(f"{args.decision}d v{args.version} of {model} by {args.by}; {follow}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    import dagster as dg

    from unified_assets.definitions import build_definitions, rollback_job
    from unified_assets.settings import load_settings

    started = time.perf_counter()
    settings = load_settings()
    defs = build_definitions(settings)
    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = {"ops": {"production_model": {"config": {
        "action": "rollback", "rollback_to": args.to or "", "by": args.by, "reason": args.reason}}}}
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(rollback_job.name).execute_in_process(
            run_config=config, instance=instance, raise_on_error=False)
    if not result.success:
        failure = next(e for e in result.all_events if e.is_step_failure)
        print(f"rollback failed: {failure.event_specific_data.error.message.strip()}",
              file=sys.stderr)
        return 1
    record = result.output_for_node("production_model")
    print(f"{record['message']} (incident {record.get('incident_id', '-')}); "
          f"{time.perf_counter() - started:.2f}s")
    return 0


def _history(args: argparse.Namespace) -> int:
    _, resources, model = _context()
    changes = resources["decisions"].changes(model)
    if not changes:
        print(f"no champion changes recorded for {model}")
    for c in changes:
        print(f"#{c['seq']:<3} {c['created_at']:%Y-%m-%d %H:%M:%S}  {c['action']:8s} "
              f"v{c['from_version'] or '-'} -> v{c['to_version']}  by {c['actor']}: {c['reason']}")
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

    commands.add_parser("pending", help="list approval requests awaiting a decision").set_defaults(
        run=_pending)
    for decision in ("approve", "reject"):
        decide = commands.add_parser(decision, help=f"{decision} a challenger version")
        decide.add_argument("version")
        decide.add_argument("--by", required=True, help="who decides (allowed by the policy)")
        decide.add_argument("--reason", required=True)
        decide.set_defaults(run=_decide, decision=decision)

    rollback = commands.add_parser("rollback", help="move `champion` back, with an incident")
    rollback.add_argument("--to", default=None, help="version (default: previous good champion)")
    rollback.add_argument("--by", required=True)
    rollback.add_argument("--reason", required=True)
    rollback.set_defaults(run=_rollback)

    commands.add_parser("history", help="every champion change with its reason").set_defaults(
        run=_history)
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
