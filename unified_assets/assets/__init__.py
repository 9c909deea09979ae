"""The asset graph, one module per lifecycle group.

Two Dagster features the graph relies on knowingly are marked preview/beta: partitioned
asset checks (per-batch quality checks) and multi-run backfill policies (range ingestion).
Their notices are raised when the asset modules are imported, in every process that loads
the code location (a code server logs them on stdout), and would bury the lines people
read, so they are silenced here, before the first asset module runs.
"""

import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
