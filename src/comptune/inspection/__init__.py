"""Inspect subcomponents to choose what to edit: where they fire, what they read and write."""

from .._lazy import lazy_exports

__all__ = ["ComponentStats", "UnitScores", "component_stats", "inspect_components", "rank_by_difference", "rank_by_specificity", "write_vector_effects"]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "ComponentStats": ".stats",
    "UnitScores": ".stats",
    "component_stats": ".stats",
    "inspect_components": ".examples",
    "rank_by_difference": ".stats",
    "rank_by_specificity": ".stats",
    "write_vector_effects": ".examples",
})
