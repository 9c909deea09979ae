"""The small store the retrieval part reads: each customer's recent payments (with whether
the bank approved or declined them) and refunds, keyed by customer id.

Built from the project's own transaction generator (`ml.generator`), seeded, so every
replica builds the same store and a test knows what customer 42 has. Payments declined by
the bank are those the generator labels fraud, plus a few false alarms; refunds are on
approved payments. pandas and numpy are imported inside the functions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# The generator's batch index for the store's rows: far from the training batches' indexes,
# so a customer's payments are never rows of a training or holdout batch.
STORE_BATCH = 90_000
ANCHOR = "2026-11-30T12:00:00+00:00"  # "now" of the store: payments are in the 30 days before
REFUND_STATES = ("requested", "processing", "sent")
FALSE_DECLINE_RATE = 0.03
REFUND_RATE = 0.45


@dataclass(frozen=True)
class StoreSpec:
    seed: int = 7
    customers: int = 500
    per_customer: int = 8

    @property
    def version(self) -> str:
        return f"customers-s{self.seed}-n{self.customers}-k{self.per_customer}"


class CustomerStore:
    """Customers 1..n: their payments (newest first) and refunds."""

    def __init__(self, spec: StoreSpec, frame: Any, refunds: dict[int, list[dict]]) -> None:
        self.spec, self.frame, self._refunds = spec, frame, refunds
        self._rows = {int(cid): group for cid, group in frame.groupby("customer_id", sort=False)}

    @property
    def version(self) -> str:
        return self.spec.version

    def __contains__(self, customer_id: int) -> bool:
        return customer_id in self._rows

    def lookup(self, customer_id: int, recent: int = 8) -> dict | None:
        """The customer's tier, region, `recent` newest payments and refunds; None if unknown."""
        rows = self._rows.get(customer_id)
        if rows is None:
            return None
        payments = [_record(row) for row in rows.head(recent).to_dict("records")]
        first = payments[0]
        return {"customer_id": customer_id, "tier": first["customer_tier"],
                "region": first["region"], "transactions": payments,
                "refunds": list(self._refunds.get(customer_id, []))}


def _record(row: dict) -> dict:
    """A JSON-ready payment: plain Python numbers, times as ISO text."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        elif hasattr(value, "item"):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def build_store(spec: StoreSpec = StoreSpec()) -> CustomerStore:
    """The store for `spec`: the same spec always gives the same customers."""
    import numpy as np
    import pandas as pd

    from unified_assets.ml.generator import ID_COLUMN, TARGET, generate_batch

    rows = spec.customers * spec.per_customer
    frame = generate_batch(STORE_BATCH, rows, seed=spec.seed)
    rng = np.random.default_rng([spec.seed, STORE_BATCH])
    frame.insert(0, "customer_id", np.arange(rows) // spec.per_customer + 1)
    # One tier and region per customer (the generator draws them per payment).
    for column in ("customer_tier", "region"):
        frame[column] = frame.groupby("customer_id")[column].transform("first")
    anchor = pd.Timestamp(ANCHOR)
    frame["event_time"] = anchor - pd.to_timedelta(rng.integers(0, 30 * 86_400, size=rows),
                                                   unit="s")
    declined = (frame[TARGET] == 1) | (rng.random(rows) < FALSE_DECLINE_RATE)
    frame["status"] = np.where(declined, "declined", "approved")
    frame = frame.drop(columns=[TARGET]).rename(columns={ID_COLUMN: "transaction_id"})
    frame["transaction_id"] = [f"t{i:07d}" for i in range(rows)]
    frame = frame.sort_values(["customer_id", "event_time"], ascending=[True, False],
                              ignore_index=True)
    return CustomerStore(spec, frame, _refunds(spec, frame))


def _refunds(spec: StoreSpec, frame: Any) -> dict[int, list[dict]]:
    """At most one refund per customer, on one of their approved payments."""
    import pandas as pd

    rng = random.Random(spec.seed * 1_000_003 + STORE_BATCH)
    out: dict[int, list[dict]] = {}
    approved = frame[frame["status"] == "approved"]
    for customer_id, group in approved.groupby("customer_id", sort=True):
        if rng.random() >= REFUND_RATE:
            continue
        row = group.iloc[rng.randrange(len(group))]
        requested = row["event_time"] + pd.Timedelta(days=rng.randint(1, 4))
        state = rng.choice(REFUND_STATES)
        out[int(customer_id)] = [{
            "refund_id": f"r{int(customer_id):05d}", "transaction_id": row["transaction_id"],
            "amount": float(row["amount"]), "merchant_category": row["merchant_category"],
            "status": state, "requested_on": requested.date().isoformat(),
            "expected_by": (requested + pd.Timedelta(days=7)).date().isoformat(),
        }]
    return out
