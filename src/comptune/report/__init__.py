"""The study's report: figures (PNG + SVG), tables and a markdown summary from a sweep's results."""

from .summary import SweepResults, load_results, make_report, min_budget_table, rollout_picks

__all__ = ["SweepResults", "load_results", "make_report", "min_budget_table", "rollout_picks"]
