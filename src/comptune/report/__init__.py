"""The study's report: figures (PNG + SVG), tables and a markdown summary from a sweep's results."""

from .._lazy import lazy_exports

__all__ = ["SweepResults", "load_results", "make_report", "min_budget_table", "rollout_picks"]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "SweepResults": ".summary",
    "load_results": ".summary",
    "make_report": ".summary",
    "min_budget_table": ".summary",
    "rollout_picks": ".summary",
})
