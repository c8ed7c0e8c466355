"""comptune.decomposition: VPD/SPD parameter decomposition of a model's linear weights."""

from .ci import CIConfig, GlobalTransformerCI, LayerwiseMLPCI
from .components import LinearComponents, format_component_key, parse_component_key
from .decomposed import CausalImportance, Decomposition
from .sigmoids import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid

__all__ = [
    "CIConfig",
    "CausalImportance",
    "Decomposition",
    "GlobalTransformerCI",
    "LayerwiseMLPCI",
    "LinearComponents",
    "format_component_key",
    "lower_leaky_hard_sigmoid",
    "parse_component_key",
    "upper_leaky_hard_sigmoid",
]
