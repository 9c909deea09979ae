"""Deployment group: the production model is whichever version holds the `champion` alias."""


from datetime import UTC, datetime

import dagster as dg

from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistry
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table

PRODUCTION_CONDITION = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
)


def choose_promotion(reports: list[dict], current_champion: str | None) -> tuple[dict | None, str]:
    """The report to promote (or None) and why. The best candidate by holdout ROC AUC is
    promoted unless the current champion scores at least as well on the same rows."""
    ranked = [r for r in reports if r["overall"]["roc_auc"] is not None]
    if not ranked:
        return None, "no candidate has a defined ROC AUC on the holdout"
    best = max(ranked, key=lambda r: r["overall"]["roc_auc"])
    if current_champion is None:
        return best, f"first champion: {best['family']} v{best['version']}"
    if best["version"] == current_champion:
        return None, f"v{current_champion} is already champion"
    champion = best.get("champion")
    if champion and champion["overall"]["roc_auc"] is not None and (
        champion["overall"]["roc_auc"] >= best["overall"]["roc_auc"]
    ):
        return None, (
            f"champion v{current_champion} (ROC AUC {champion['overall']['roc_auc']:.4f}) is not "
            f"beaten by {best['family']} v{best['version']} ({best['overall']['roc_auc']:.4f})"
        )
    return best, f"{best['family']} v{best['version']} beats champion v{current_champion}"


@dg.asset(
    ins={f"evaluation_{family}": dg.AssetIn() for family in ("sklearn", "torch")},
    group_name="deployment",
    kinds={"mlflow"},
    owners=OWNERS,
    description=(
        "The production model: moves the MLflow `champion` alias to the best evaluated "
        "candidate when it beats the current champion on the same holdout, and records the "
        "previous champion, the evaluation it passed on and the data it was trained on."
    ),
    automation_condition=PRODUCTION_CONDITION,
    **CPU_LIGHT.asset_kwargs(),
)
def production_model(
    context: dg.AssetExecutionContext,
    mlflow_registry: MlflowRegistry,
    evaluation_sklearn: dict,
    evaluation_torch: dict,
) -> dg.Output[dict]:
    reports = [evaluation_sklearn, evaluation_torch]
    model_name = reports[0]["model_name"]
    previous = mlflow_registry.alias_version(model_name)
    chosen, reason = choose_promotion(reports, previous)
    if chosen is not None:
        mlflow_registry.set_alias(model_name, chosen["version"])
        context.log.info(f"promoted: {reason}")
    else:
        context.log.info(f"champion unchanged: {reason}")
    champion = mlflow_registry.alias_version(model_name)
    record = {
        "model_name": model_name,
        "alias": CHAMPION_ALIAS,
        "champion_version": champion,
        "previous_champion": previous,
        "promoted": chosen is not None,
        "reason": reason,
        "decided_at": datetime.now(UTC).isoformat(),
        "evaluation_report": chosen["report_uri"] if chosen else None,
        "training_batches": chosen["training_batches"] if chosen else None,
    }
    return dg.Output(
        record,
        metadata={
            "champion_version": dg.MetadataValue.text(str(champion)),
            "previous_champion": dg.MetadataValue.text(str(previous or "none")),
            "promoted": chosen is not None,
            "reason": dg.MetadataValue.text(reason),
            "candidates": markdown_table(
                [{"family": r["family"], "version": r["version"], **r["overall"]} for r in reports],
                ["family", "version", "roc_auc", "pr_auc", "f1", "recall", "brier"],
            ),
            **({"evaluation_report": dg.MetadataValue.url(chosen["report_uri"]),
                "training_batches": dg.MetadataValue.json(chosen["training_batches"])}
               if chosen else {}),
        },
    )
