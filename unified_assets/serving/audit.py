"""The request audit: one JSON line per request (id, intent, each part with where it ran and
why, latency, fallbacks, outcome, model versions), appended by the ingress replicas.

A JSONL file rather than the decision store: every request writes one, and the hash chain
is for decisions. Each line is written with one `write` under an exclusive lock, so
replicas on the same host never interleave lines.

`summarize` is what the `request_audit` asset records per day: outcomes, escalation rate,
fallbacks per part, latency percentiles and the model versions seen."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# Outcomes of a decided request (the others: `rejected`, a 4xx; `shed`, a 503 for a replica
# at its `max_in_flight`, before any work; and `error`, a 500).
DECIDED = ("answer", "retry", "escalate")


def append_record(path: str | Path, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True, default=str, separators=(",", ":")) + "\n").encode()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class BadLine:
    """A line of the audit that is not a record: where it is and why."""

    path: str
    line: int  # 1-based
    error: str
    text: str  # its first characters

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.error}"


def iter_records(path: str | Path, bad: list[BadLine] | None = None) -> Iterator[dict]:
    """The records in file order, read line by line. A line that is not a JSON object is
    skipped, and named in `bad` (file, line number, why) when a list is given; blank lines
    are no records and no errors."""
    for _, record in iter_numbered(path, bad):
        yield record


def iter_numbered(path: str | Path, bad: list[BadLine] | None = None
                  ) -> Iterator[tuple[int, dict]]:
    """(line number, record) in file order, as `iter_records` reads them."""
    target = Path(path)
    if not target.exists():
        return
    with target.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except (UnicodeDecodeError, ValueError) as error:
                if bad is not None:
                    why = str(error).splitlines()[0][:200]
                    if not raw.endswith(b"\n"):
                        why += " (the last line, without its newline: possibly still being written)"
                    bad.append(BadLine(str(target), number, why,
                                       raw[:120].decode(errors="replace").rstrip()))
                continue
            yield number, record


def read_records(path: str | Path, last: int | None = None,
                 bad: list[BadLine] | None = None) -> list[dict]:
    """The records, oldest first (the `last` newest when given); a torn or malformed line is
    skipped (and named in `bad` when a list is given)."""
    records = list(iter_records(path, bad))
    return records[-last:] if last else records


def record_time(record: dict) -> datetime | None:
    """When a request was taken (`at`, ISO 8601; naive times are UTC); None if unreadable."""
    try:
        at = datetime.fromisoformat(str(record["at"]))
    except (KeyError, ValueError, TypeError):
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in [0, 1]) of a non-empty list (as `serving_scaling`)."""
    from unified_assets.serving.scaling import _percentile

    return _percentile(values, share)


def summarize(path: str | Path, start: datetime, end: datetime) -> dict:
    """The requests taken in [start, end) from the audit at `path`: counts by outcome and HTTP
    status, the escalation rate (escalated / decided: answer, retry or escalate; a rejected
    4xx or an error is no decision), fallbacks per part, latency p50/p95/p99 (ms), model
    versions seen, the most frequent escalation reasons; and every line that could not be
    read (named, never dropped silently) or had no readable time."""
    bad: list[BadLine] = []
    outcomes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    fallbacks: Counter[tuple[str, str]] = Counter()
    fallback_parts: Counter[str] = Counter()
    versions: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    latencies: list[float] = []
    untimed: list[str] = []
    requests = with_fallback = 0
    # A line without a readable time (malformed, or a record without `at`) belongs to the day
    # of the record before it, the audit being appended in time order (the first record's
    # day before any): each day names only its own. With no timed record at all, every day
    # names them.
    every_bad: list[BadLine] = []
    orphans: list[BadLine | str] = []
    previous: datetime | None = None

    def place(at: datetime | None, item: BadLine | str) -> None:
        if at is None:
            orphans.append(item)
        elif start <= at < end:
            (bad if isinstance(item, BadLine) else untimed).append(item)

    seen = 0  # of every_bad, placed
    for number, record in iter_numbered(path, every_bad):
        for line in every_bad[seen:]:  # the malformed lines between the last record and this
            place(previous, line)
        seen = len(every_bad)
        at = record_time(record)
        if at is None:
            place(previous, f"{record['request_id']} (line {number})" if "request_id" in record
                  else f"line {number}")
            continue
        if previous is None:
            for item in orphans:
                place(at, item)
            orphans.clear()
        previous = at
        if not start <= at < end:
            continue
        requests += 1
        outcome = str(record.get("outcome") or "unknown")
        outcomes[outcome] += 1
        status = record.get("status")
        statuses[str(status) if status is not None else "unknown"] += 1
        parts = set()
        for fallback in record.get("fallbacks") or []:
            part, _, what = str(fallback).partition(":")
            fallbacks[(part.strip(), what.strip() or "fallback")] += 1
            parts.add(part.strip())
        fallback_parts.update(parts)
        with_fallback += bool(parts)
        for key, version in sorted((record.get("versions") or {}).items()):
            versions[(str(key), str(version))] += 1
        if outcome == "escalate":
            reasons[str(record.get("reason") or "no reason recorded")[:160]] += 1
        with contextlib.suppress(KeyError, TypeError, ValueError):
            latencies.append(float(record["latency_ms"]))
    for line in every_bad[seen:]:
        place(previous, line)
    for item in orphans:  # no timed record in the whole file: no day to give them to
        (bad if isinstance(item, BadLine) else untimed).append(item)
    bad.sort(key=lambda b: b.line)
    decided = sum(outcomes[o] for o in DECIDED)
    latency = ({f"p{int(q * 100)}_latency_ms": round(percentile(latencies, q), 1)
                for q in (0.5, 0.95, 0.99)} if latencies else {})
    return {
        "requests": requests,
        "decided": decided,
        "outcomes": dict(sorted(outcomes.items())),
        "statuses": dict(sorted(statuses.items())),
        "escalation_rate": round(outcomes["escalate"] / decided, 4) if decided else None,
        "requests_with_fallback": with_fallback,
        "fallbacks_per_part": dict(sorted(fallback_parts.items())),
        "fallbacks": [{"part": part, "fallback": what, "requests": n}
                      for (part, what), n in sorted(fallbacks.items())],
        "latency": latency,
        "latency_samples": len(latencies),
        "versions": [{"model": key, "version": version, "requests": n}
                     for (key, version), n in sorted(versions.items())],
        "escalation_reasons": [{"reason": r, "requests": n} for r, n in reasons.most_common(5)],
        "bad_lines": bad,
        "untimed": untimed,
    }
