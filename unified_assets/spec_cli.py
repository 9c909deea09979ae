"""`unified-ai spec infer DATA... [--out spec.yaml]`: draft a dataset spec from the data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _infer(args: argparse.Namespace) -> int:
    from unified_assets.ml.spec_infer import SpecInferError, infer_spec

    out = Path(args.out) if args.out else _default_out(args.data)
    try:
        draft = infer_spec([Path(p) for p in args.data], out)
    except SpecInferError as error:
        print(f"spec infer: {error}", file=sys.stderr)
        return 1
    if out.exists() and not args.force:
        print(f"spec infer: {out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(draft.text)
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    target = draft.spec.get("target")
    print(f"wrote {out}" + (f" (target {target!r}); check the lines marked CHECK, then run: "
                            f"unified-ai demo --spec {out}" if target else
                            "; no binary target found: set target before using it"))
    return 0


def _default_out(data: list[str]) -> Path:
    """spec.yaml beside the data folder (a file's folder), which load_spec accepts."""
    first = Path(data[0])
    folder = first if first.is_dir() else first.parent
    return folder.resolve().parent / "spec.yaml"


def add_spec_parser(commands: argparse._SubParsersAction) -> None:
    """Add `spec infer` to the CLI's subcommands."""
    spec = commands.add_parser("spec", help="dataset spec tools").add_subparsers(
        dest="spec_command", required=True)
    infer = spec.add_parser("infer", help="draft a dataset spec from csv/parquet batches")
    infer.add_argument("data", nargs="+", help="batch files or a folder of them (one format)")
    infer.add_argument("--out", default=None,
                       help="spec file to write (default: spec.yaml beside the data folder)")
    infer.add_argument("--force", action="store_true", help="replace an existing spec file")
    infer.set_defaults(run=_infer)
