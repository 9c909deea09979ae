"""Request-time serving: the champion and the support-request workflow on Ray Serve.

Dagster stays the control plane (the `serving` asset deploys, records and audits); requests
run on Ray Serve, because a Dagster run takes seconds to start and a request must not.

- `profiles`: the serving compute profiles and the rules (thresholds, timeouts) of a request;
- `messages`, `intent_model`: generated support messages and the intent classifier;
- `customers`: the small store of customers' recent transactions and refunds;
- `explain`: per-feature attributions of the fraud model (torch) in plain language;
- `routing`: where each part of one request runs, decided by the placement planner;
- `decide`: answer, retry or escalate; `cases`: escalations in the decision store;
- `audit`: one JSON line per request; `deploy`: the Serve config and its deployment;
- `app`: the Ray Serve deployments themselves (imported only on the Ray cluster).

Importing this package loads neither ray, torch, mlflow, pandas nor scikit-learn: the code
location imports it, and each heavy library is imported inside the function that needs it.
"""
