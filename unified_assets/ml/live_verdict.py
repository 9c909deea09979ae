"""What the champion's live numbers ask for, once a batch's ground truth has landed (plain
code: `assets/live.py` measures, this judges).

The previous champion is scored on the same labelled rows, so "far below the previous
champion" compares like with like: if the world changed, both drop and a rollback would not
help (a retrain would); if only the new champion is worse, rolling back does help.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from unified_assets.policy import HIGHER_IS_BETTER, LivePolicy

LiveAction = Literal["ok", "retrain", "rollback", "insufficient", "not_live"]


@dataclass(frozen=True)
class LiveVerdict:
    action: LiveAction
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def judge_live(champion: dict, previous: dict | None, rows: int, positives: int,
               policy: LivePolicy) -> LiveVerdict:
    """`champion`/`previous` are metric dicts on the same rows (`previous` None when there is
    no earlier champion to return to)."""
    metric = policy.metric
    negatives = rows - positives
    if rows < policy.min_rows or positives < policy.min_positives or negatives < 1:
        return LiveVerdict("insufficient", f"{rows} labelled rows with {positives} positives; the "
                           f"policy needs {policy.min_rows} rows and {policy.min_positives} positives")
    value = champion.get(metric)
    if value is None:
        return LiveVerdict("insufficient", f"{metric} is undefined on this batch")
    higher = HIGHER_IS_BETTER[metric]
    if previous is not None and previous.get(metric) is not None and \
            policy.max_drop_vs_previous is not None:
        gap = (previous[metric] - value) if higher else (value - previous[metric])
        if gap > policy.max_drop_vs_previous:
            return LiveVerdict("rollback", f"live {metric} {value:.4f} is {gap:.4f} worse than the "
                               f"previous champion's {previous[metric]:.4f} on the same rows "
                               f"(allowed {policy.max_drop_vs_previous})")
    if policy.floor is not None and (value < policy.floor if higher else value > policy.floor):
        side = "below the floor" if higher else "above the ceiling"
        return LiveVerdict("retrain", f"live {metric} {value:.4f} is {side} {policy.floor}")
    return LiveVerdict("ok", f"live {metric} {value:.4f} within policy")
