"""Domain services: decisions, the champion ledger, rollback and refusals.

One layer that the assets (`unified_assets.assets`), the sensors (`sensors/`) and the CLI
all call, so every path applies the same rules. Modules here define no assets and import
no asset module; they take resources (decision store, registry) and the policy as values.
"""
