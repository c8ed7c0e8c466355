"""comptune.decomposition: VPD/SPD parameter decomposition of a model's linear weights."""

from .ci import CIConfig, GlobalTransformerCI, LayerwiseMLPCI, SharedMLPCI, VectorMLPCI
from .components import LinearComponents, format_component_key, parse_component_key
from .decomposed import CausalImportance, Decomposition
from .report import format_report, quality_report
from .sigmoids import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
from .train import DecomposeConfig, decompose

__all__ = [
    "CausalImportance",
    "CIConfig",
    "decompose",
    "DecomposeConfig",
    "Decomposition",
    "format_component_key",
    "format_report",
    "GlobalTransformerCI",
    "LayerwiseMLPCI",
    "LinearComponents",
    "SharedMLPCI",
    "VectorMLPCI",
    "lower_leaky_hard_sigmoid",
    "parse_component_key",
    "quality_report",
    "upper_leaky_hard_sigmoid",
]
