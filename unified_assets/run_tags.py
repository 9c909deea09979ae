"""Why a run started, in tags a person reads in the UI: every run the sensors, the CLI and
the automation launch carries a trigger and a short reason (README: "every run says why it
started"). The tag names live here only; `started_because` builds the pair."""

TRIGGER_TAG = "unified-ai/trigger"
REASON_TAG = "unified-ai/reason"
# Why the run command stopped (canceled) a run: scripts/dev.sh's Ctrl-C, or `unified-ai runs stop`.
STOPPED_TAG = "unified-ai/stopped"
# On a stopped run: the run id of its resumption, or why there is none (unified_assets/run_stop.py).
RESUMED_TAG = "unified-ai/resumed-as"
# A stopped run's resumption waits in the run queue behind this tag (limit 0 in
# deploy/local/dagster.yaml) until `unified-ai runs resume` (scripts/dev.sh's next start)
# changes its value.
HOLD_TAG = "unified-ai/hold"
HELD = "until-resumed"
SOURCE_TAG = "unified-ai/source"  # who asked for a rollback (cli, sensor:live-performance)
# Which run queue limit a run counts against (the instance's tag_concurrency_limits): report
# runs are capped below the run slots, so reports waiting for a core never hold them all.
RUN_QUEUE_TAG = "unified-ai/queue"
REPORT_QUEUE = "reports"
# Dagster keeps tag values short in the UI's run list; longer reasons are cut, not refused.
MAX_REASON = 1000


def started_because(trigger: str, reason: str | None = None) -> dict[str, str]:
    """The trigger tag, and the reason tag (cut to MAX_REASON characters) when given."""
    tags = {TRIGGER_TAG: trigger}
    if reason is not None:
        tags[REASON_TAG] = reason[:MAX_REASON]
    return tags
