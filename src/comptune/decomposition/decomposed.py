"""`Decomposition`: a frozen target model + rank-1 subcomponents of chosen weights + a CI function.

The target is never modified: forward hooks on the decomposed modules read their inputs (the
pre-weight activations the CI function needs) and, when masks are given, replace their outputs
by the masked component output y = Σ_c m_c a_c u_c + m_Δ Δx + b, computed from its coefficients
k_c = m_c − m_Δ as Σ_c k_c a_c u_c + m_Δ (Wx + b) + (1 − m_Δ) b. Positions a routing mask leaves
out have k = 0 and m_Δ = 1: the module's own output, exactly.

Saved as two files (format version 1; the Goodfire importer writes the same):
- `decomposition.safetensors`: `components.<module path>.V` [d_in, C], `components.<module path>.U`
  [C, d_out], `ci_fn.<state-dict key of the CI function>`;
- `decomposition.json`: format, target fingerprint/name/type, per-module C/d_in/d_out/kind, the
  CI function's type and sizes, training config (or null), provenance and library versions.
"""

from __future__ import annotations

import fnmatch
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, cast

import torch
import torch.nn as nn

from .._io import load_safetensors, save_safetensors_atomic, versions, write_json_atomic
from ..errors import UserError, UserKeyError
from ..model.fingerprint import weights_fingerprint
from ..model.outputs import logits_of
from .ci import CIConfig, build_ci_fn, dashed
from .components import SUPPORTED_MODULE_TYPES, LinearComponents, linear_layout_weight, module_kind
from .sigmoids import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid

FORMAT = "comptune-decomposition"
FORMAT_VERSION = 1
WEIGHTS_NAME = "decomposition.safetensors"
META_NAME = "decomposition.json"


@dataclass
class CausalImportance:
    lower: dict[str, torch.Tensor]  # path -> [B, T, C] in [0, 1]: builds masks, used for inspection
    upper: dict[str, torch.Tensor]  # path -> [B, T, C]: only for the minimality loss
    pre_weight_acts: dict[str, torch.Tensor]  # path -> [B, T, d_in], from the clean forward
    target_logits: torch.Tensor | None = None  # [B, T, V] of that same clean forward


@dataclass
class _HookState:
    capture: dict[str, torch.Tensor] | None = None
    # path -> (k = m − m_Δ [B, T, C], m_Δ [B, T, 1] or None for no Δ)
    coefficients: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)


class Decomposition(nn.Module):
    def __init__(self, target: nn.Module, components: dict[str, LinearComponents], ci_fn: nn.Module, ci_config: CIConfig):
        super().__init__()
        self.target = target.eval()
        for p in self.target.parameters():
            p.requires_grad_(False)  # the target is frozen; only components and CI train
        self.module_paths: list[str] = sorted(components)
        self.components = nn.ModuleDict({dashed(p): components[p] for p in self.module_paths})
        self.ci_fn = ci_fn
        self.ci_config = ci_config
        self.config: dict | None = None  # training config, recorded when saved
        self.provenance: dict = {}
        self._state: _HookState | None = None
        self._hooks = [self.target_module(p).register_forward_hook(self._make_hook(p)) for p in self.module_paths]

    # ----- construction -----------------------------------------------------------------------

    @classmethod
    def create(cls, target: nn.Module, patterns: dict[str, int], ci: CIConfig | None = None) -> "Decomposition":
        """Decompose every module whose name matches an fnmatch pattern, with that pattern's C.

        Initialisation draws from torch's global RNG: seed it first for a reproducible start.
        """
        ci = ci or CIConfig()
        C = resolve_patterns(target, patterns)
        modules = dict(target.named_modules())
        components = {p: LinearComponents.for_module(modules[p], c) for p, c in C.items()}
        d_in = {p: comp.d_in for p, comp in components.items()}
        ci_fn = build_ci_fn(ci, C, d_in).to(next(iter(components.values())).V.device)
        return cls(target, components, ci_fn, ci)

    # ----- access -------------------------------------------------------------------------------

    def get_components(self, path: str) -> LinearComponents:
        if path not in self.module_paths:
            raise UserKeyError(f"module {path!r} is not decomposed; decomposed modules: {', '.join(self.module_paths)}")
        return cast(LinearComponents, self.components[dashed(path)])

    def C(self, path: str) -> int:
        return self.get_components(path).C

    def target_module(self, path: str) -> nn.Module:
        return self.target.get_submodule(path)

    def target_weight(self, path: str) -> torch.Tensor:
        """W of the target in nn.Linear layout [d_out, d_in]."""
        return linear_layout_weight(self.target_module(path))

    def delta(self, path: str) -> torch.Tensor:
        """Δ = W − (V U)ᵀ in fp32 [d_out, d_in]; differentiable in U and V. Never under autocast: Δ is the
        small difference of two large matrices, which bf16 would lose."""
        comps = self.get_components(path)
        W = self.target_weight(path)
        with torch.autocast(W.device.type, enabled=False):
            return W.float() - comps.weight().float()

    def component_parameters(self) -> list[nn.Parameter]:
        return [p for path in self.module_paths for p in (self.get_components(path).V, self.get_components(path).U)]

    def remove_hooks(self) -> None:
        """Detach from the target (its modules keep no reference to this decomposition afterwards)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ----- forwards -----------------------------------------------------------------------------

    def _make_hook(self, path: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            state = self._state
            if state is None:
                return None
            x = args[0]  # [B, T, d_in]
            if state.capture is not None:
                state.capture[path] = x
            coefficient = state.coefficients.get(path)
            if coefficient is None:
                return None
            k, delta_mask = coefficient
            comps = cast(LinearComponents, self.components[dashed(path)])
            dtype = comps.V.dtype  # components compute in their own (fp32) precision
            bias: torch.Tensor | None = None if module.bias is None else module.bias.to(dtype)  # type: ignore[assignment]
            y = comps.masked_output(x.to(dtype), output.to(dtype), bias, k.to(dtype), None if delta_mask is None else delta_mask.to(dtype))
            return y.to(output.dtype)

        return hook

    @contextmanager
    def _hooks_set(self, state: _HookState) -> Iterator[_HookState]:
        if self._state is not None:
            raise RuntimeError("Decomposition forwards cannot be nested")
        self._state = state
        try:
            yield state
        finally:
            self._state = None

    def target_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of the unmodified target [B, T, V]."""
        return logits_of(self.target(input_ids))

    def masked_logits(
        self,
        input_ids: torch.Tensor,
        masks: dict[str, torch.Tensor],
        delta_masks: dict[str, torch.Tensor] | None = None,
        routing: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] with each module in `masks` replaced by its masked components.

        masks: path -> [B, T, C] (broadcastable); delta_masks: path -> [B, T] mask of the Δ channel
        (a module missing here, or None, excludes Δ, i.e. m_Δ = 0); routing: path -> bool [B, T],
        False positions use the original W (a module missing here is routed everywhere).
        Modules absent from `masks` run unchanged.
        """
        self._check_decomposed(set(masks) | set(delta_masks or {}) | set(routing or {}))
        coefficients = {}
        for p, m in masks.items():
            delta = (delta_masks or {}).get(p)
            delta = None if delta is None else delta.unsqueeze(-1)  # [B, T, 1]
            k = m if delta is None else m - delta
            route = (routing or {}).get(p)
            if route is not None:
                route = route.unsqueeze(-1)
                k = torch.where(route, k, 0.0)
                delta = torch.where(route, 0.0 if delta is None else delta, 1.0).to(k.dtype)
            coefficients[p] = (k, delta)
        return self.coefficient_logits(input_ids, coefficients)

    def coefficient_logits(self, input_ids: torch.Tensor, coefficients: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """Logits [B, T, V] with each module in `coefficients` computing Σ_c k_c a_c u_c + m_Δ (Wx + b)
        + (1 − m_Δ) b: path -> (k = m − m_Δ [B, T, C], m_Δ [B, T, 1] or None for no Δ), both
        broadcastable. `masked_logits` in the form the training step builds directly (losses.source_coefficients)."""
        self._check_decomposed(set(coefficients))
        with self._hooks_set(_HookState(coefficients=coefficients)):
            return logits_of(self.target(input_ids))

    def _check_decomposed(self, paths: set[str]) -> None:
        unknown = sorted(paths - set(self.module_paths))
        if unknown:
            raise UserKeyError(f"masks given for modules that are not decomposed: {unknown}; decomposed: {', '.join(self.module_paths)}")

    def causal_importance(self, input_ids: torch.Tensor) -> CausalImportance:
        """One clean target forward, then the CI function on its activations."""
        capture: dict[str, torch.Tensor] = {}
        with self._hooks_set(_HookState(capture=capture)):
            target_logits = logits_of(self.target(input_ids))
        acts = {p: capture[p] for p in self.module_paths}
        ci_logits = self.ci_logits(acts)
        alpha = self.ci_config.leaky_alpha
        return CausalImportance(
            lower={p: lower_leaky_hard_sigmoid(z, alpha) for p, z in ci_logits.items()},
            upper={p: upper_leaky_hard_sigmoid(z, alpha) for p, z in ci_logits.items()},
            pre_weight_acts=acts,
            target_logits=target_logits,
        )

    def lower_ci(self, pre_weight_acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The lower (masking) CI {path: [B, T, C]} from the decomposed modules' inputs of a clean
        forward the caller already ran: `causal_importance(ids).lower` without its own forward."""
        return {p: lower_leaky_hard_sigmoid(z, self.ci_config.leaky_alpha) for p, z in self.ci_logits(pre_weight_acts).items()}

    def ci_logits(self, pre_weight_acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pre-sigmoid CI logits {path: [B, T, C]} from the pre-weight activations."""
        dtype = self.get_components(self.module_paths[0]).V.dtype
        acts = {p: a.to(dtype) for p, a in pre_weight_acts.items()}
        if self.ci_fn.input_kind == "inner_acts":
            acts = {p: self.get_components(p).inner_acts(a) for p, a in acts.items()}
        return self.ci_fn(acts)

    def forward(self, input_ids: torch.Tensor) -> CausalImportance:
        return self.causal_importance(input_ids)

    # ----- save / load --------------------------------------------------------------------------

    def weight_names(self) -> list[str]:
        return [f"{p}.weight" for p in self.module_paths]

    def metadata(self) -> dict:
        config = getattr(self.target, "config", None)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "target": {
                "fingerprint": weights_fingerprint(self.target, self.weight_names()),
                "name_or_path": getattr(config, "_name_or_path", None) or getattr(self.target, "name_or_path", None) or None,
                "model_type": getattr(config, "model_type", None),
            },
            "modules": {p: {"C": c.C, "d_in": c.d_in, "d_out": c.d_out, "kind": c.kind} for p in self.module_paths for c in [self.get_components(p)]},
            "ci_fn": self.ci_config.sizes(),
            "config": self.config,
            "provenance": self.provenance,
            "versions": versions(),
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for p in self.module_paths:
            comps = self.get_components(p)
            tensors[f"components.{p}.V"] = comps.V.detach()
            tensors[f"components.{p}.U"] = comps.U.detach()
        tensors.update({f"ci_fn.{k}": v.detach() for k, v in self.ci_fn.state_dict().items()})
        return tensors

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(self.state_tensors(), out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
        write_json_atomic(out_dir / META_NAME, self.metadata())
        return out_dir

    @classmethod
    def load(cls, directory: str | Path, target: nn.Module) -> "Decomposition":
        """Load a saved decomposition onto `target`, which must be the model it was made for."""
        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a decomposition folder: {META_NAME} is missing")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} file (format={meta.get('format')!r}, "
                f"version={meta.get('format_version')!r}); Goodfire runs must first be converted with `comptune import-goodfire`"
            )
        modules = meta["modules"]
        _check_target_matches(target, modules, meta["target"]["fingerprint"], directory)
        tensors = load_safetensors(directory / WEIGHTS_NAME)
        ci_config = CIConfig.model_validate(meta["ci_fn"])
        device = next(target.parameters()).device
        components = {}
        for p, info in modules.items():
            comps = LinearComponents(info["d_in"], info["d_out"], info["C"], info["kind"])
            _load_params(comps, {"V": tensors.get(f"components.{p}.V"), "U": tensors.get(f"components.{p}.U")}, f"components.{p}.", directory)
            components[p] = comps.to(device)
        C = {p: info["C"] for p, info in modules.items()}
        ci_fn = build_ci_fn(ci_config, C, {p: info["d_in"] for p, info in modules.items()})
        _load_params(ci_fn, {k.removeprefix("ci_fn."): v for k, v in tensors.items() if k.startswith("ci_fn.")}, "ci_fn.", directory)
        known = {f"components.{p}.{n}" for p in modules for n in "VU"}
        unexpected = sorted(k for k in tensors if k not in known and not k.startswith("ci_fn."))
        if unexpected:
            raise UserError(f"{directory / WEIGHTS_NAME} holds tensors for modules not listed in {META_NAME}: {unexpected[:5]}")
        decomposition = cls(target, components, ci_fn.to(device), ci_config)
        decomposition.config = meta.get("config")
        decomposition.provenance = meta.get("provenance") or {}
        return decomposition


def resolve_patterns(target: nn.Module, patterns: dict[str, int]) -> dict[str, int]:
    """{fnmatch pattern: C} -> {module path: C}, with clear errors for every way this can go wrong."""
    if not patterns:
        raise UserError("no module patterns given; pass e.g. {'h.*.attn.*_proj': 256}")
    names = [n for n, _ in target.named_modules() if n]
    linear_names = [n for n, m in target.named_modules() if isinstance(m, SUPPORTED_MODULE_TYPES)]
    modules = dict(target.named_modules())
    C: dict[str, int] = {}
    matched_by: dict[str, str] = {}
    for pattern, c in patterns.items():
        if not isinstance(c, int) or isinstance(c, bool) or c <= 0:
            raise UserError(f"C for pattern {pattern!r} must be a positive integer, got {c!r}")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise UserError(
                f"pattern {pattern!r} matches no module of the target; its linear modules include: "
                f"{', '.join(linear_names[:12])}{' ...' if len(linear_names) > 12 else ''}"
            )
        for n in hits:
            module_kind(modules[n])  # raises for unsupported types, naming the type
            if n in matched_by:
                raise UserError(f"module {n!r} is matched by two patterns, {matched_by[n]!r} and {pattern!r}; make them disjoint")
            matched_by[n] = pattern
            C[n] = c
    return C


def _check_target_matches(target: nn.Module, modules: dict[str, dict], fingerprint: str, directory: Path) -> None:
    named = dict(target.named_modules())
    missing = sorted(p for p in modules if p not in named)
    if missing:
        raise UserError(
            f"decomposition {directory} names modules the target does not have: {missing[:5]}; "
            "load it onto the model it was made for"
        )
    for p, info in modules.items():
        module = named[p]
        kind = module_kind(module)
        d_out, d_in = linear_layout_weight(module).shape
        if (kind, d_in, d_out) != (info["kind"], info["d_in"], info["d_out"]):
            raise UserError(
                f"module {p} of the target is a {kind} with d_in={d_in}, d_out={d_out}, but decomposition {directory} "
                f"was made for a {info['kind']} with d_in={info['d_in']}, d_out={info['d_out']}; load it onto the model it was made for"
            )
    ours = weights_fingerprint(target, [f"{p}.weight" for p in modules])
    if ours != fingerprint:
        raise UserError(
            f"decomposition {directory} was made for a model whose decomposed weights have fingerprint {fingerprint}, "
            f"but this model's are {ours} (same shapes, different values); load the model the decomposition was made for"
        )


def _load_params(module: nn.Module, tensors: dict[str, torch.Tensor | None], prefix: str, directory: Path) -> None:
    expected = module.state_dict()
    present = {k: t for k, t in tensors.items() if t is not None}
    missing = sorted(prefix + k for k in expected if k not in present)
    if missing:
        raise UserError(f"{directory / WEIGHTS_NAME} is missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            f"; the file is incomplete or from another format")
    unexpected = sorted(prefix + k for k in tensors if k not in expected)
    if unexpected:
        raise UserError(f"{directory / WEIGHTS_NAME} has tensors {unexpected[:5]} that the CI function in {META_NAME} does not have")
    for k, ref in expected.items():
        if tuple(present[k].shape) != tuple(ref.shape):
            raise UserError(f"tensor {prefix + k} in {directory / WEIGHTS_NAME} has shape {tuple(present[k].shape)}, expected {tuple(ref.shape)}")
    module.load_state_dict({k: present[k] for k in expected})
