"""Every step a Ray job, placed by the planner: dagster-ray's step handler, extended.

`RayStepHandler` (dagster_ray/core/executor.py) submits each step as a Ray job whose request
comes from the `dagster-ray/config` tag or the executor's config. Here the request comes from
the step's placement decision instead: the plan in the run tags (a planned GPU placement is
re-checked against the Ray cluster at launch) or a decision made at launch against a fresh
`RayCapacity` snapshot and the placement policy. So a GPU step the policy degrades asks Ray
for no GPU, `wait` queues the job on the GPU pool (Ray holds it PENDING), and
`fail_and_escalate` fails the step before anything is submitted, with the reason.

The decision and the request travel to the step in the job's environment
(`ray_step.ENV_*`), so `decide_at_start` in the step uses them and its materialization records
them with the Ray node and GPU ids (`ray_step.ray_evidence`).

A GPU node lost while its step runs fails the step's Ray job; the health check then applies
the policy: `degrade_to_cpu` and `wait` retry the step (the relaunch decides again against
the cluster as it is then: degraded on CPU, or queued on the GPU pool until a node is back),
`fail_and_escalate` fails it with the reason. Nothing downstream runs on a half-finished step:
a retried or failed step produced no output.

A step that runs out of memory (see `ray_step.exit_on_oom`, or killed by the OOM killer) is
retried once on the larger profile the policy names (`on_oom_profile`), and says so.

Each job's entrypoint is `ray_warm`'s client: the step runs in a process forked from a server
on its node that imported Dagster and the `preload` libraries once (the first step on a node
starts that server and runs in a fresh interpreter itself); `UNIFIED_AI_RAY_WARM=off` runs
every step in a fresh interpreter.

`ray` and `dagster_ray` are imported inside functions: the code location loads without them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dagster as dg

from unified_assets.placement.decision import Decision, PlacementError, StepRequirement
from unified_assets.placement.policy import DEFAULT_POLICY, PlacementPolicy
from unified_assets.settings import STEP_SETTINGS_ENV

if TYPE_CHECKING:
    from dagster._core.executor.step_delegating import StepHandlerContext

    from unified_assets.settings import Settings

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# Forwarded from the launching process to every step's job: the code location must load in
# the step as it did here (home, policy, dataset spec, candidates; Dagster's home). Named one
# by one, never by prefix: secrets live under UNIFIED_AI_ names too (settings.STEP_SETTINGS_ENV).
FORWARDED_ENV = (*STEP_SETTINGS_ENV, "DAGSTER_HOME")
# Ray declares a node dead after its health checks (5 x 3 s by default): a job killed as its
# node goes away reads as a kill until then (see `unsettled_kill`).
KILL_SETTLE_SECONDS = 20.0
HEALTH_CHECK_SECONDS = 2  # dagster-ray's 20 s default made a lost node count for 20 s more
SLEEP_SECONDS = 0.2
# Ray job errors meaning the node running the job went away (job supervisor or driver gone).
NODE_LOSS_ERRORS = frozenset({"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_START_FAILURE",
                              "NODE_DIED"})


def dashboard_address(address: str | None) -> str:
    """The dashboard URL jobs are submitted to. RAY_ADDRESS may name the GCS (host:6379),
    as Ray sets it inside its own jobs; the dashboard is then assumed on port 8265."""
    if not address:
        return DEFAULT_DASHBOARD
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    host = address.removeprefix("ray://").split(":")[0]
    return f"http://{host}:8265"


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The launching process's settings every step needs, plus its Python's bin folder in
    front of the job's PATH (`dagster api execute_step` must resolve to this install)."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in FORWARDED_ENV if k in env}
    out["PATH"] = f"{os.path.dirname(sys.executable)}:${{PATH}}"  # Ray expands ${PATH}
    return out


def warm_entrypoint(command: list[str] | tuple[str, ...],
                    python: str = sys.executable) -> str:
    """The Ray job's entrypoint for a step command: `ray_warm`'s client in front of it, which
    runs it warm or else execs it unchanged. Dagster's `dagster api execute_step` form (its
    default entry point) becomes `<python> -m dagster api execute_step` of this install, which
    the forwarded PATH resolves `dagster` to anyway."""
    import shlex

    from unified_assets.placement import ray_warm

    command = list(command)
    if command[:3] == ["dagster", "api", "execute_step"]:
        command = [python, "-m", *command]
    if not ray_warm.is_dagster_step(command):
        return shlex.join(command)
    return shlex.join([command[0], os.path.abspath(ray_warm.__file__), *command])


def _handler_class() -> type:
    """The step handler class, built on first use so `dagster_ray` is imported only then."""
    from dagster._core.definitions.metadata import MetadataValue
    from dagster._core.events import DagsterEvent, StepFailureData, StepRetryData
    from dagster._core.execution.plan.objects import UserFailureData
    from dagster._core.executor.step_delegating import CheckStepHealthResult
    from dagster._utils.error import SerializableErrorInfo
    from dagster_ray.core.executor import RayStepHandler
    from dagster_ray.utils import resolve_env_vars_list

    from unified_assets.compute import PROFILE_TAG, PROFILES
    from unified_assets.placement.planner import decide_on_ray
    from unified_assets.placement.ray_capacity import (
        REQUEST_METADATA,
        fetch_ray_capacity,
        get_ray_node,
    )
    from unified_assets.placement.ray_step import (
        ENV_DASHBOARD,
        ENV_DECISION,
        ENV_PROFILE,
        ENV_PROFILE_FROM,
        ENV_REQUEST,
        ENV_SUBMISSION_ID,
        OOM_EXIT_CODE,
        OOM_EXIT_CODES,
        request_json,
    )
    from unified_assets.placement.ray_warm import LAUNCH_SETTINGS_ENV, PRELOAD_ENV
    from unified_assets.placement.serialize import (
        decision_from_tags,
        decision_metadata,
        decision_to_tag_value,
    )

    class PlacedRayStepHandler(RayStepHandler):
        """dagster-ray's handler with the request taken from the placement decision."""

        def __init__(self, client: Any, address: str, policy: PlacementPolicy,
                     env_vars: list[str] | None = None,
                     runtime_env: dict[str, Any] | None = None,
                     preload: tuple[str, ...] = ()) -> None:
            # dagster-ray's executor-level num_cpus/num_gpus/memory/resources would override
            # every step's request: left unset, the decision is the request.
            super().__init__(client=client, env_vars=env_vars, runtime_env=runtime_env,
                             num_cpus=None, num_gpus=None, memory=None, resources=None)
            self.address = address
            self.policy = policy
            self.preload = preload  # what each node's warm server imports (ray_warm)
            self.launched: dict[str, Decision] = {}  # step key -> decision of its last launch
            self.notes: dict[str, str] = {}  # step key -> why it is relaunched (node lost, OOM)
            self.upsized: dict[str, str] = {}  # step key -> larger profile after an OOM
            self.refused: set[str] = set()  # steps failed before launch: no Ray job to check
            self.kills_seen: dict[str, float] = {}  # submission id -> when its kill was seen

        @property
        def name(self) -> str:
            return "PlacedRayStepHandler"

        def decision_for(self, ctx: StepHandlerContext, step_key: str) -> Decision | None:
            requirement = StepRequirement.from_tags(step_key, ctx.step_tags[step_key])
            if requirement is None:
                return None
            if step_key in self.upsized:  # the plan was for the profile that ran out of memory
                requirement = replace(requirement, profile=PROFILES[self.upsized[step_key]])
            planned = decision_from_tags(ctx.dagster_run.tags, step_key)
            return decide_on_ray(requirement, planned, fetch_ray_capacity(self.address),
                                 self.policy, note=self.notes.get(step_key, ""))

        def request_for(self, ctx: StepHandlerContext, step_key: str,
                        decision: Decision | None) -> dict[str, Any]:
            if decision is not None:
                return decision.effective_profile.ray_request()
            from dagster_ray.configs import RayExecutionConfig  # a step without a profile

            tagged = RayExecutionConfig.from_tags(dict(ctx.step_tags[step_key]))
            return {"num_cpus": tagged.num_cpus, "num_gpus": tagged.num_gpus,
                    "memory": tagged.memory, "resources": tagged.resources or {},
                    "label_selector": None}

        def _refuse(self, ctx: StepHandlerContext, step_key: str,
                    error: PlacementError) -> Iterator[DagsterEvent]:
            message = f"placement refused by policy before launch: {error}"
            self.refused.add(step_key)
            yield DagsterEvent.step_failure_event(
                step_context=ctx.get_step_context(step_key),
                step_failure_data=StepFailureData(
                    error=SerializableErrorInfo(message, [], "PlacementError"),
                    user_failure_data=UserFailureData(
                        label="placement", description=message,
                        metadata={"placement_reason": MetadataValue.text(str(error)),
                                  "placement_target": MetadataValue.text("none")})))

        def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
            # dagster-ray's launch_step has no hook for the request, so its body is repeated
            # here (ids, labels, env) with the request and the label selector from the decision.
            ctx = step_handler_context
            step_key = self._get_step_key(ctx)
            self.refused.discard(step_key)
            try:
                decision = self.decision_for(ctx, step_key)
            except PlacementError as error:
                yield from self._refuse(ctx, step_key, error)
                return
            request = self.request_for(ctx, step_key, decision)
            submission_id = self._get_ray_job_submission_id(ctx)
            run, args = ctx.dagster_run, ctx.execute_step_args
            runtime_env = dict(self.runtime_env)  # Ray modifies the runtime_env it is given
            env = {**forwarded_env(), **dict(runtime_env.get("env_vars") or {}),
                   "DAGSTER_RUN_JOB_NAME": run.job_name, "DAGSTER_RUN_STEP_KEY": step_key,
                   **{e["name"]: e["value"] for e in args.get_command_env()},
                   **resolve_env_vars_list(self.env_vars),
                   ENV_SUBMISSION_ID: submission_id, ENV_DASHBOARD: self.address,
                   ENV_REQUEST: request_json(request)}
            if self.preload:
                env[PRELOAD_ENV] = ",".join(self.preload)
            # UNIFIED_AI_RAY_WARM=off where Dagster runs turns warm steps off on the cluster.
            env.update({k: os.environ[k] for k in LAUNCH_SETTINGS_ENV if k in os.environ})
            metadata: dict[str, Any] = {"Ray Submission ID": MetadataValue.text(submission_id),
                                        "ray_request": MetadataValue.text(request_json(request))}
            if decision is not None:
                env[ENV_DECISION] = decision_to_tag_value(decision)
                env[ENV_PROFILE] = decision.effective_profile.name
                if step_key in self.upsized:
                    env[ENV_PROFILE_FROM] = ctx.step_tags[step_key].get(PROFILE_TAG, "")
                metadata.update({k: MetadataValue.text(v)
                                 for k, v in decision_metadata(decision).items()})
                self.launched[step_key] = decision
            runtime_env["env_vars"] = env
            where = f" ({decision.target}: {decision.reason})" if decision else ""
            yield DagsterEvent.step_worker_starting(
                ctx.get_step_context(step_key),
                message=f'Executing step "{step_key}" in Ray job {submission_id}{where}.',
                metadata=metadata)
            self.client.submit_job(
                entrypoint=warm_entrypoint(args.get_command_args(skip_serialized_namedtuple=True)),
                submission_id=submission_id,
                metadata={"dagster/job": run.job_name, "dagster/op": step_key,
                          "dagster/run-id": args.run_id, REQUEST_METADATA: request_json(request)},
                runtime_env=runtime_env,
                entrypoint_num_cpus=request["num_cpus"],
                entrypoint_num_gpus=request["num_gpus"],
                entrypoint_memory=request["memory"],
                entrypoint_resources=request["resources"] or None,
                entrypoint_label_selector=request["label_selector"])

        def node_loss(self, job: Any) -> str | None:
            """Why a failed job failed, when it is because its node went away."""
            node_id = job.driver_node_id or ""
            node = get_ray_node(self.address, node_id) if node_id else None
            if node is not None and node.get("state") != "ALIVE":
                pool = (node.get("labels") or {}).get("unified-ai/pool", "(no pool label)")
                return f"Ray node {node_id[:8]} (pool {pool}) was lost while the step ran"
            if job.error_type in NODE_LOSS_ERRORS:
                return f"the Ray job's node went away ({job.error_type}: {job.message})"
            return None

        def check_step_health(self, step_handler_context: StepHandlerContext
                              ) -> CheckStepHealthResult:
            from ray.job_submission import JobStatus

            ctx = step_handler_context
            step_key = self._get_step_key(ctx)
            if step_key in self.refused:
                return CheckStepHealthResult.healthy()  # failed before launch: no Ray job
            submission_id = self._get_ray_job_submission_id(ctx)
            try:
                status = self.client.get_job_status(submission_id)
            except RuntimeError:
                return CheckStepHealthResult.unhealthy(
                    reason=f"Ray job {submission_id} for step {step_key} could not be found.")
            if status == JobStatus.STOPPED:  # dagster-ray counts a stopped job as healthy
                return CheckStepHealthResult.unhealthy(
                    reason=f"Ray job {submission_id} for step {step_key} was stopped.")
            if status != JobStatus.FAILED:
                return CheckStepHealthResult.healthy()
            job = self.client.get_job_info(submission_id)
            reason = f"Ray job {submission_id} for step {step_key} failed"
            if job.error_type:
                reason += f" ({job.error_type})"
            if job.message:
                reason += f": {job.message}"
            decision = self.launched.get(step_key)
            lost = self.node_loss(job)
            if lost is None and decision is not None and self.out_of_memory(job):
                if self.unsettled_kill(job):
                    return CheckStepHealthResult.healthy()  # Ray will say if its node is lost
                return self.retry_larger(ctx, step_key, decision, job, reason)
            if lost is None or decision is None:
                return CheckStepHealthResult.unhealthy(reason=reason)
            rule = self.policy.profiles.get(decision.profile.name)
            action = rule.on_unavailable if rule is not None else "fail_and_escalate"
            if decision.target != "gpu" or action == "fail_and_escalate":
                return CheckStepHealthResult.unhealthy(
                    reason=f"{lost}; policy profiles.{decision.profile.name}.on_unavailable="
                           f"{action}: escalate. {reason}")
            self.notes[step_key] = f"{lost} (job {submission_id})"
            DagsterEvent.step_retry_event(
                ctx.get_step_context(step_key),
                StepRetryData(error=SerializableErrorInfo(
                    f"{lost}; policy profiles.{decision.profile.name}.on_unavailable={action}: "
                    "relaunched, placed again on the cluster as it is now", [], "RayNodeLost"),
                    seconds_to_wait=None))
            return CheckStepHealthResult.healthy()

        def unsettled_kill(self, job: Any) -> bool:
            """A step killed (-9 / 137) with no word of memory is the kernel's OOM killer, or
            its node going away: Ray kills the job's processes as it loses the node, and
            declares the node dead only after its health checks. Until `KILL_SETTLE_SECONDS`
            after the kill was first seen, the node may still be declared lost."""
            if job.driver_exit_code == OOM_EXIT_CODE or self.says_out_of_memory(job):
                return False
            first = self.kills_seen.setdefault(job.submission_id, time.monotonic())
            return time.monotonic() - first < KILL_SETTLE_SECONDS

        @staticmethod
        def out_of_memory(job: Any) -> bool:
            """The job's step ran out of memory: it exited with `OOM_EXIT_CODE` (ray_step's
            `exit_on_oom`) or was killed (-9 / 137: the kernel's OOM killer)."""
            return job.driver_exit_code in OOM_EXIT_CODES or \
                PlacedRayStepHandler.says_out_of_memory(job)

        @staticmethod
        def says_out_of_memory(job: Any) -> bool:
            """Ray's message or error type for the job names memory exhaustion."""
            text = f"{job.message or ''} {job.error_type or ''}".lower()
            return "out of memory" in text or "outofmemory" in text

        def retry_larger(self, ctx: StepHandlerContext, step_key: str, decision: Decision,
                         job: Any, reason: str) -> CheckStepHealthResult:
            """After an out-of-memory failure, retry once on the larger profile the policy
            names for the profile the step ran with; else fail with the reason."""
            current = decision.profile.name
            rule = self.policy.profiles.get(current)
            larger = rule.on_oom_profile if rule is not None else None
            why = (f"out of memory on profile {current} (Ray job {job.submission_id}, exit code "
                   f"{job.driver_exit_code})")
            if larger is None or larger not in PROFILES or step_key in self.upsized:
                return CheckStepHealthResult.unhealthy(
                    reason=f"{why}; policy profiles.{current}.on_oom_profile names no larger "
                           f"profile to retry on. {reason}")
            self.upsized[step_key] = larger
            self.notes[step_key] = (f"{why}: retried on the larger profile {larger} by policy "
                                    f"profiles.{current}.on_oom_profile")
            DagsterEvent.step_retry_event(
                ctx.get_step_context(step_key),
                StepRetryData(error=SerializableErrorInfo(self.notes[step_key], [], "OutOfMemory"),
                              seconds_to_wait=None))
            return CheckStepHealthResult.healthy()

    return PlacedRayStepHandler


def placed_ray_step_handler(address: str, policy: PlacementPolicy = DEFAULT_POLICY,
                            env_vars: list[str] | None = None,
                            runtime_env: dict[str, Any] | None = None,
                            preload: tuple[str, ...] = ()) -> Any:
    """A `PlacedRayStepHandler` submitting to the dashboard at `address`."""
    from ray.job_submission import JobSubmissionClient

    address = dashboard_address(address)
    return _handler_class()(JobSubmissionClient(address), address, policy, env_vars, runtime_env,
                            tuple(preload))


def ray_executor_def(policy: PlacementPolicy | None = None,
                     default_address: str | None = None,
                     preload: tuple[str, ...] = ()) -> dg.ExecutorDefinition:
    """The `ray` executor: each step a Ray job placed by `policy` (default: the policy file's
    placement section, read when the run starts); `preload`: libraries each node's warm step
    server imports once (`ray_warm`), never the code location itself."""
    from dagster._core.definitions.executor_definition import (
        multiple_process_executor_requirements,
    )
    from dagster._core.execution.retries import RetryMode, get_retries_config
    from dagster._core.execution.tags import get_tag_concurrency_limits_config

    @dg.executor(
        name="ray",
        config_schema={
            "address": dg.Field(str, default_value=dashboard_address(default_address),
                                description="The Ray dashboard URL jobs are submitted to."),
            "max_concurrent": dg.Field(int, is_required=False,
                                       description="Most steps launched at once (Ray queues "
                                                   "the rest by their requests anyway)."),
            "env_vars": dg.Field([str], is_required=False,
                                 description="More KEY or KEY=VALUE for every step's job."),
            "policy_path": dg.Field(str, is_required=False,
                                    description="Policy file whose placement section applies."),
            "retries": get_retries_config(),
            "tag_concurrency_limits": get_tag_concurrency_limits_config(),
        },
        requirements=multiple_process_executor_requirements(),
    )
    def _ray(init_context: Any) -> Any:
        from dagster._core.executor.step_delegating import StepDelegatingExecutor

        config = init_context.executor_config
        placement = policy
        if placement is None:
            from unified_assets.policy import load_policy

            placement = load_policy(config.get("policy_path")).placement
        handler = placed_ray_step_handler(config["address"], placement, config.get("env_vars"),
                                          preload=preload)
        return StepDelegatingExecutor(
            handler, retries=RetryMode.from_config(config["retries"]),
            max_concurrent=config.get("max_concurrent"),
            tag_concurrency_limits=config.get("tag_concurrency_limits"),
            should_verify_step=True, sleep_seconds=SLEEP_SECONDS,
            check_step_health_interval_seconds=HEALTH_CHECK_SECONDS)

    return _ray


def ray_executor_for(settings: Settings, policy: PlacementPolicy | None = None,
                     preload: tuple[str, ...] = ()) -> dg.ExecutorDefinition:
    """The executor of the `ray` deployment: RAY_ADDRESS, the policy the code location uses,
    the libraries its steps import (`preload`, for the warm step servers)."""
    from unified_assets.extras import require
    from unified_assets.settings import policy_choice

    require("dagster_ray", "ray", "Running steps on Ray (the `ray` executor)")

    config: dict[str, Any] = {"address": dashboard_address(settings.ray_address),
                              "max_concurrent": 8}
    path, _ = policy_choice(settings)
    if path and policy is None:
        config["policy_path"] = str(path)
    return ray_executor_def(policy, preload=preload).configured(config, name="ray")
