"""Inspect subcomponents to choose what to edit: where they fire, what they read and write."""

from .examples import inspect_components, write_vector_effects
from .stats import ComponentStats, UnitScores, component_stats, rank_by_difference, rank_by_specificity

__all__ = ["ComponentStats", "UnitScores", "component_stats", "inspect_components", "rank_by_difference", "rank_by_specificity", "write_vector_effects"]
