"""Refused requests: a decision or rollback that must not happen fails its run with one line,
marked so that `run_failure_incidents` files no incident and the CLI prints that line."""

from __future__ import annotations

import dagster as dg

# Metadata key a step sets on the dg.Failure it raises for a request it refused (a decision or
# rollback not allowed, a version not decidable): the run fails with that one-line reason,
# and `run_failure_incidents` files no incident, since nothing is broken.
REFUSED_MARKER = "unified-ai/refused"


class Refused(Exception):
    """A request the services turned down; the message is the one line people read."""


def one_line(reason: str) -> str:
    """The first line of a reason ('refused' when it is empty)."""
    return reason.strip().splitlines()[0] if reason.strip() else "refused"


def refused(reason: str) -> dg.Failure:
    """The run of a request we refused fails with this one line and no stack of ours; the
    marker tells `run_failure_incidents` that nothing is broken (no incident)."""
    return dg.Failure(description=one_line(reason), metadata={REFUSED_MARKER: True},
                      allow_retries=False)


def refusal(event: dg.DagsterEvent) -> str | None:
    """The one-line reason of a step failure that was a refused request, else None. Read from
    the marker the refusing step put on its dg.Failure, never from the message text."""
    failure = getattr(event.event_specific_data, "user_failure_data", None)
    marker = failure.metadata.get(REFUSED_MARKER) if failure else None
    if marker is None or marker.value is not True:
        return None
    return failure.description or "refused"


def step_error(event: dg.DagsterEvent) -> str | None:
    """What went wrong in a failed step: the dg.Failure's own description, else the innermost
    error message (Dagster wraps the user's exception)."""
    data = event.event_specific_data
    failure = getattr(data, "user_failure_data", None)
    if failure and failure.description:
        return failure.description.strip()[:2000]
    error = getattr(data, "error", None)
    if error is None:
        return None
    while error.cause is not None:
        error = error.cause
    return error.message.strip()[:2000]
