"""The request audit: one JSON line per request (id, intent, each part with where it ran and
why, latency, fallbacks, outcome, model versions), appended by the ingress replicas.

A JSONL file rather than the decision store: every request writes one, and the hash chain
is for decisions. Each line is written with one `write` under an exclusive lock, so
replicas on the same host never interleave lines."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


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


def read_records(path: str | Path, last: int | None = None) -> list[dict]:
    """The records, oldest first (the `last` newest when given); a torn final line is skipped."""
    target = Path(path)
    if not target.exists():
        return []
    records = []
    for line in target.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records[-last:] if last else records
