"""Where the service runs, as a resource: the Ray cluster (its dashboard URL, RAY_ADDRESS in
production) or, when none is named, a Ray instance on this machine started on demand; and
where the request audit and the endpoint record are kept."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class ServingTarget(dg.ConfigurableResource):
    """`ray_address`: the Ray dashboard URL (http://host:8265); None starts a local instance."""

    home: str
    ray_address: str | None = None

    @property
    def folder(self) -> Path:
        return Path(self.home) / "serving"

    @property
    def audit_path(self) -> Path:
        return self.folder / "audit.jsonl"

    @property
    def backlog_folder(self) -> Path:
        """Where a person drops request backlogs (`NAME.jsonl`, one request a line)."""
        return self.folder / "backlog"

    @property
    def answers_folder(self) -> Path:
        """The decided backlogs, one `KEY.jsonl` per partition (`backlog_decided`)."""
        return self.backlog_folder / "answers"

    @property
    def endpoint_file(self) -> Path:
        """What the last deployment serves and where (read by `unified-ai ask`)."""
        return self.folder / "endpoint.json"

    def dashboard(self) -> str:
        if self.ray_address:
            return self.ray_address.rstrip("/")
        from unified_assets.serving.deploy import ensure_local_ray

        return ensure_local_ray(Path(self.home))
