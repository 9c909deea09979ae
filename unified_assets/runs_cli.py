"""`unified-ai runs stop` and `unified-ai runs resume`: the run command's stop and start
(scripts/dev.sh calls them on Ctrl-C and when it starts; unified_assets/run_stop.py says
why). Both act on the instance in DAGSTER_HOME."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(f"{url.rstrip('/')}/server_info", timeout=2):
            return True
    except OSError:
        return False


def _stop(args: argparse.Namespace) -> int:
    import dagster as dg

    from unified_assets.run_stop import graphql, hold_configured, queue_resumptions, stop_runs

    try:
        with dg.DagsterInstance.get() as instance:
            outcomes = stop_runs(instance, args.reason, timeout=args.timeout)
            if not outcomes:
                print("no run in progress")
                return 0
            print(f"stopped {len(outcomes)} run(s) in progress: canceled, tagged unified-ai/stopped")
            for outcome in outcomes:
                print(f"  {outcome.line()}")
            queued = []
            if hold_configured(instance) and _answers(args.url):
                queued = queue_resumptions(instance, graphql(args.url), held=True)
                for outcome in queued:
                    print(f"  {outcome.line()}")
            print("held until `unified-ai runs resume` (scripts/dev.sh: its next start)" if queued
                  else "`unified-ai runs resume` (scripts/dev.sh: its next start) re-executes them")
    except KeyboardInterrupt:  # a second Ctrl-C: what is still running stops with dagster dev
        print("unified-ai runs stop: interrupted; runs not yet canceled stop with dagster dev",
              file=sys.stderr)
        return 130
    unfinished = [o for o in outcomes if o.status not in ("CANCELED", "SUCCESS", "FAILURE")]
    if unfinished:
        print(f"unified-ai runs stop: {len(unfinished)} run(s) had not ended after "
              f"{args.timeout:.0f}s", file=sys.stderr)
        return 1
    return 0


def _resume(args: argparse.Namespace) -> int:
    import dagster as dg

    from unified_assets.run_stop import (
        graphql,
        queue_resumptions,
        release_resumptions,
        stopped_runs,
    )

    with dg.DagsterInstance.get() as instance:
        released = release_resumptions(instance)
        for outcome in released:
            print(f"resume {outcome.line()}")
        if not stopped_runs(instance):
            if not released:
                print("no stopped run to resume")
            return 0
        deadline = time.monotonic() + args.wait
        while not _answers(args.url):
            if time.monotonic() > deadline:
                print(f"unified-ai runs resume: the Dagster webserver at {args.url} did not "
                      f"answer within {args.wait:.0f}s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        outcomes = queue_resumptions(instance, graphql(args.url), held=False)
    for outcome in outcomes:
        print(f"resume {outcome.line()}")
    return 0 if all(o.status == "resumed" for o in outcomes) else 1


def add_runs_parser(commands: argparse._SubParsersAction) -> None:
    """Add `runs stop` and `runs resume` to the CLI's subcommands."""
    runs = commands.add_parser("runs", help="stop the runs in progress; resume them later"
                               ).add_subparsers(dest="runs_command", required=True)
    stop = runs.add_parser("stop", help="cancel every run in progress, tagged why, and queue "
                           "each one's resumption, held until `runs resume` (scripts/dev.sh: "
                           "Ctrl-C)")
    stop.add_argument("--reason", default="`unified-ai runs stop`",
                      help="why, in each run's unified-ai/stopped tag")
    stop.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for the runs to end (default 60)")
    stop.add_argument("--url", default="http://127.0.0.1:3000",
                      help="the Dagster webserver, which queues the resumptions "
                      "(default http://127.0.0.1:3000)")
    stop.set_defaults(run=_stop)
    resume = runs.add_parser("resume", help="start the held resumptions `runs stop` queued, and "
                             "re-execute any run it stopped without one (scripts/dev.sh: start)")
    resume.add_argument("--url", default="http://127.0.0.1:3000",
                        help="the Dagster webserver (default http://127.0.0.1:3000)")
    resume.add_argument("--wait", type=float, default=300.0,
                        help="seconds to wait for the webserver to answer (default 300)")
    resume.set_defaults(run=_resume)
