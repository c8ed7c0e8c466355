"""Every tuning method behind one factory, so the trainer treats them identically.

- component_scale: ComponentScale on the decomposition's subcomponents (single key, top-k, or all
  of some modules with an L1 penalty; optionally CI-gated).
- svd_scale: the same ComponentScale mechanism over the SVD of a matrix (W = Σ σ_i u_i v_iᵀ).
- neuron_scale: peft IA3 on an MLP down projection as a feed-forward module. IA3 computes
  y = W (l ⊙ h), i.e. W' = W + Σ_j (l_j − 1) W[:, j] e_jᵀ: exactly one scalar per hidden unit,
  the ComponentScale parameterisation in the neuron basis. peft has no per-unit mask, so a
  keyed selection masks the gradient of the other units (with Adam and no weight decay they
  stay exactly 1); a module selection trains all units, meant with an L1 penalty.
- lora: peft LoRA of rank r on every linear weight except the (un)embedding.
- lora_local: peft LoRA rank 1 on the single matrix holding the selected subcomponent(s).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, cast

import torch
import torch.nn as nn

from .._io import atomic_directory, write_json_atomic
from ..decomposition.bases import default_neuron_modules, linear_module_paths, svd_components
from ..decomposition.components import format_component_key, linear_layout_weight, module_keys, module_kind, parse_component_key
from ..errors import UserError
from ..model.fingerprint import tensors_fingerprint
from .component_scale import ComponentScaleConfig, ComponentScaleModel, apply_component_scale
from .config import TuneConfig

if TYPE_CHECKING:
    from peft import PeftModel

PEFT_TARGET_NAME = "comptune_target.json"  # beside a peft adapter: the weights it was trained on


@dataclass
class TunableModel:
    """What the trainer needs from any method.

    `model(input_ids=...)` returns an output with `.logits`; `model.disable_adapter()` is a context
    in which the model is the original (both ComponentScaleModel and peft's PeftModel have it)."""

    method: str
    model: ComponentScaleModel | PeftModel
    parameters: list[nn.Parameter]
    edited_modules: list[str]  # paths (in the unwrapped model) of the modules the edit changes
    scalars: Callable[[], dict[str, float]] = field(default=dict)  # learned scalar per key ({} for LoRA)
    l1_penalty: Callable[[], torch.Tensor] | None = None  # Σ|s − 1| for the scalar methods

    @property
    def ci_gated_model(self) -> ComponentScaleModel | None:
        """The model if the edit applies only where the decomposition's CI exceeds a threshold (its
        gates, `model.compute_gates` / `model.gated`, are then computed once per batch by the trainer)."""
        if isinstance(self.model, ComponentScaleModel) and self.model.scale_config.ci_threshold is not None:
            return self.model
        return None

    def _base_fingerprint(self, peft_model: PeftModel) -> dict:
        """Fingerprint of the base weights under the edited modules (peft keeps them as `base_layer`)."""
        base = peft_model.get_base_model()
        weights = {f"{p}.weight": cast(torch.Tensor, getattr(base.get_submodule(p), "base_layer", base.get_submodule(p)).weight) for p in self.edited_modules}
        return {"fingerprint": tensors_fingerprint(weights), "weight_names": sorted(weights)}

    def save(self, out_dir: str | Path) -> Path:
        """The trained edit as an adapter folder: ComponentScale's `save_adapter`, or peft's
        `save_pretrained` (LoRA, IA3; adapter weights only). Written beside and renamed, so the
        folder is either complete or absent."""
        out_dir = Path(out_dir)
        with atomic_directory(out_dir) as tmp:
            if isinstance(self.model, ComponentScaleModel):
                self.model.save_adapter(tmp)
            else:
                self.model.save_pretrained(str(tmp))
                write_json_atomic(tmp / PEFT_TARGET_NAME, {"target": self._base_fingerprint(self.model)})
        return out_dir


# The registry: method name -> builder(model, selection, config, decomposition, decomposition_dir).
# A builder wraps `model` in place (base weights frozen) and returns the TunableModel the trainer
# uses; every registered method passes the same contract tests (tests/test_methods_contract.py).
MethodBuilder = Callable[..., "TunableModel"]
METHODS: dict[str, MethodBuilder] = {}


def register_method(name: str) -> Callable[[MethodBuilder], MethodBuilder]:
    def register(builder: MethodBuilder) -> MethodBuilder:
        METHODS[name] = builder
        return builder

    return register


def build_method(name: str, model: nn.Module, decomposition, selection, config: TuneConfig, *, decomposition_dir=None) -> TunableModel:
    """Wrap `model` (in place, base weights frozen) with the adapter of method `name`.

    `selection` is a `Selection`; `decomposition` is needed for component_scale only
    (`decomposition_dir`, where it was loaded from, is recorded in the saved adapter).
    """
    try:
        builder = METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
    return builder(model, selection, config, decomposition, decomposition_dir)


@register_method("component_scale")
def _component_scale(model, selection, config, decomposition, decomposition_dir) -> TunableModel:
    if decomposition is None:
        raise UserError("component_scale needs a decomposition")
    keys = selection.keys or module_keys(decomposition, selection.modules)
    cs_config = ComponentScaleConfig(keys=keys, ci_threshold=config.ci_threshold)
    return _scale_tunable("component_scale", apply_component_scale(model, decomposition, cs_config, decomposition_dir=decomposition_dir))


@register_method("svd_scale")
def _svd_scale(model, selection, config, decomposition, decomposition_dir) -> TunableModel:
    paths = selection.modules or list(dict.fromkeys(parse_component_key(k)[0] for k in selection.keys))
    _check_linear_modules(model, paths)
    basis = svd_components(model, paths)
    keys = selection.keys or module_keys(basis, paths)
    return _scale_tunable("svd_scale", apply_component_scale(model, basis, ComponentScaleConfig(keys=keys)))


@register_method("lora")
def _lora(model, selection, config, decomposition, decomposition_dir) -> TunableModel:
    return _peft_lora("lora", model, linear_module_paths(model), config.lora_rank, config)


@register_method("lora_local")
def _lora_local(model, selection, config, decomposition, decomposition_dir) -> TunableModel:
    targets = config.selected_modules()
    _check_linear_modules(model, targets)
    return _peft_lora("lora_local", model, targets, 1, config)


def _peft_lora(name: str, model: nn.Module, targets: list[str], rank: int, config: TuneConfig) -> TunableModel:
    from peft import LoraConfig

    lora = LoraConfig(
        r=rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft annotates int; alpha/r is a float scaling
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=any(module_kind(model.get_submodule(p)) == "conv1d" for p in targets),
    )
    return _peft_method(name, model, lora, targets)


def _scale_tunable(name: str, wrapped: ComponentScaleModel) -> TunableModel:
    return TunableModel(name, wrapped, wrapped.scale_parameters(), wrapped.edited_modules, wrapped.scales, wrapped.l1_penalty)


def _check_linear_modules(model: nn.Module, paths: list[str]) -> None:
    valid = linear_module_paths(model)
    for path in paths:
        if path not in valid:
            raise UserError(f"module {path!r} is not a linear weight of this model; valid: {', '.join(valid)}")


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Around peft wrapping or loading: peft asks transformers 5 models for a deprecated attribute
    (`is_gradient_checkpointing`) every time, a FutureWarning that is not the user's to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _peft_method(name: str, model: nn.Module, peft_config, targets: list[str]) -> TunableModel:
    from peft import get_peft_model

    with peft_quietly():
        peft_model = get_peft_model(model, peft_config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return TunableModel(name, peft_model, params, list(targets))


@register_method("neuron_scale")
def _neuron_scale(model, selection, config, decomposition, decomposition_dir) -> TunableModel:
    from peft import IA3Config

    units: dict[str, list[int] | None] = {path: None for path in selection.modules}  # None = every hidden unit
    for key in selection.keys:  # a selection has keys or modules, never both
        path, j = parse_component_key(key)
        units[path] = [*(units.get(path) or []), j]
    paths = list(units)
    mlp_outputs = default_neuron_modules(model)
    for path in paths:
        if path not in mlp_outputs:
            raise UserError(f"neuron_scale scales the hidden units an MLP output projection reads; {path!r} is not one "
                             f"(this model's: {', '.join(mlp_outputs)})")
    for path, js in units.items():
        d_hidden = linear_layout_weight(model.get_submodule(path)).shape[1]
        if js is not None and max(js) >= d_hidden:
            raise UserError(f"neuron key {path}:{max(js)} out of range: {path} reads {d_hidden} hidden units, valid 0..{d_hidden - 1}")
    fan_in_fan_out = any(module_kind(model.get_submodule(p)) == "conv1d" for p in paths)
    tunable = _peft_method("neuron_scale", model, IA3Config(target_modules=paths, feedforward_modules=paths, fan_in_fan_out=fan_in_fan_out), paths)
    peft_model = tunable.model
    base = peft_model.get_base_model()
    ia3 = {path: cast(nn.ParameterDict, base.get_submodule(path).ia3_l)["default"] for path in paths}  # [1, d_hidden]
    for path, js in units.items():
        if js is not None:
            mask = torch.zeros_like(ia3[path])
            mask[0, js] = 1.0
            ia3[path].register_hook(lambda g, m=mask: g * m)  # only the selected units learn

    def scalars() -> dict[str, float]:
        out = {}
        for path, js in units.items():
            values = ia3[path].detach()[0].tolist()
            out.update({format_component_key(path, j): values[j] for j in (js if js is not None else range(len(values)))})
        return out

    def l1_penalty() -> torch.Tensor:
        return torch.stack([(scale - 1).abs().sum() for scale in ia3.values()]).sum()

    tunable.scalars, tunable.l1_penalty = scalars, l1_penalty
    return tunable
