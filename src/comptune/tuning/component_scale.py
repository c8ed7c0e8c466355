"""ComponentScale: fine-tune a model by learning one scalar per chosen rank-1 subcomponent.

A decomposed weight is W = Σ_c u_c v_cᵀ + Δ (V = [v_c] is [d_in, C], U = [u_cᵀ] is [C, d_out]).
ComponentScale gives each selected subcomponent c a learned scalar s_c (init 1) and nothing else:

    edited layer:  y = W x + Σ_{c∈S} (s_c − 1) u_c (v_cᵀ x)

computed as a rank-|S| add-on ((x @ V_S) * (s − 1)) @ U_S beside the frozen layer, never as the
full decomposed forward. The edited weight W' = W + Σ (s_c − 1) u_c v_cᵀ merges exactly into W
and exports exactly as a PEFT LoRA of rank |S| per module.

The structure follows peft's tuners: a layer wrapping the frozen `base_layer` (nn.Linear or HF
Conv1D) with `get_delta_weight` / `merge` / `unmerge`, and a model wrapper with
`disable_adapter()`, `merge_and_unload()` and `unload()`. The wrapper edits the model in place.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, cast

import torch
import torch.nn as nn
from pydantic import Field

from .._io import load_safetensors, save_safetensors_atomic, versions, write_json_atomic
from ..config import StrictConfig
from ..decomposition.components import (
    Components,
    ComponentSource,
    format_component_key,
    linear_layout_weight,
    module_kind,
    source_components,
    source_module_paths,
    validate_keys,
)
from ..decomposition.decomposed import Decomposition
from ..errors import UserError
from ..model.fingerprint import check_target, weights_fingerprint

SIGN_CONVENTION = (
    "s_c multiplies subcomponent c's contribution: the edited layer computes "
    "W x + sum_c (s_c - 1) u_c (v_c^T x), i.e. u_c v_c^T x is replaced by s_c u_c v_c^T x. "
    "s = 1 leaves the model unchanged, s > 1 amplifies, 0 < s < 1 suppresses, s = 0 ablates, "
    "s < 0 inverts the subcomponent."
)
ADAPTER_FORMAT = "comptune-component-scale"
ADAPTER_FORMAT_VERSION = 2  # 2: the keys live in `config` (1 held them beside it; still read)
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


def components_fingerprint(source: ComponentSource, paths: list[str]) -> str:
    """sha256 over the full V and U of the given modules: identifies the decomposition a key belongs to."""
    h = hashlib.sha256()
    for path in sorted(paths):
        comp = source_components(source, path)
        for t in comp:
            t = t.float().contiguous().cpu()
            h.update(path.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class ComponentScaleConfig(StrictConfig):
    """What `apply_component_scale` wraps, as a peft config says what `get_peft_model` wraps."""

    # the scaled subcomponents, `<module path>:<index>` (`format_component_key`), one scalar each
    keys: list[str] = Field(min_length=1)
    # CI-gated scaling: s_c applies only at positions where subcomponent c's causal importance
    # (g_lower, from the decomposition on the same input) exceeds this; None = everywhere.
    ci_threshold: float | None = Field(default=None, ge=0.0, lt=1.0)


def _layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or HF Conv1D (which stores its weight transposed)."""
    d_out, d_in = linear_layout_weight(layer).shape
    return d_in, d_out


class ComponentScaleLayer(nn.Module):
    """A frozen Linear/Conv1D plus scalars on k of its subcomponents: y = base(x) + ((x V_S) ⊙ (s − 1)) U_S."""

    V: torch.Tensor  # buffers, declared for the type checker
    U: torch.Tensor

    def __init__(self, base_layer: nn.Module, V: torch.Tensor, U: torch.Tensor, indices: list[int]):
        super().__init__()
        d_in, d_out = _layer_dims(base_layer)
        if V.shape != (d_in, len(indices)) or U.shape != (len(indices), d_out):
            raise UserError(
                f"components do not fit the layer: V {tuple(V.shape)} and U {tuple(U.shape)} for a layer with "
                f"d_in={d_in}, d_out={d_out} and {len(indices)} selected subcomponents"
            )
        self.base_layer = base_layer
        self.kind = module_kind(base_layer)
        self.indices = list(indices)
        w = self._weight()
        self.register_buffer("V", V.detach().to(device=w.device, dtype=w.dtype).clone())  # [d_in, k] read vectors
        self.register_buffer("U", U.detach().to(device=w.device, dtype=w.dtype).clone())  # [k, d_out] write vectors
        self.scale = nn.Parameter(torch.ones(len(indices), device=w.device, dtype=w.dtype))  # [k], s_c
        self.gate: torch.Tensor | None = None  # [B, T, k] in {0, 1}: where the scale applies (CI-gated)
        self.disabled = False
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # frozen W x (+ bias)
        if self.disabled or self.merged:
            return y
        a = x @ self.V  # [B, T, k] inner activations v_cᵀ x of the selected subcomponents
        if self.gate is not None:
            if self.gate.shape != a.shape:
                raise UserError(f"CI gate has shape {tuple(self.gate.shape)} but the layer input needs {tuple(a.shape)}: compute gates on the same input_ids")
            a = a * self.gate
        return y + (a * (self.scale - 1)) @ self.U  # rank-k add-on Σ (s_c − 1) u_c (v_cᵀ x)

    def get_delta_weight(self) -> torch.Tensor:
        """W' − W = Σ (s_c − 1) u_c v_cᵀ in the base layer's weight layout."""
        delta = (self.V.float() * (self.scale.float() - 1)) @ self.U.float()  # [d_in, d_out]
        return (delta.T if self.kind == "linear" else delta).to(self._weight().dtype)

    def _weight(self) -> torch.Tensor:
        """The base layer's weight in its own layout ([d_out, d_in] Linear, [d_in, d_out] Conv1D)."""
        return cast(torch.Tensor, self.base_layer.weight)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        self._weight().add_(self.get_delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self._weight().sub_(self.get_delta_weight())
        self.merged = False

    def extra_repr(self) -> str:
        return f"kind={self.kind}, subcomponents={self.indices}"


class ComponentScaleModel(nn.Module):
    """A model with ComponentScale layers swapped in (in place); forward is the model's forward."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, ComponentScaleLayer],
        config: ComponentScaleConfig,
        provenance: dict,
        decomposition=None,
        requires_grad_before: dict[str, bool] | None = None,
    ):
        super().__init__()
        self.model = model
        self.scale_config = config  # the adapter's; `config` is the wrapped model's, as on a PeftModel
        self.provenance = provenance  # decomposition and target fingerprints, written with the adapter
        # needed only to compute CI for gated scaling; kept outside nn.Module registration so the
        # decomposition's parameters never show up among the adapter's
        object.__setattr__(self, "decomposition", decomposition)
        self._layers = layers  # path -> layer (also reachable inside self.model)
        self._requires_grad_before = requires_grad_before or {}
        self._auto_gates = False
        self._hooks = []
        if config.ci_threshold is not None:
            self._hooks.append(model.register_forward_pre_hook(self._gate_pre_hook, with_kwargs=True))
            self._hooks.append(model.register_forward_hook(self._gate_post_hook, always_call=True))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        # everything else is the wrapped model's (`config`, `generate`, `get_output_embeddings` …):
        # the edited model answers like the model it wraps, as peft's PeftModel does
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not yet set (during __init__)
                raise
            return getattr(self.model, name)

    @property
    def edited_modules(self) -> list[str]:
        """Paths of the modules that carry a scaled subcomponent."""
        return list(self._layers)

    # ----- the learned scalars
    @property
    def keys(self) -> list[str]:
        return self.scale_config.keys

    def scale_parameters(self) -> list[nn.Parameter]:
        return [layer.scale for layer in self._layers.values()]

    def scales(self) -> dict[str, float]:
        """Current s_c per key, in the order the keys were given."""
        values = {format_component_key(path, i): float(s) for path, layer in self._layers.items() for i, s in zip(layer.indices, layer.scale.detach().tolist())}
        return {k: values[k] for k in self.keys}

    def set_scales(self, scales: Mapping[str, float]) -> None:
        unknown = sorted(set(scales) - set(self.keys))
        if unknown:
            raise UserError(f"keys {unknown} are not scaled by this adapter; it scales {self.keys}")
        with torch.no_grad():
            for path, layer in self._layers.items():
                for j, i in enumerate(layer.indices):
                    key = format_component_key(path, i)
                    if key in scales:
                        layer.scale[j] = scales[key]

    def l1_penalty(self) -> torch.Tensor:
        """Σ_c |s_c − 1| over all scaled subcomponents (the objective multiplies by its L1 coefficient)."""
        return torch.stack([(layer.scale - 1).abs().sum() for layer in self._layers.values()]).sum()

    # ----- switching the edit off (orig logits, CI) — same name as peft's PeftModel
    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        if any(layer.merged for layer in self._layers.values()):
            raise RuntimeError("the adapter is merged into the weights; unmerge() before disabling it")
        for layer in self._layers.values():
            layer.disabled = True
        try:
            yield
        finally:
            for layer in self._layers.values():
                layer.disabled = False

    # ----- CI gating: CI is computed once per batch, from the decomposition on the same input
    def gates_from_ci(self, ci: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per edited module, [B, T, k] 0/1 gates from causal importances {path: [B, T, C]}."""
        if self.scale_config.ci_threshold is None:
            raise UserError("this adapter is not CI-gated (scale_config.ci_threshold is None)")
        missing = [p for p in self._layers if p not in ci]
        if missing:
            raise UserError(f"causal importances are missing for edited modules {missing}")
        return {path: (ci[path][..., layer.indices] > self.scale_config.ci_threshold).to(layer.V.dtype) for path, layer in self._layers.items()}

    @torch.no_grad()
    def compute_gates(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """One CI evaluation of the decomposition on `input_ids`, with the edit switched off so the
        CI always sees the clean model (the decomposition's target may be this very model)."""
        if self.decomposition is None:
            raise UserError(
                "CI-gated scaling needs the decomposition to compute causal importances; pass "
                "decomposition= to apply_component_scale/load_adapter, or set gates with `with model.gated(...)`"
            )
        with self.disable_adapter():
            ci = self.decomposition.causal_importance(input_ids).lower
        return self.gates_from_ci(ci)

    @contextmanager
    def capturing_ci_inputs(self) -> Iterator[dict[str, torch.Tensor]]:
        """Around a forward of the unedited model (`disable_adapter()`): yields a dict that then holds
        the decomposed modules' inputs, from which `gates_from_inputs` gives this batch's gates
        without the decomposition's own clean forward."""
        if self.decomposition is None:
            raise UserError("capturing CI inputs needs the decomposition (pass decomposition= to apply_component_scale/load_adapter)")
        acts: dict[str, torch.Tensor] = {}
        handles = [self.model.get_submodule(p).register_forward_pre_hook(lambda mod, args, p=p: acts.__setitem__(p, args[0].detach()))
                   for p in self.decomposition.module_paths]
        try:
            yield acts
        finally:
            for h in handles:
                h.remove()

    def gates_from_inputs(self, pre_weight_acts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gates from the decomposed modules' inputs captured on a clean forward (`capturing_ci_inputs`)."""
        with torch.no_grad():
            return self.gates_from_ci(self.decomposition.lower_ci(dict(pre_weight_acts)))

    @contextmanager
    def gated(self, gates: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Run forwards with precomputed gates (e.g. from CI you already have for this batch)."""
        for path, layer in self._layers.items():
            layer.gate = gates[path]
        try:
            yield
        finally:
            for layer in self._layers.values():
                layer.gate = None

    def _gate_pre_hook(self, module, args, kwargs):
        # Called on every forward of the wrapped model (also from generate): computes CI for this
        # batch unless gates were set explicitly or the edit is switched off.
        first = next(iter(self._layers.values()))
        if first.disabled or first.merged or first.gate is not None:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise UserError("CI-gated scaling needs input_ids (the decomposition computes CI from tokens)")
        gates = self.compute_gates(input_ids)
        for path, layer in self._layers.items():
            layer.gate = gates[path]
        self._auto_gates = True
        return None

    def _gate_post_hook(self, module, args, output):
        if self._auto_gates:
            for layer in self._layers.values():
                layer.gate = None
            self._auto_gates = False
        return None

    # ----- merging and removal
    def merge_and_unload(self) -> nn.Module:
        """The plain model with W' = W + Σ (s_c − 1) u_c v_cᵀ in its weights, adapter removed."""
        if self.scale_config.ci_threshold is not None:
            raise UserError("a CI-gated edit depends on the input and cannot be merged into the weights")
        for layer in self._layers.values():
            layer.merge()
        return self.unload()

    def unload(self) -> nn.Module:
        """Remove the adapter without merging: the original model back, as it was before wrapping."""
        for path, layer in self._layers.items():
            parent_path, _, name = path.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            setattr(parent, name, layer.base_layer)
        for hook in self._hooks:
            hook.remove()
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad_before.get(name, p.requires_grad))
        self._layers, self._hooks = {}, []
        return self.model

    # ----- files
    def save_adapter(self, out_dir: str | Path) -> Path:
        """`adapter_model.safetensors` (scales and the selected V columns / U rows: self-contained)
        + `adapter_config.json` (config with the keys, sign convention, fingerprints, versions).
        The config is written last, so a directory without it is an interrupted save."""
        out_dir = Path(out_dir)
        tensors = {}
        modules = {}
        for path, layer in self._layers.items():
            tensors[f"{path}.scale"] = layer.scale.detach()
            tensors[f"{path}.V"] = layer.V
            tensors[f"{path}.U"] = layer.U
            d_in, d_out = _layer_dims(layer.base_layer)
            modules[path] = {"indices": layer.indices, "layer_type": layer.kind, "d_in": d_in, "d_out": d_out}
        save_safetensors_atomic(tensors, out_dir / ADAPTER_WEIGHTS_NAME, metadata={"format": ADAPTER_FORMAT})
        write_json_atomic(out_dir / ADAPTER_CONFIG_NAME, {
            "format": ADAPTER_FORMAT,
            "format_version": ADAPTER_FORMAT_VERSION,
            "config": self.scale_config.model_dump(mode="json"),
            "sign_convention": SIGN_CONVENTION,
            "scales": self.scales(),
            "modules": modules,
            **self.provenance,
            "versions": versions(),
        })
        return out_dir

    def export_peft_lora(self, out_dir: str | Path) -> Path:
        """Write an exact PEFT LoRA: per module rank r = k, lora_A = rows v_cᵀ, lora_B = columns
        (s_c − 1) u_c, lora_alpha = r so peft's scaling alpha/r is 1. Loads with
        `PeftModel.from_pretrained(base, out_dir)` and gives the adapter's logits."""
        from peft import LoraConfig

        if self.scale_config.ci_threshold is not None:
            raise UserError("a CI-gated edit depends on the input and has no exact LoRA form")
        out_dir = Path(out_dir)
        ranks = {path: len(layer.indices) for path, layer in self._layers.items()}
        r = max(ranks.values())
        # peft matches pattern keys as regexes against module names: escape the dots
        pattern = {_exact_module_regex(path): k for path, k in ranks.items() if k != r}
        lora = LoraConfig(
            r=r,
            lora_alpha=r,
            rank_pattern=pattern,
            alpha_pattern=dict(pattern),
            target_modules=sorted(self._layers),
            fan_in_fan_out=any(layer.kind == "conv1d" for layer in self._layers.values()),
            lora_dropout=0.0,
            bias="none",
            base_model_name_or_path=getattr(getattr(self.model, "config", None), "_name_or_path", None) or None,
        )
        tensors = {}
        for path, layer in self._layers.items():
            tensors[f"base_model.model.{path}.lora_A.weight"] = layer.V.T.contiguous()  # [r, d_in]
            tensors[f"base_model.model.{path}.lora_B.weight"] = (layer.U * (layer.scale.detach() - 1)[:, None]).T.contiguous()  # [d_out, r]
        save_safetensors_atomic(tensors, out_dir / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        lora.save_pretrained(str(out_dir))
        return out_dir


def _exact_module_regex(path: str) -> str:
    return path.replace(".", r"\.")


def _target_weight_names(source: ComponentSource) -> list[str]:
    return [f"{path}.weight" for path in source_module_paths(source)]


def _check_source_matches_model(model: nn.Module, source: ComponentSource, names: list[str]) -> None:
    """A Decomposition carries its target model: the model being edited must have the same weights."""
    target = getattr(source, "target", None)
    if target is None or target is model:
        return
    ours, theirs = weights_fingerprint(model, names), weights_fingerprint(target, names)
    if ours != theirs:
        raise UserError(
            f"the decomposition was made for a different model (weights fingerprint {theirs} over the decomposed "
            f"matrices) than the one being edited ({ours}); load the model the decomposition belongs to"
        )


def _wrap(model: nn.Module, selected: dict[str, Components], indices: dict[str, list[int]]) -> tuple[dict[str, ComponentScaleLayer], dict[str, bool]]:
    requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    layers = {}
    for path, (V, U) in selected.items():
        base = model.get_submodule(path)
        if isinstance(base, ComponentScaleLayer):
            raise UserError(f"module {path} already carries a ComponentScale adapter; unload() it first")
        layer = ComponentScaleLayer(base, V, U, indices[path])
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, name, layer)
        layers[path] = layer
    return layers, requires_grad_before


def apply_component_scale(
    model: nn.Module,
    components: ComponentSource,
    config: ComponentScaleConfig,
    *,
    decomposition_dir: str | Path | None = None,
) -> ComponentScaleModel:
    """Wrap `model` in place with a scalar s_c = 1 on each of `config.keys`' subcomponents; base
    weights frozen (as `peft.get_peft_model(model, config)`).

    `components` is a Decomposition, or a mapping path -> (V [d_in, C], U [C, d_out]) such as
    `svd_components(...)`. `decomposition_dir` (where the decomposition was loaded from) is
    recorded in the saved adapter.
    """
    by_module = validate_keys(components, config.keys)
    names = _target_weight_names(components)
    _check_source_matches_model(model, components, names)
    provenance = {
        "decomposition": {
            "path": str(decomposition_dir) if decomposition_dir is not None else None,
            "components_fingerprint": components_fingerprint(components, list(by_module)),
        },
        "target": {"fingerprint": weights_fingerprint(model, names), "weight_names": names},
    }
    selected = {}
    for path, idx in by_module.items():
        V, U = source_components(components, path)
        selected[path] = Components(V[:, idx], U[idx, :])
    layers, before = _wrap(model, selected, by_module)
    decomposition = components if isinstance(components, Decomposition) else None  # plain V/U have no CI function
    return ComponentScaleModel(model, layers, config, provenance, decomposition, before)


def load_adapter(adapter_dir: str | Path, model: nn.Module, decomposition: ComponentSource | None = None) -> ComponentScaleModel:
    """Re-apply a saved ComponentScale adapter to `model` (in place).

    Checks that `model` is the model the adapter was trained on (weights fingerprint); with
    `decomposition`, also that the adapter's keys belong to it (needed for CI-gated adapters).
    """
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / ADAPTER_CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} does not exist: {adapter_dir} is not a (completely saved) ComponentScale adapter")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != ADAPTER_FORMAT:
        raise UserError(f"{cfg_path} is not a ComponentScale adapter (format {meta.get('format')!r}); a PEFT adapter loads with PeftModel.from_pretrained")
    if meta["format_version"] > ADAPTER_FORMAT_VERSION:
        raise UserError(f"{cfg_path} has format version {meta['format_version']}; this comptune reads up to {ADAPTER_FORMAT_VERSION}: upgrade comptune")

    check_target(model, meta["target"], f"adapter {adapter_dir}", f" (decomposition {meta['decomposition']['path']})")

    config = ComponentScaleConfig.model_validate(meta["config"] if meta["format_version"] >= 2 else {**meta["config"], "keys": meta["keys"]})
    keys = config.keys
    if decomposition is not None:
        by_module = validate_keys(decomposition, keys)
        theirs = components_fingerprint(decomposition, list(by_module))
        if theirs != meta["decomposition"]["components_fingerprint"]:
            raise UserError(
                f"the adapter's keys belong to decomposition {meta['decomposition']['components_fingerprint']} "
                f"(saved from {meta['decomposition']['path']}), not to the given one ({theirs}): "
                "same module names, different subcomponents"
            )

    tensors = load_safetensors(adapter_dir / ADAPTER_WEIGHTS_NAME)
    selected, indices, scales = {}, {}, {}
    for path, info in meta["modules"].items():
        try:
            V, U, s = tensors[f"{path}.V"], tensors[f"{path}.U"], tensors[f"{path}.scale"]
        except KeyError as e:
            raise UserError(f"{adapter_dir / ADAPTER_WEIGHTS_NAME} lacks tensor {e.args[0]}: the adapter files are inconsistent") from e
        selected[path] = Components(V, U)
        indices[path] = info["indices"]
        scales.update({format_component_key(path, i): float(v) for i, v in zip(info["indices"], s.tolist())})
    if sorted(scales) != sorted(keys):
        raise UserError(f"{cfg_path} keys do not match the saved tensors: the adapter files are inconsistent")

    layers, before = _wrap(model, selected, indices)
    provenance = {"decomposition": meta["decomposition"], "target": meta["target"]}
    wrapped = ComponentScaleModel(model, layers, config, provenance, decomposition, before)
    wrapped.set_scales(scales)
    return wrapped
