"""`unified-ai`: the command line beside the Dagster UI. Data (generate, spec infer), the
headless lifecycle (demo), production decisions signed with your key (pending, approve,
reject, rollback, keys, sign), their record (history, audit verify, incidents) and placement
(plan, k8s-manifests)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path


def _generate(args: argparse.Namespace) -> int:
    from unified_assets.ml.generator import DriftSpec, write_batches

    drift = DriftSpec(args.drift_from, args.covariate_shift, args.label_shift)
    written = write_batches(Path(args.out), args.batches, args.rows, seed=args.seed,
                            first_batch=args.first_batch, drift=drift, labels=args.labels)
    what = {"inline": "labelled batch(es)", "late": "batch(es) awaiting labels",
            "only": "labels file(s)"}[args.labels]
    print(f"wrote {len(written)} {what} of {args.rows} rows to {written[0].parent}")
    return 0


@contextlib.contextmanager
def _events_to(path: Path | None):
    """Dagster's console logger writes every run event (hundreds of DEBUG lines) to stderr,
    looked up when each line is written: send them to a file so the summary stands alone."""
    if path is None:
        yield
        return
    with path.open("a") as log, contextlib.redirect_stderr(log):
        yield


@contextlib.contextmanager
def _process_output_to(path: Path):
    """The code server and the run worker it starts inherit this process's stderr and print
    their own logs (warnings, a refused step's traceback): keep them in `path` (the run's
    events are in the Dagster UI) so the command's outcome is the line people read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from unified_assets.lifecycle import run_lifecycle
    from unified_assets.ml.dataset_spec import DatasetSpecError
    from unified_assets.ml.generator import write_batches
    from unified_assets.policy import DEFAULT_POLICY_PATH, PolicyError
    from unified_assets.settings import POLICY_ENV, Settings, policy_choice

    started = time.perf_counter()
    home = Path(args.home or tempfile.mkdtemp(prefix="unified-ai-demo-")).resolve()
    policy = args.policy or os.environ.get(POLICY_ENV) or None
    settings = Settings(deployment="local", home=home, dataset_spec=args.spec,
                        policy_path=str(Path(policy).resolve()) if policy else None)
    try:
        path, source = policy_choice(settings)
    except ValueError as error:  # a spec or policy that cannot be read: say which, run nothing
        print(f"unified-ai demo: {error}", file=sys.stderr)
        return 2
    source = "--policy" if args.policy else source
    if args.spec is None:
        write_batches(settings.landing_dir, args.batches, args.rows, seed=args.seed)
    print(f"demo home: {home}")
    print(f"policy: {path or DEFAULT_POLICY_PATH} ({source})")
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    events = home / "demo-events.log"
    with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
        try:
            with _events_to(None if args.verbose else events):
                summary = run_lifecycle(settings, instance)
        except (PolicyError, DatasetSpecError) as error:  # the spec or policy against the data
            print(f"unified-ai demo: {error}", file=sys.stderr)
            return 2
    for line in summary.lines():
        print(line)
    print(f"mlflow: {settings.mlflow_tracking_uri}")
    if not args.verbose:
        print(f"run events: {events} (--verbose prints them as they happen)")
    print(f"done in {time.perf_counter() - started:.1f}s")
    if not summary.batches_ingested:  # nothing could be trained: not a success
        print("unified-ai demo: no batch passed its checks (findings above)", file=sys.stderr)
        return 1
    return 0


def _byo_example(args: argparse.Namespace) -> int:
    from unified_assets.ml.sklearn_datasets import write_breast_cancer_example

    spec = write_breast_cancer_example(Path(args.out), batches=args.batches)
    print(f"wrote the breast-cancer example; run it with: unified-ai demo --spec {spec}")
    return 0


ROLLBACK_JOB = "rollback_production"


def _context():
    """Settings and resources of the configured deployment (same as the code location)."""
    from unified_assets.definitions import build_definitions
    from unified_assets.settings import load_settings

    settings = load_settings()
    resources = dict(build_definitions(settings).resources)
    # Initialized as a run initializes them: their `dg.EnvVar` fields (the kubernetes path's
    # decision store URL and ledger key, MLflow server) then hold the environment's values,
    # not the variables' names.
    for name in ("decisions", "mlflow_registry", "policy"):
        resources[name] = resources[name].process_config_and_initialize()
    return settings, resources, resources["dataset"].spec.name


def _pending(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from unified_assets.services.approvals import approval_state

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


def _signing_key(args: argparse.Namespace):
    """The private key named by --key or the environment; None when neither names one."""
    from unified_assets.services.identity import SIGNING_KEY_ENV, load_private_key

    path = getattr(args, "key", None) or os.environ.get(SIGNING_KEY_ENV)
    return load_private_key(path) if path else None


def _token_for(args: argparse.Namespace, action: str, model: str, version: str) -> str | None:
    """A token signed with the caller's key, or None (unsigned) when no key is configured."""
    from unified_assets.services.identity import sign

    key = _signing_key(args)
    if key is None:
        return None
    return sign(key, action=action, model=model, version=version, actor=args.by, reason=args.reason)


def _decide(args: argparse.Namespace) -> int:
    from unified_assets.services.approvals import ApprovalRefused
    from unified_assets.services.decisions import record_decision
    from unified_assets.services.identity import IdentityError

    _, resources, model = _context()
    try:
        token = _token_for(args, args.decision, model, args.version)
        recorded = record_decision(resources["decisions"], resources["mlflow_registry"],
                                   resources["policy"].policy, model, args.version, args.decision,
                                   args.by, args.reason, source="cli", token=token)
    except IdentityError as error:
        print(f"cannot sign: {error}", file=sys.stderr)
        return 1
    except ApprovalRefused as refused:
        print(f"refused (recorded): {refused}", file=sys.stderr)
        return 1
    follow = ("promotion follows via the approval sensor" if args.decision == "approve"
              else "this candidate will not be promoted")
    signed = "signed" if recorded["signed"] else "UNSIGNED"
    print(f"{args.decision}d v{args.version} of {model} by {args.by} ({signed}); {follow}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    """A rollback is a run of `rollback_production` on the user's instance (or webserver): it
    goes through the run queue and launcher and shows in the UI, like one launched there."""
    from unified_assets.run_tags import SOURCE_TAG, started_because
    from unified_assets.services.identity import IdentityError
    from unified_assets.services.runs import LaunchError, launch_job

    settings, resources, model = _context()
    try:
        token = _token_for(args, "rollback", model, args.to or "")
    except IdentityError as error:
        print(f"cannot sign: {error}", file=sys.stderr)
        return 1
    if not os.environ.get("DAGSTER_HOME"):  # the instance `bash scripts/dev.sh` runs on
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    elif not settings.dagster_url and not Path(os.environ["DAGSTER_HOME"]).is_dir():
        print(f"rollback not launched: DAGSTER_HOME={os.environ['DAGSTER_HOME']} is not a "
              "folder; point it at the instance the Dagster UI runs on (scripts/dev.sh uses "
              "$UNIFIED_AI_HOME/dagster_home) or unset it", file=sys.stderr)
        return 1
    config = {"ops": {"production_model": {"config": {
        "action": "rollback", "rollback_to": args.to or "", "by": args.by, "reason": args.reason,
        "token": token or ""}}}}
    try:
        with _process_output_to(settings.home / "cli-runs.log"):
            # Like every run, it says why it started (trigger and reason tags).
            tags = {SOURCE_TAG: "cli",
                    **started_because("cli", f"rollback by {args.by}: {args.reason}")}
            outcome = launch_job(ROLLBACK_JOB, config, tags, args.wait,
                                 webserver_url=settings.dagster_url)
    except LaunchError as error:
        print(f"rollback not launched: {error}", file=sys.stderr)
        return 1
    if not outcome.success:
        if outcome.refused:  # the step's one line: why the request was turned down
            why = re.sub(r"^rollback refused( and recorded)?: ", "", outcome.reason or "")
            print(f"rollback refused (run {outcome.run_id}): {why}", file=sys.stderr)
        elif outcome.status in ("FAILURE", "CANCELED"):
            print(f"rollback failed (run {outcome.run_id}): {outcome.reason}", file=sys.stderr)
        else:  # queued with no daemon to start it, or still running after --wait
            print(outcome.reason, file=sys.stderr)
        return 1
    incident = f", incident {outcome.incident}" if outcome.incident else ""
    print(f"{outcome.message or 'rollback done'} (run {outcome.run_id}{incident})")
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from unified_assets.services.identity import SIGNING_KEY_ENV, IdentityError, write_key_pair

    try:
        path, public = write_key_pair(args.name, Path(args.out).expanduser())
    except IdentityError as error:
        print(f"no key written: {error}", file=sys.stderr)
        return 1
    print(f"private key: {path} (mode 600; keep it to yourself)")
    print(f"sign with it: export {SIGNING_KEY_ENV}={path}")
    print("add this line under `approval: keys:` in the policy:")
    print(f'    {args.name}: "{public}"')
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from unified_assets.services.identity import IdentityError, load_private_key, public_key_text

    path = Path(args.out).expanduser() / f"{args.name}.key"
    try:
        public = public_key_text(load_private_key(path))
    except IdentityError as error:
        print(f"no key shown: {error}", file=sys.stderr)
        return 1
    print(f"private key: {path}")
    print("its line under `approval: keys:` in the policy:")
    print(f'    {args.name}: "{public}"')
    return 0


def _sign(args: argparse.Namespace) -> int:
    from unified_assets.services.identity import SIGNING_KEY_ENV, IdentityError, sign

    model = args.model or _context()[2]
    version = (args.to or "") if args.action == "rollback" else args.version
    try:
        key = _signing_key(args)
        if key is None:
            print(f"no signing key: set {SIGNING_KEY_ENV} or pass --key", file=sys.stderr)
            return 1
        token = sign(key, action=args.action, model=model, version=version, actor=args.by,
                     reason=args.reason)
    except IdentityError as error:
        print(f"cannot sign: {error}", file=sys.stderr)
        return 1
    job = "rollback_production" if args.action == "rollback" else "approve_or_reject"
    print(token)
    print(f"paste it as `token` in the launchpad of {job} (valid 24 h, once)", file=sys.stderr)
    return 0


def _history(args: argparse.Namespace) -> int:
    _, resources, model = _context()
    changes = resources["decisions"].changes(model)
    if not changes:
        print(f"no champion changes recorded for {model}")
        return 0
    registry = resources["mlflow_registry"]
    families: dict[str, str] = {}

    def named(version: str | None) -> str:
        """'v3 torch': the version and its model family (from the registry, when it answers)."""
        if not version:
            return "(none)"
        if version not in families:
            try:
                families[version] = registry.version_tags(model, version).get("family", "")
            except Exception:  # noqa: BLE001 - history still prints without the registry
                families[version] = ""
        return f"v{version} {families[version]}".rstrip()

    markers = {"done": "", "pending": "  PENDING (not in effect yet)",
               "abandoned": "  ABANDONED (never took effect)"}
    print(f"champion changes of {model} (oldest first):")
    for c in changes:
        marker = markers.get(c["status"], f"  {c['status'].upper()}")
        print(f"#{c['seq']:<3} {c['created_at']:%Y-%m-%d %H:%M:%S}  {c['action']:9s} "
              f"{named(c['from_version'])} → {named(c['to_version'])}  by {c['actor']}: "
              f"{c['reason']}{marker}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from resources.decision_store import AuditError
    from unified_assets.services.champion import ChampionLedger

    _, resources, model = _context()
    store = resources["decisions"]
    try:  # the chain, and the row the registry anchored (a deleted or cut store fails here)
        rows = ChampionLedger(store, resources["mlflow_registry"]).audit(model)
    except AuditError as error:
        print(f"audit FAILED: {error}", file=sys.stderr)
        return 1
    print(f"decision log intact: {rows} rows verified ({store.shown_url})")
    return 0


def _incidents(args: argparse.Namespace) -> int:
    _, resources, _ = _context()
    incidents = resources["decisions"].incidents(kind=args.kind)
    if not incidents:
        print("no incidents recorded" + (f" of kind {args.kind}" if args.kind else ""))
    for i in incidents[-args.last:] if args.last > 0 else incidents:
        print(f"#{i['id']:<4} {i['created_at']:%Y-%m-%d %H:%M:%S}  {i['kind']:15s} by {i['actor']}: "
              f"{i['reason']}")
    return 0


def _plan_for(args: argparse.Namespace):
    """The placement plan of a job's selected steps against the capacity seen now."""
    from unified_assets.definitions import build_definitions
    from unified_assets.placement import plan, take_snapshot
    from unified_assets.placement.steps import requirements_for_job
    from unified_assets.settings import load_settings

    settings = load_settings()
    defs = build_definitions(settings)
    job = defs.resolve_job_def(args.job)
    from unified_assets.candidates import candidate_names

    # --rows: the training set's size, as each candidate's model step sees it.
    requirements = requirements_for_job(job, {f"model_{name}": args.rows for name in
                                              candidate_names(defs.resolve_asset_graph())}
                                        if args.rows else None)
    if args.select:
        wanted = set(args.select.split(","))
        requirements = [r for r in requirements if r.step_key in wanted or r.asset_key in wanted]
        if not requirements:
            raise SystemExit(f"--select {args.select!r} matches no step of job {args.job}")
    if args.cluster:
        from unified_assets.placement.cluster_file import load_cluster_file

        snapshot = load_cluster_file(args.cluster)
    else:
        from sensors.retrain import ray_address_of

        # The capacity the job's steps will meet: the Ray cluster's on the ray executor, the
        # Kubernetes cluster's on the k8s executor, else this host's.
        snapshot = take_snapshot(kubernetes=settings.executor == "k8s",
                                 ray_address=ray_address_of(job))
    policy = defs.resources["policy"].policy.placement
    return job, plan(requirements, snapshot, policy)


def _plan(args: argparse.Namespace) -> int:
    from unified_assets.placement import PlacementError, render_table
    from unified_assets.placement.cluster_file import ClusterFileError

    try:
        _, the_plan = _plan_for(args)
    except ClusterFileError as error:
        print(f"unified-ai {args.command}: {error}", file=sys.stderr)
        return 2
    except PlacementError as error:
        print(f"no placement possible: {error}", file=sys.stderr)
        return 1
    print(render_table(the_plan))
    return 0


def _k8s_manifests(args: argparse.Namespace) -> int:
    import yaml

    from unified_assets.placement import PlacementError
    from unified_assets.placement.cluster_file import ClusterFileError
    from unified_assets.placement.manifests import K8sTarget, job_manifests, write_manifests
    from unified_assets.placement.steps import step_tags_for_job

    try:
        job, the_plan = _plan_for(args)
    except ClusterFileError as error:
        print(f"unified-ai {args.command}: {error}", file=sys.stderr)
        return 2
    except PlacementError as error:
        print(f"no placement possible: {error}", file=sys.stderr)
        return 1
    instance_config = yaml.safe_load(Path(args.instance_config).read_text())
    target = K8sTarget.from_launcher_config(instance_config["run_launcher"]["config"], args.image,
                                            job_name=job.name)
    manifests = job_manifests(the_plan, target, step_tags_for_job(job))
    written = write_manifests(manifests, args.out)
    print(f"{'step':20s} {'target':6s} {'fallback':15s} manifest")
    for step, path in zip(manifests, written, strict=True):
        decision = the_plan[step]
        print(f"{step:20s} {decision.target:6s} {decision.fallback:15s} {path}")
    return 0


# serving (issue 15): ask the support workflow, list and resolve its escalated cases --------


def _ask(args: argparse.Namespace) -> int:
    """POST the question to the deployed support workflow and print its answer and path."""
    import json
    import urllib.error
    import urllib.request

    from unified_assets.settings import load_settings

    url = args.url
    if not url:
        endpoint = load_settings().home / "serving" / "endpoint.json"
        if not endpoint.exists():
            print(f"unified-ai ask: nothing is served from this home ({endpoint} is missing): "
                  "materialize `serving` (job deploy_serving), or pass --url", file=sys.stderr)
            return 1
        url = json.loads(endpoint.read_text())["url"]
    body = json.dumps({"customer_id": args.customer, "message": args.message}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, answer = error.code, json.loads(error.read() or b"{}")
    except OSError as error:
        print(f"unified-ai ask: {url} does not answer ({error})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif "error" in answer:
        print(f"refused (HTTP {status}): {answer['error']}")
    else:
        print(_render_answer(answer))
    return 0 if status == 200 else (3 if status == 503 else 1)


def _render_answer(answer: dict) -> str:
    lines = [f"decision: {answer['decision']} ({answer['reason']})",
             f"intent:   {', '.join(answer.get('intents') or [])} "
             f"(confidence {answer.get('confidence') or 0:.2f})",
             f"answer:   {answer.get('answer')}"]
    if answer.get("case_id"):
        lines.append(f"case:     {answer['case_id']} (a person answers: unified-ai cases)")
    versions = "; ".join(f"{k} {v}" for k, v in sorted(answer.get("model_versions", {}).items()))
    lines.append(f"models:   {versions or 'none'}")
    lines.append("path:")
    for part in answer.get("placements", []):
        ran = part.get("ran_on") or {}
        where = f"node {ran['node']}" + (f" gpu {','.join(ran['gpu_ids'])}" if ran.get("gpu_ids")
                                          else "") if ran else part.get("where", "-")
        # The device the part's torch code used, where it is not just its target again.
        device = f" (torch on {part['device']})" if part.get("device") not in (
            None, "", part.get("target")) else ""
        state = "ok" if part.get("ok") else f"FAILED {part.get('error', '')}"
        lines.append(f"  {part['part']:9s} {part.get('target', '-'):4s} {where}{device}  "
                     f"{part.get('latency_ms', 0):.0f} ms  {state}  ({part.get('reason', '')})")
    if answer.get("fallbacks"):
        lines.append(f"fallbacks: {'; '.join(answer['fallbacks'])}")
    lines.append(f"request {answer['request_id']} in {answer['latency_ms']:.0f} ms")
    return "\n".join(lines)


def _serving_stop(args: argparse.Namespace) -> int:
    from unified_assets.serving.deploy import stop_local_ray
    from unified_assets.settings import load_settings

    home = load_settings().home
    print({"stopped": f"stopped the local Ray instance of {home} (serving ends with it)",
           "gone": f"the local Ray instance of {home} was not running any more; its record "
                   "is removed"}.get(stop_local_ray(home) or "",
                                     f"no local Ray instance recorded for {home}: nothing to stop"))
    return 0


def _cases(args: argparse.Namespace) -> int:
    from unified_assets.serving.cases import list_cases

    _, resources, _ = _context()
    cases = list_cases(resources["decisions"], None if args.all else "open")
    if not cases:
        print("no open cases" if not args.all else "no cases")
    for case in cases:
        done = f"  resolved by {case.resolved_by}: {case.answer}" if case.status == "resolved" \
            else ""
        print(f"{case.case_id}  {case.opened_at:%Y-%m-%d %H:%M:%S}  {case.status:8s} customer "
              f"{case.customer_id}  {', '.join(case.details.get('intents', []))}: "
              f"{case.details.get('message', '')!r}  because: {case.reason}{done}")
    return 0


def _cases_resolve(args: argparse.Namespace) -> int:
    from unified_assets.services.identity import IdentityError, sign
    from unified_assets.serving.cases import CASES_MODEL, RESOLVE_ACTION, CaseRefused, resolve_case

    _, resources, _ = _context()
    try:
        key = _signing_key(args)
        token = sign(key, action=RESOLVE_ACTION, model=CASES_MODEL, version=args.case_id,
                     actor=args.by, reason=args.answer) if key is not None else None
        case = resolve_case(resources["decisions"], resources["policy"].policy, args.case_id,
                            args.by, args.answer, token=token, source="cli")
    except IdentityError as error:
        print(f"cannot sign: {error}", file=sys.stderr)
        return 1
    except CaseRefused as refused:
        print(f"refused (recorded): {refused}", file=sys.stderr)
        return 1
    print(f"{case.case_id} resolved by {case.resolved_by}: {case.answer}")
    return 0


EPILOG = """\
start here:
  bash scripts/dev.sh                     the Dagster UI, running the lifecycle by itself
  unified-ai runs stop | runs resume      what its Ctrl-C and its next start do to runs
  unified-ai demo                         the whole lifecycle headless, then a summary
  unified-ai spec infer DATA --out SPEC   draft a spec for your own table
  unified-ai demo --spec SPEC             run the lifecycle on it
decide and audit:
  unified-ai pending | approve V | reject V | rollback   (--by NAME --reason TEXT)
  unified-ai history | audit verify | incidents
serve:
  unified-ai ask "where is my refund?" --customer 42   the deployed support workflow
  unified-ai cases | cases resolve ID --by NAME --answer TEXT
  unified-ai serving stop                 the local Ray instance `serving` started
`unified-ai COMMAND --help` for a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unified-ai", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    generate.add_argument("--labels", choices=("inline", "late", "only"), default="inline",
                          help="late: batches without labels; only: their labels, landing later "
                          "(same seed, batches and drift options)")
    generate.set_defaults(run=_generate)

    demo = commands.add_parser("demo", help="run the whole lifecycle headless on a temp instance")
    demo.add_argument("--batches", type=int, default=6)
    demo.add_argument("--rows", type=int, default=4000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--home", default=None, help="state folder (default: a new temp folder)")
    demo.add_argument("--spec", default=None, help="dataset spec YAML (bring your own data)")
    demo.add_argument("--verbose", action="store_true",
                      help="print Dagster's run events as they happen (default: to a log file)")
    demo.add_argument("--policy", default=None,
                      help="policy YAML (default: UNIFIED_AI_POLICY, else the spec's `policy:`, "
                      "else the shipped policy)")
    demo.set_defaults(run=_demo)

    byo = commands.add_parser("byo-example", help="write scikit-learn's breast-cancer data + spec")
    byo.add_argument("--out", default=".unified_ai/byo-breast-cancer")
    byo.add_argument("--batches", type=int, default=3)
    byo.set_defaults(run=_byo_example)
    from unified_assets.runs_cli import add_runs_parser
    from unified_assets.spec_cli import add_spec_parser

    add_spec_parser(commands)
    add_runs_parser(commands)

    commands.add_parser("pending", help="list approval requests awaiting a decision").set_defaults(
        run=_pending)
    key_help = "private key file (default: $UNIFIED_AI_SIGNING_KEY)"
    for decision in ("approve", "reject"):
        decide = commands.add_parser(decision, help=f"{decision} a challenger version (signed "
                                     "with the key in $UNIFIED_AI_SIGNING_KEY)")
        decide.add_argument("version", type=model_version,
                            help="version, as `history` shows it (3 or v3)")
        decide.add_argument("--by", required=True, help="who decides (allowed by the policy)")
        decide.add_argument("--reason", required=True)
        decide.add_argument("--key", default=None, help=key_help)
        decide.set_defaults(run=_decide, decision=decision)

    rollback = commands.add_parser("rollback", help="move `champion` back, with an incident "
                                   "(signed like approvals)")
    rollback.add_argument("--to", default=None, type=model_version,
                          help="version, 3 or v3 (default: previous good champion)")
    rollback.add_argument("--by", required=True, help="who asks (listed in rollback.by)")
    rollback.add_argument("--reason", required=True)
    rollback.add_argument("--key", default=None, help=key_help)
    rollback.add_argument("--wait", type=float, default=600.0,
                          help="seconds to wait for the run to end (it runs on regardless)")
    rollback.set_defaults(run=_rollback)

    keys = commands.add_parser("keys", help="signing keys for decisions").add_subparsers(
        dest="keys_command", required=True)
    new_key = keys.add_parser("new", help="make a key pair; prints the policy line to add")
    new_key.add_argument("name", help="the person, as the policy names them")
    new_key.add_argument("--out", default=str(Path("~/.unified-ai/keys")),
                         help="folder for NAME.key (default: ~/.unified-ai/keys)")
    new_key.set_defaults(run=_keys_new)
    show_key = keys.add_parser("show", help="print the policy line of an existing key again")
    show_key.add_argument("name", help="the person, as the policy names them")
    show_key.add_argument("--out", default=str(Path("~/.unified-ai/keys")),
                          help="folder of NAME.key (default: ~/.unified-ai/keys)")
    show_key.set_defaults(run=_keys_show)

    sign = commands.add_parser("sign", help="print a signed decision to paste in the UI launchpad")
    sign_actions = sign.add_subparsers(dest="action", required=True)
    for action in ("approve", "reject", "rollback"):
        signed = sign_actions.add_parser(action, help=f"sign a {action}")
        if action == "rollback":
            signed.add_argument("--to", default=None, type=model_version,
                                help="version, 3 or v3 (default: previous champion)")
        else:
            signed.add_argument("version", type=model_version)
        signed.add_argument("--by", required=True)
        signed.add_argument("--reason", required=True)
        signed.add_argument("--key", default=None, help=key_help)
        signed.add_argument("--model", default=None,
                            help="registered model name (default: the configured dataset's)")
        signed.set_defaults(run=_sign)

    commands.add_parser("history", help="every champion change with its reason and status"
                        ).set_defaults(run=_history)
    audit = commands.add_parser("audit", help="check the decision log").add_subparsers(
        dest="audit_command", required=True)
    audit.add_parser("verify", help="verify the hash chain of the whole decision log"
                     ).set_defaults(run=_audit_verify)
    from resources.incident_kinds import INCIDENT_KINDS

    incidents = commands.add_parser("incidents", help="run failures, rollbacks, refusals, "
                                    "live regressions, registry faults")
    incidents.add_argument("--kind", default=None, choices=INCIDENT_KINDS,
                           metavar="{" + ",".join(INCIDENT_KINDS) + "}")
    incidents.add_argument("--last", type=int, default=20, help="how many of the newest (0: all)")
    incidents.set_defaults(run=_incidents)

    for name, handler, text in (
        ("plan", _plan, "print where each step would run now, and why"),
        ("k8s-manifests", _k8s_manifests, "write the Job manifest dagster-k8s makes per step"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--job", default="train_evaluate_promote")
        sub.add_argument("--select", default=None, help="comma-separated steps or assets")
        sub.add_argument("--rows", type=int, default=None, help="training rows (default: unknown)")
        sub.add_argument("--cluster", default=None,
                         help="plan against a recorded cluster (YAML of nodes and pools, e.g. "
                         "deploy/cluster.example.yaml) instead of what this machine sees")
        sub.set_defaults(run=handler)
        if name == "k8s-manifests":
            sub.add_argument("--out", required=True, help="folder for one YAML per step")
            sub.add_argument("--image", default="unified-ai:latest")
            sub.add_argument("--instance-config", default="deploy/dagster.yaml",
                             help="dagster.yaml whose K8sRunLauncher config the jobs follow")
    # serving (issue 15) ------------------------------------------------------------------
    ask = commands.add_parser("ask", help="ask the deployed support workflow (POST /support)")
    ask.add_argument("message")
    ask.add_argument("--customer", required=True, type=int, help="customer id")
    ask.add_argument("--url", default=None,
                     help="the /support URL (default: what `serving` last deployed from this home)")
    ask.add_argument("--timeout", type=float, default=60.0)
    ask.add_argument("--json", action="store_true", help="print the whole JSON answer")
    ask.set_defaults(run=_ask)
    serving = commands.add_parser("serving", help="the local Ray instance `serving` started"
                                  ).add_subparsers(dest="serving_command", required=True)
    serving.add_parser("stop", help="stop the local Ray instance this home's `serving` started "
                       "(its process group only)").set_defaults(run=_serving_stop)
    cases = commands.add_parser("cases", help="escalated support requests (open ones by default)")
    cases.add_argument("--all", action="store_true", help="resolved cases too")
    cases.set_defaults(run=_cases)
    case_commands = cases.add_subparsers(dest="cases_command")
    resolve = case_commands.add_parser("resolve", help="close a case with an answer (an approver, "
                                       "signed like approvals)")
    resolve.add_argument("case_id")
    resolve.add_argument("--by", required=True, help="who answers (an approver in the policy)")
    resolve.add_argument("--answer", required=True)
    resolve.add_argument("--key", default=None, help=key_help)
    resolve.set_defaults(run=_cases_resolve)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # The folder the command runs in is importable, as it is for `dagster dev` (the workspace's
    # working directory): a user's candidate module named in UNIFIED_AI_CANDIDATES resolves
    # the same in the CLI as in the UI.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    # Dagster's beta/preview notices about APIs the code location uses (partitioned asset
    # checks, automation sensors) are for its authors, not for each command's user. `generate`
    # never loads Dagster (importing it was a third of the seeding in scripts/dev.sh).
    if args.run is not _generate:
        with contextlib.suppress(ImportError):
            import dagster as dg

            warnings.filterwarnings("ignore", category=dg.BetaWarning)
            warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    for name in ("batches", "rows"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"unified-ai {args.command}: --{name} must be at least 1", file=sys.stderr)
            return 2
    try:
        return args.run(args)
    except configuration_errors() as error:  # a setting, file or spec that cannot be used
        print(f"unified-ai {args.command}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None:
            raise  # not a path the user gave (a network error says more with its trace)
        # A path the user gave that cannot be used (--out naming a file, a folder without
        # permission): one line naming it, as `mkdir` says it, and nothing written.
        print(f"unified-ai {args.command}: cannot use {error.filename}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 2


def model_version(text: str) -> str:
    """A model version as the registry names it (`3`), also written as `history` and the UI
    show it (`v3`)."""
    text = text.strip()
    return text[1:] if len(text) > 1 and text[0] in "vV" and text[1:].isdigit() else text


def configuration_errors() -> tuple[type[Exception], ...]:
    """Errors that name a setting, a file or a field the user can fix: one line each, no
    traceback (the message says what and where)."""
    from unified_assets.candidates import CandidateError
    from unified_assets.extras import MissingExtra
    from unified_assets.ml.dataset_spec import DatasetSpecError
    from unified_assets.placement.cluster_file import ClusterFileError
    from unified_assets.placement.policy import PolicyError
    from unified_assets.settings import SettingsError

    return (CandidateError, DatasetSpecError, ClusterFileError, PolicyError, SettingsError,
            MissingExtra)


if __name__ == "__main__":
    sys.exit(main())
