"""comptune.decomposition: VPD/SPD parameter decomposition of a model's linear weights.

The method is stated and numbered in docs/SPEC.md. Reading order, following the data:
- `components.py`  one weight's rank-1 subcomponents V [d_in, C], U [C, d_out] and keys (§1)
- `bases.py`       starting bases that sum to W (neurons, SVD)
- `sigmoids.py`, `ci.py`  causal importance: logits per subcomponent and their squashing (§2)
- `decomposed.py`  `Decomposition`: hooks that run the target with masked subcomponents (§1, §3)
- `losses.py`      masks, routing, the adversary and the four losses (§3–§5)
- `train.py`       the training step and schedule (§4–§5); `run_state.py` its files, checkpoints, resume, DDP
- `report.py`      the quality figures and the task bar (§6)
- `goodfire.py`    importing runs made by Goodfire's reference code (§8)
"""

from .._lazy import lazy_exports

__all__ = [
    "CIConfig", "CausalImportance", "DecomposeConfig", "Decomposition", "GlobalTransformerCI",
    "LayerwiseMLPCI", "LinearComponents", "SharedMLPCI", "VectorMLPCI", "decompose", "format_component_key",
    "format_report", "lower_leaky_hard_sigmoid", "parse_component_key", "quality_report",
    "upper_leaky_hard_sigmoid",
]

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
