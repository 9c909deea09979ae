"""Where incidents are escalated: a webhook (JSON POST) when configured, the log otherwise."""

import json
import os
import urllib.request

import dagster as dg


class Escalation(dg.ConfigurableResource):
    """The webhook URL (it often embeds a token) is read from the environment variable named
    by `webhook_env` when an incident is sent, never at import and never shown as config."""

    webhook_env: str = "UNIFIED_AI_ESCALATION_WEBHOOK"
    timeout_seconds: float = 5.0

    def escalate(self, log, title: str, payload: dict) -> str:
        """Send the incident; returns where it went. A failing webhook is logged, not raised,
        so escalation never hides the incident it reports."""
        url = os.environ.get(self.webhook_env)
        if not url:
            log.error(f"INCIDENT {title}: {json.dumps(payload, default=str)}")
            return "log"
        body = json.dumps({"title": title, **payload}, default=str).encode()
        request = urllib.request.Request(url, data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return f"webhook (HTTP {response.status})"
        except OSError as error:
            log.error(f"INCIDENT {title} (webhook failed: {error}): {json.dumps(payload, default=str)}")
            return f"log (webhook failed: {error})"
