"""comptune.tuning: fine-tune by scaling parameter subcomponents, and the baselines it is compared to.

- `apply_component_scale` / `load_adapter`: the ComponentScale adapter (one scalar per subcomponent).
- `build_method`: component_scale, svd_scale, neuron_scale (peft IA3), lora, lora_local (peft LoRA).
- `tune`: train any method on −min(CE_forget, ln|V|) + λ·KL(orig ‖ edited)[retain] to a plateau.
"""

from ..decomposition.bases import linear_module_paths, svd_components
from ..decomposition.components import Components, module_keys
from .component_scale import (
    SIGN_CONVENTION,
    ComponentScaleConfig,
    ComponentScaleLayer,
    ComponentScaleModel,
    apply_component_scale,
    load_adapter,
)
from .config import Selection, TuneConfig
from .methods import TunableModel, build_method
from .objective import LossTerms, capped_forget_term, next_token_ce, retain_kl, tuning_loss
from .train import NonFiniteLossError, TuneResult, forget_sequences, take_budget, tune

__all__ = [
    "SIGN_CONVENTION", "ComponentScaleConfig", "ComponentScaleLayer", "ComponentScaleModel", "Components",
    "apply_component_scale", "load_adapter", "module_keys",
    "Selection", "TuneConfig", "TunableModel", "build_method", "linear_module_paths",
    "LossTerms", "capped_forget_term", "next_token_ce", "retain_kl", "tuning_loss",
    "svd_components", "NonFiniteLossError", "TuneResult", "forget_sequences", "take_budget", "tune",
]
