"""comptune.tuning: fine-tune by scaling parameter subcomponents, and the baselines it is compared to.

- `apply_component_scale` / `load_adapter`: the ComponentScale adapter (one scalar per subcomponent).
- `build_method`: component_scale, svd_scale, neuron_scale (peft IA3), lora, lora_local (peft LoRA).
- `tune`: train any method on −min(CE_forget, ln|V|) + λ·KL(orig ‖ edited)[retain] to a plateau.
"""

from .._lazy import lazy_exports

__all__ = [
    "ComponentScaleConfig", "ComponentScaleLayer", "ComponentScaleModel", "Components", "LossTerms",
    "NonFiniteLossError", "SIGN_CONVENTION", "Selection", "TunableModel", "TuneConfig", "TuneResult",
    "apply_component_scale", "build_method", "capped_forget_term", "forget_sequences", "linear_module_paths",
    "load_adapter", "module_keys", "next_token_ce", "retain_kl", "svd_components", "take_budget", "tune",
    "tuning_loss",
]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "ComponentScaleConfig": ".component_scale",
    "ComponentScaleLayer": ".component_scale",
    "ComponentScaleModel": ".component_scale",
    "Components": "..decomposition.components",
    "LossTerms": ".objective",
    "NonFiniteLossError": ".train",
    "SIGN_CONVENTION": ".component_scale",
    "Selection": ".config",
    "TunableModel": ".methods",
    "TuneConfig": ".config",
    "TuneResult": ".train",
    "apply_component_scale": ".component_scale",
    "build_method": ".methods",
    "capped_forget_term": ".objective",
    "forget_sequences": ".train",
    "linear_module_paths": "..decomposition.bases",
    "load_adapter": ".component_scale",
    "module_keys": "..decomposition.components",
    "next_token_ce": ".objective",
    "retain_kl": ".objective",
    "svd_components": "..decomposition.bases",
    "take_budget": ".train",
    "tune": ".train",
    "tuning_loss": ".objective",
})
