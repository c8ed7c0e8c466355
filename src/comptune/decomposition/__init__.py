"""comptune.decomposition: VPD/SPD parameter decomposition of a model's linear weights."""

from .._lazy import lazy_exports

__all__ = ["CIConfig", "CausalImportance", "DecomposeConfig", "Decomposition", "GlobalTransformerCI", "LayerwiseMLPCI", "LinearComponents", "SharedMLPCI", "VectorMLPCI", "decompose", "format_component_key", "format_report", "lower_leaky_hard_sigmoid", "parse_component_key", "quality_report", "upper_leaky_hard_sigmoid"]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "CIConfig": ".ci",
    "CausalImportance": ".decomposed",
    "DecomposeConfig": ".train",
    "Decomposition": ".decomposed",
    "GlobalTransformerCI": ".ci",
    "LayerwiseMLPCI": ".ci",
    "LinearComponents": ".components",
    "SharedMLPCI": ".ci",
    "VectorMLPCI": ".ci",
    "decompose": ".train",
    "format_component_key": ".components",
    "format_report": ".report",
    "lower_leaky_hard_sigmoid": ".sigmoids",
    "parse_component_key": ".components",
    "quality_report": ".report",
    "upper_leaky_hard_sigmoid": ".sigmoids",
})
