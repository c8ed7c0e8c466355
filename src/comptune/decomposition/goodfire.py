"""Import torch-era Goodfire decompositions (goodfire-ai/spd, goodfire-ai/param-decomp) into comptune.

A reference run directory holds one config and checkpoints `model_<step>.pth`:

- `final_config.yaml`: the older "spd" schema (`module_info` or `C` + `target_module_patterns`;
  `ci_config`, or `ci_fn_type` / `gate_type` / `n_ci_mlp_neurons`; `pretrained_model_class/name`).
- `experiment_config.yaml`: the newer param-decomp schema (`pd.decomposition_targets`,
  `pd.ci_config`, `target.spec`).

Each checkpoint is a torch state dict of their `ComponentModel`, newest key layout:

    target_model.<target keys>                   the frozen target (when saved)
    _components.<path, "." -> "-">.V  [d_in, C]  read vectors   (= our V, no transpose)
    _components.<path, "." -> "-">.U  [C, d_out] write vectors  (= our U)
    ci_fn._global_ci_fn.<...>                    one global CI function, or
    ci_fn._ci_fns.<path, "." -> "-">.<...>       one CI function per module

Their custom `Linear` stores `W` [in, out] and `ParallelLinear` `W` [C, in, out] (the transpose of
nn.Linear), each with a bias `b`. Older checkpoints use older key names (SPEC §8, and the first
release's `model.` / `components.*.{A,B}` / `gates.*`); `normalize_keys` maps them all onto the
newest layout. Checkpoints are read with `torch.load(weights_only=True)` only: a pickle that would
build arbitrary Python objects is refused, never executed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from comptune._io import share_files
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

from ..errors import UserError, UserKeyError
from .ci import CIConfig, build_ci_fn, dashed
from .components import LinearComponents
from .decomposed import Decomposition, resolve_patterns

CONFIG_NAMES = ("final_config.yaml", "experiment_config.yaml")
_CHECKPOINT_RE = re.compile(r"^model_(\d+)\.pth$")
_PRETRAIN_CHECKPOINT_RE = re.compile(r"^model_step_(\d+)\.pt$")
_FIRST_RELEASE_FACTORS = {"A": "V", "B": "U"}

# The paper's 67M "Pile 4L" target (SPEC §8; reference pretrain config
# spd/pretrain/configs/pile_llama_simple_mlp-4L-768.yaml).
PILE_4L: dict[str, Any] = dict(vocab_size=50277, n_layer=4, d_model=768, n_head=6, d_mlp=3072, n_ctx=512, rope_base=10000.0, rms_eps=1e-6)

# Defaults of the reference `LlamaSimpleMLPConfig` for the fields we read: a `model_config.yaml`
# written by their pretraining may omit any of them.
_LLAMA_SIMPLE_MLP_DEFAULTS = dict(
    block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, n_intermediate=3072,
    mlp_bias=False, attn_bias=False, rotary_adjacent_pairs=False, rotary_base=10000, n_ctx=1024,
    n_key_value_heads=3, use_grouped_query_attention=True, rms_norm_eps=1e-6,
)


# --------------------------------------------------------------------------- run files


@dataclass(frozen=True)
class RunFiles:
    config: Path
    checkpoint: Path
    step: int | None  # from the file name `model_<step>.pth`


def find_run_files(run_dir_or_file: str | Path) -> RunFiles:
    """The run's config and checkpoint: the highest `model_<step>.pth` of a directory, or the given file."""
    path = Path(run_dir_or_file)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a Goodfire run directory or its model_<step>.pth")
    if path.is_file():
        run_dir, checkpoint = path.parent, path
        m = _CHECKPOINT_RE.match(path.name)
        step = int(m.group(1)) if m else None
    else:
        run_dir = path
        steps = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _CHECKPOINT_RE.match(p.name)))
        if not steps:
            raise FileNotFoundError(f"no checkpoint model_<step>.pth in {path}; is this a Goodfire decomposition run directory?")
        step, checkpoint = steps[-1]
    configs = [run_dir / n for n in CONFIG_NAMES if (run_dir / n).is_file()]
    if not configs:
        raise FileNotFoundError(f"no {' or '.join(CONFIG_NAMES)} beside {checkpoint}; copy the run's config into {run_dir}")
    if len(configs) > 1:
        raise UserError(f"{run_dir} holds both {CONFIG_NAMES[0]} and {CONFIG_NAMES[1]}; keep the one that belongs to {checkpoint.name}")
    return RunFiles(config=configs[0], checkpoint=checkpoint, step=step)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A torch state dict of tensors, loaded without executing any pickled code."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} holds pickled Python objects other than tensors, so it is refused (unpickling it could "
            f"execute arbitrary code). Re-save it as a plain state dict of tensors. Loader said: {str(e).splitlines()[-1]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a readable torch checkpoint ({e})") from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return sd


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CIFnSpec:
    """Their CI function: `fn_type` as they name it, plus its sizes."""

    fn_type: str  # mlp | vector_mlp | shared_mlp | global_shared_transformer | global_shared_mlp | ...
    hidden_dims: tuple[int, ...] = ()  # layerwise / global MLPs
    # global_shared_transformer only
    d_model: int | None = None
    n_blocks: int | None = None
    mlp_hidden_dims: tuple[int, ...] = ()
    n_heads: int | None = None
    max_len: int | None = None
    rope_base: float | None = None

    @property
    def is_global(self) -> bool:
        return self.fn_type.startswith("global_")


@dataclass(frozen=True)
class GoodfireConfig:
    """What an import needs from either config schema; `raw` keeps the whole file for provenance."""

    schema: str  # "spd" (final_config.yaml) | "param_decomp" (experiment_config.yaml)
    targets: tuple[tuple[str, int], ...]  # (fnmatch module pattern, C)
    ci: CIFnSpec
    sigmoid_type: str  # "leaky_hard", or "first_release" (forward leaks below 0)
    target_class: str | None  # fully qualified class name of their target model
    target_source: str | None  # W&B run / hub id / path their loader took the target from
    tied_weights: tuple[tuple[str, str], ...] = ()  # (src, tgt): tgt.U, tgt.V = src.V.T, src.U.T
    raw: dict = field(default_factory=dict, repr=False)


def read_config(path: str | Path) -> GoodfireConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must hold a mapping")
    try:
        if isinstance(raw.get("pd"), dict) and isinstance(raw.get("target"), dict):
            return _read_param_decomp_config(raw)
        if "pretrained_model_class" in raw and any(k in raw for k in ("module_info", "target_module_patterns")):
            return _read_spd_config(raw)
    except KeyError as e:
        raise UserError(f"config {path}: missing key {e.args[0]!r}") from e
    raise UserError(
        f"config {path} matches no known Goodfire schema: expected `pd:` + `target:` (param-decomp "
        "experiment_config.yaml) or `pretrained_model_class` + `module_info`/`target_module_patterns` (spd final_config.yaml)"
    )


def _read_spd_config(d: dict) -> GoodfireConfig:
    if "module_info" in d:
        targets = tuple((t["module_pattern"], int(t["C"])) for t in d["module_info"])
    else:  # the first schema: one C for every pattern
        targets = tuple((p, int(d["C"])) for p in d["target_module_patterns"])
    _reject_identity_targets(d.get("identity_module_info") or d.get("identity_module_patterns"))
    sigmoid = d.get("sigmoid_type", "leaky_hard")
    if "ci_config" in d:
        ci = _ci_from_ci_config(d["ci_config"])
    elif any(k in d for k in ("ci_fn_type", "gate_type", "ci_fn_hidden_dims", "gate_hidden_dims", "use_global_ci")):
        # their config migration: gate_* was renamed ci_fn_*, defaults vector_mlp / [8]
        fn_type = d.get("ci_fn_type", d.get("gate_type", "vector_mlp"))
        hidden = d.get("ci_fn_hidden_dims", d.get("gate_hidden_dims", [8]))
        if d.get("use_global_ci") and not fn_type.startswith("global_"):
            fn_type = "global_shared_mlp"
        ci = CIFnSpec(fn_type=fn_type, hidden_dims=tuple(hidden))
    elif "n_ci_mlp_neurons" in d:
        # first release (June 2025): one gate per subcomponent on its inner activation, i.e. an
        # `mlp` CI function with one hidden layer of n neurons, or none when n = 0; its lower
        # sigmoid leaked below 0 in the forward pass (0.01 z), later versions clamp to 0
        n = int(d["n_ci_mlp_neurons"])
        ci = CIFnSpec(fn_type="mlp", hidden_dims=(n,) if n > 0 else ())
        sigmoid = "first_release"
    else:
        raise UserKeyError("ci_config")
    source = d.get("pretrained_model_name") or d.get("pretrained_model_name_hf") or d.get("pretrained_model_path")
    return GoodfireConfig(
        schema="spd", targets=targets, ci=ci, sigmoid_type=sigmoid,
        target_class=d["pretrained_model_class"], target_source=None if source is None else str(source), raw=d,
    )


def _read_param_decomp_config(d: dict) -> GoodfireConfig:
    pd = d["pd"]
    targets = tuple((t["module_pattern"], int(t["C"])) for t in pd["decomposition_targets"])
    _reject_identity_targets(pd.get("identity_decomposition_targets"))
    spec = d["target"]["spec"]
    return GoodfireConfig(
        schema="param_decomp", targets=targets, ci=_ci_from_ci_config(pd["ci_config"]),
        sigmoid_type=pd.get("sigmoid_type", "leaky_hard"), target_class=spec.get("model_class"),
        target_source=spec.get("run_path") or spec.get("model_name"),
        tied_weights=tuple(tuple(p) for p in pd.get("tied_weights") or ()), raw=d,
    )


def _ci_from_ci_config(c: dict) -> CIFnSpec:
    fn_type = c["fn_type"]
    if fn_type != "global_shared_transformer":
        return CIFnSpec(fn_type=fn_type, hidden_dims=tuple(c.get("hidden_dims") or ()))
    t = c["simple_transformer_ci_cfg"]
    attn = t["attn_config"]
    mlp_hidden = t.get("mlp_hidden_dim")
    return CIFnSpec(
        fn_type=fn_type, d_model=int(t["d_model"]), n_blocks=int(t["n_blocks"]),
        mlp_hidden_dims=tuple(mlp_hidden) if mlp_hidden is not None else (4 * int(t["d_model"]),),
        n_heads=int(attn["n_heads"]), max_len=int(attn.get("max_len", 2048)), rope_base=float(attn.get("rope_base", 10000.0)),
    )


def _reject_identity_targets(identity_targets: Any) -> None:
    if identity_targets:
        raise UserError(
            "the run decomposes inserted identity matrices (identity_module_info / identity_decomposition_targets); "
            "comptune decomposes existing linear weights only"
        )


# --------------------------------------------------------------------------- checkpoint keys


def normalize_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every older key layout onto the newest (`target_model.`, `_components.`, `ci_fn.`).

    Renames (their `handle_deprecated_state_dict_keys_` plus the first release's names):
    `_gates.` / top-level `_ci_fns.` -> `ci_fn._ci_fns.`; `patched_model.` / `model.` -> `target_model.`;
    `*.original.*` -> `*.*`; `target_model.<path>.components.{U,V}` -> `_components.<dashed>.{U,V}`;
    `components.<dashed>.{A,B}` (A = V, B = U) -> `_components.<dashed>.{V,U}`; `gates.<dashed>.layers.*`
    -> `ci_fn._ci_fns.<dashed>.layers.*`; `gates.<dashed>.{mlp_in,in_bias,mlp_out,out_bias}` or
    `.{weight,bias}` -> the equivalent `layers.*` of an `mlp` CI function.
    """
    out: dict[str, torch.Tensor] = {}
    first_release_gates: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state_dict.items():
        new = _rename(key)
        if new.startswith("gates."):
            dashed, leaf = new.removeprefix("gates.").rsplit(".", 1)
            first_release_gates.setdefault(dashed, {})[leaf] = t
            continue
        if new in out:
            raise UserError(f"checkpoint holds both {key!r} and a key that also maps to {new!r}")
        out[new] = t
    for dashed, params in first_release_gates.items():
        out.update({f"ci_fn._ci_fns.{dashed}.{k}": v for k, v in _first_release_gate_as_mlp(dashed, params).items()})
    unknown = sorted(k for k in out if not k.startswith(("target_model.", "_components.", "ci_fn.")))
    if unknown:
        raise UserError(f"checkpoint keys in no known Goodfire layout: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return out


def _rename(key: str) -> str:
    if key.startswith("_gates."):
        key = "ci_fn._ci_fns." + key.removeprefix("_gates.")
    elif key.startswith("_ci_fns."):
        key = "ci_fn." + key
    elif key.startswith("patched_model."):
        key = "target_model." + key.removeprefix("patched_model.")
    elif key.startswith("model."):  # first release: the target sat under `model`
        key = "target_model." + key.removeprefix("model.")
    elif key.startswith("components."):  # first release: ModuleDict `components`, A = V, B = U
        dashed, leaf = key.removeprefix("components.").rsplit(".", 1)
        key = f"_components.{dashed}.{_FIRST_RELEASE_FACTORS.get(leaf, leaf)}"
    elif key.startswith("gates.") and ".layers." in key:  # July 2025: gates already built from `layers`
        key = "ci_fn._ci_fns." + key.removeprefix("gates.")
    if key.startswith("target_model."):
        key = key.replace(".original.", ".")  # ComponentsOrModule wrapper (July-Sept 2025)
        if ".components." in key:
            path, leaf = key.removeprefix("target_model.").split(".components.")
            key = f"_components.{path.replace('.', '-')}.{leaf}"
    return key


def _first_release_gate_as_mlp(dashed: str, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first release's per-subcomponent gate as `ParallelLinear` layers ([C, in, out], [C, out])."""
    if set(p) == {"mlp_in", "in_bias", "mlp_out", "out_bias"}:
        # z = Σ_n gelu(a·mlp_in[c,n] + in_bias[c,n]) · mlp_out[c,n] + out_bias[c]
        return {
            "layers.0.W": p["mlp_in"][:, None, :], "layers.0.b": p["in_bias"],
            "layers.2.W": p["mlp_out"][:, :, None], "layers.2.b": p["out_bias"][:, None],
        }
    if set(p) == {"weight", "bias"}:  # z = a·weight[c] + bias[c]
        return {"layers.0.W": p["weight"][:, None, None], "layers.0.b": p["bias"][:, None]}
    raise UserError(f"first-release gate gates.{dashed} has unknown parameters {sorted(p)}")


@dataclass
class ReferenceCheckpoint:
    """A normalized checkpoint split by owner."""

    target: dict[str, torch.Tensor]  # target keys without `target_model.`
    components: dict[str, dict[str, torch.Tensor]]  # dashed path -> {"V", "U"[, "bias"]}
    ci_fn: dict[str, torch.Tensor]  # keys without `ci_fn.`


def split_checkpoint(state_dict: dict[str, torch.Tensor]) -> ReferenceCheckpoint:
    sd = normalize_keys(state_dict)
    target = {k.removeprefix("target_model."): v for k, v in sd.items() if k.startswith("target_model.")}
    components: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith("_components."):
            dashed, leaf = k.removeprefix("_components.").rsplit(".", 1)
            components.setdefault(dashed, {})[leaf] = v
    ci = {k.removeprefix("ci_fn."): v for k, v in sd.items() if k.startswith("ci_fn.")}
    return ReferenceCheckpoint(target=target, components=components, ci_fn=ci)


# --------------------------------------------------------------------------- target models


def build_pile_4l_target() -> ComptuneLMForCausalLM:
    """The paper's 67M Llama-style target ("Pile 4L"), randomly initialised; load its weights next."""
    return ComptuneLMForCausalLM(ComptuneLMConfig(**PILE_4L)).eval()


def comptune_config_from_llama_simple_mlp(model_config: dict) -> ComptuneLMConfig:
    """Our config for their `LlamaSimpleMLP` (spd/pretrain/models/llama_simple_mlp.py), when we can represent it.

    Their model: rotate-half RoPE over the full head (rotary_dim is forced to head_dim), fp32 RMSNorm
    with weight, tanh-GELU MLP, causal attention with grouped KV heads repeated after RoPE, tied
    wte / lm_head — the same as ours as long as q/k/v are separate projections (their GQA path) and
    nothing has a bias.
    """
    c = {**_LLAMA_SIMPLE_MLP_DEFAULTS, **model_config}
    if c.get("model_type", "LlamaSimpleMLP") != "LlamaSimpleMLP":
        raise UserError(f"model_type {c['model_type']!r} is not LlamaSimpleMLP")
    unsupported = [
        msg for bad, msg in (
            (c["attn_bias"] or c["mlp_bias"], "biases"),
            (c["rotary_adjacent_pairs"], "adjacent-pair RoPE"),
            (not c["use_grouped_query_attention"], "a fused c_attn projection"),
            (c["use_grouped_query_attention"] and c["n_head"] % c["n_key_value_heads"],
             f"{c['n_key_value_heads']} KV heads, which do not divide its {c['n_head']} query heads"),
        ) if bad
    ]
    if unsupported:
        raise UserError(f"their LlamaSimpleMLP target uses {', '.join(unsupported)}, which ComptuneLM cannot represent")
    return ComptuneLMConfig(
        vocab_size=c["vocab_size"], n_layer=c["n_layer"], d_model=c["n_embd"], n_head=c["n_head"],
        d_mlp=c["n_intermediate"], n_kv_head=c["n_key_value_heads"], n_ctx=min(c["n_ctx"], c["block_size"]), rope_base=float(c["rotary_base"]),
        rms_eps=float(c["rms_norm_eps"]),
    )


def read_pretrain_run(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(model_config, target state dict, checkpoint file) of their pretraining run.

    `path` is the run directory (`model_config.yaml` + `checkpoints/model_step_<n>.pt`, highest n) or one
    `model_step_<n>.pt` (its `model_config.yaml` two levels up, as their loader expects, or beside it).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [p for d in (path / "checkpoints", path) if d.is_dir() for p in d.iterdir()]
        steps = sorted((int(m.group(1)), p) for p in candidates if (m := _PRETRAIN_CHECKPOINT_RE.match(p.name)))
        if not steps:
            raise FileNotFoundError(f"no checkpoints/model_step_<n>.pt in target run {path}")
        checkpoint, config_dirs = steps[-1][1], [path]
    elif path.is_file():
        checkpoint, config_dirs = path, [path.parent.parent, path.parent]
    else:
        raise FileNotFoundError(f"target weights {path} do not exist")
    config_path = next((d / "model_config.yaml" for d in config_dirs if (d / "model_config.yaml").is_file()), None)
    if config_path is None:
        raise FileNotFoundError(f"no model_config.yaml for target checkpoint {checkpoint} (looked in {', '.join(map(str, config_dirs))})")
    model_config = yaml.safe_load(config_path.read_text()) or {}
    sd = {k.replace("_orig_mod.", ""): v for k, v in load_state_dict(checkpoint).items()}
    return model_config, sd, checkpoint


def load_target_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], *, what: str) -> None:
    """Load all of a target's weights, strictly; `what` names their origin in errors."""
    sd = dict(state_dict)
    tied = getattr(model, "_tied_weights_keys", None)
    for dst, src in (tied.items() if isinstance(tied, dict) else ()):  # a tied pair may be saved under one name or both
        if dst in sd and src in sd and not torch.equal(sd[dst], sd[src]):
            raise UserError(f"{what}: {dst} and {src} differ, but the model ties them")
        if src in sd:
            sd.setdefault(dst, sd[src])
        elif dst in sd:
            sd[src] = sd[dst]
    _load_exact(model, sd, what=what)


def _load_exact(module: nn.Module, sd: dict[str, torch.Tensor], *, what: str) -> None:
    """load_state_dict with every key and shape checked first, so errors name what does not fit."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise UserKeyError(f"{what} do not fit the {type(module).__name__} built for them: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise UserError(f"{what}: {bad[0]} has shape {tuple(sd[bad[0]].shape)}"
            f", the {type(module).__name__} built for them needs {tuple(expected[bad[0]].shape)}")
    module.load_state_dict(sd, strict=True)


def _check_same_target(model: nn.Module, state_dict: dict[str, torch.Tensor], *, what: str) -> None:
    """The decomposition was made of `state_dict`'s weights: refuse a different model."""
    expected = model.state_dict()
    for k, v in state_dict.items():
        if k not in expected or expected[k].shape != v.shape or not torch.equal(expected[k].float(), v.float()):
            raise UserError(f"{what} differ from the given target at {k!r}: this decomposition belongs to a different model")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _comptune_shapes(config: ComptuneLMConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only, nothing allocated
        model = ComptuneLMForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _is_llama_simple_mlp(target_class: str | None) -> bool:
    return target_class is not None and target_class.rsplit(".", 1)[-1] == "LlamaSimpleMLP"


def resolve_target(
    config: GoodfireConfig,
    checkpoint_target: dict[str, torch.Tensor],
    target: nn.Module | None = None,
    target_weights: str | Path | None = None,
) -> tuple[nn.Module, dict]:
    """The target model holding the decomposed weights, and how it was obtained (for provenance).

    In order of preference: the given `target` module; the given `target_weights` (their pretraining
    run with `model_config.yaml`, or a local Hugging Face model folder); the target the run's own
    config names (`pretrained_model_name` / `target.spec`), when that is a local path; the
    checkpoint's own `target_model.*` weights in a LlamaSimpleMLP-shaped ComptuneLM (whose head
    count only the paper's Pile 4L shapes pin down). Weights found in the checkpoint must equal the
    target's.
    """
    named = _local_target_source(config)
    if target is not None:
        model, origin = target.eval(), {"target": "given module"}
    elif target_weights is not None:
        model, origin = _target_from_weights(Path(target_weights), config)
    elif named is not None:
        model, origin = _target_from_weights(named, config)
        origin["found_by"] = f"the run's config names it ({config.target_source})"
    elif checkpoint_target:
        if not _is_llama_simple_mlp(config.target_class):
            raise UserError(
                f"the run's target is {config.target_class}, which comptune cannot build from the checkpoint alone; "
                "pass the model itself (import_goodfire(..., target=model)) or --target-weights (a local HF model folder)"
            )
        pile = ComptuneLMConfig(**PILE_4L)
        shapes = {k: tuple(v.shape) for k, v in checkpoint_target.items()}
        if {k: s for k, s in _comptune_shapes(pile).items() if k in shapes} != shapes or "wte.weight" not in shapes:
            raise UserError(
                "the checkpoint's target_model.* weights are a LlamaSimpleMLP other than the paper's Pile 4L, and their "
                f"head count is not recorded in the checkpoint{_named_source_hint(config)}; pass --target-weights PRETRAIN_RUN_DIR "
                "(model_config.yaml + checkpoints/model_step_<n>.pt)"
            )
        model = build_pile_4l_target()
        load_target_weights(model, checkpoint_target, what="target_model.* weights of the checkpoint")
        return model, {"target": "Pile 4L (build_pile_4l_target), weights from the checkpoint's target_model.*", "built": True}
    else:
        raise UserError(
            f"the checkpoint holds no target_model.* weights{_named_source_hint(config)}; pass --target-weights PRETRAIN_RUN_DIR "
            "(model_config.yaml + checkpoints/model_step_<n>.pt) or a local HF model folder, or target=model"
        )
    if checkpoint_target:
        _check_same_target(model, checkpoint_target, what="the checkpoint's target_model.* weights")
    return model, origin


def _local_target_source(config: GoodfireConfig) -> Path | None:
    """The run's named target, if it is on this machine (a W&B or hub name is not): a folder, or a
    checkpoint file — their trainer's local `target.spec.run_path` is the pretraining checkpoint
    `.../checkpoints/model_step_<n>.pt` itself (their `PretrainRunInfo.from_path` requires a file)."""
    source = config.target_source
    if not source:
        return None
    path = Path(source.removeprefix("file://")).expanduser()
    return path if path.exists() else None


def _named_source_hint(config: GoodfireConfig) -> str:
    if not config.target_source:
        return ""
    return (
        f", and the target the run names ({config.target_source}) is not a file or folder on this machine (download that "
        "run's files; a relative local path in their config is relative to the param-decomp checkout the run was launched from)"
    )


def _target_from_weights(path: Path, config: GoodfireConfig) -> tuple[nn.Module, dict]:
    if path.is_dir() and (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        # our own folders load through our class; others through transformers, never with remote code
        is_ours = json.loads((path / "config.json").read_text()).get("model_type") == ComptuneLMConfig.model_type
        model = (ComptuneLMForCausalLM if is_ours else AutoModelForCausalLM).from_pretrained(path, local_files_only=True)
        return model.eval(), {"target": f"Hugging Face model {path}"}
    model_config, sd, checkpoint = read_pretrain_run(path)
    if not (_is_llama_simple_mlp(config.target_class) or model_config.get("model_type") == "LlamaSimpleMLP"):
        raise UserError(f"target run {path} is not a LlamaSimpleMLP (the run's target class is {config.target_class})")
    model = ComptuneLMForCausalLM(comptune_config_from_llama_simple_mlp(model_config)).eval()
    load_target_weights(model, sd, what=f"target weights {checkpoint}")
    return model, {"target": f"LlamaSimpleMLP pretraining run, weights {checkpoint}", "model_config": model_config, "built": True}


# --------------------------------------------------------------------------- onto comptune's classes


# their layerwise `ci_fn_type` -> our CIConfig.type
_LAYERWISE_CI_TYPES = {"mlp": "layerwise_mlp", "vector_mlp": "vector_mlp", "shared_mlp": "shared_mlp"}
_SHARED_MLP_KEY_RE = re.compile(r"^_ci_fns\.(?P<module>[^.]+)\.layers\.(?P<layer>\d+)\.(?P<leaf>W|b)$")


def ci_config_for(spec: CIFnSpec) -> CIConfig:
    """Our CIConfig for their CI function, or a clear error for the variants we cannot run."""
    if spec.fn_type in _LAYERWISE_CI_TYPES:
        return CIConfig(type=_LAYERWISE_CI_TYPES[spec.fn_type], hidden_dims=list(spec.hidden_dims))
    if spec.fn_type == "global_shared_transformer":
        if len(spec.mlp_hidden_dims) != 1:
            raise UserError(
                f"the run's CI transformer has MLP hidden widths {list(spec.mlp_hidden_dims)}; comptune's "
                "GlobalTransformerCI has exactly one hidden layer (d_ff)"
            )
        return CIConfig(
            type="global_transformer", d_model=spec.d_model, n_blocks=spec.n_blocks, n_heads=spec.n_heads,
            d_ff=spec.mlp_hidden_dims[0], rope_base=spec.rope_base,
        )
    what = {
        "global_shared_mlp": "one MLP on the concatenated raw inputs of all modules",
        "global_reverse_residual": "the reverse-residual global CI function",
        "layerwise_global_mlp": "the layerwise-global MLP",
    }.get(spec.fn_type, "an unknown CI function")
    raise UserError(
        f"the run's CI function {spec.fn_type!r} ({what}) has no comptune counterpart; supported: 'mlp' "
        "(LayerwiseMLPCI), 'vector_mlp' (VectorMLPCI), 'shared_mlp' (SharedMLPCI) and 'global_shared_transformer' (GlobalTransformerCI)"
    )


_GLOBAL_KEY_RE = re.compile(
    r"^_global_ci_fn\.(?:"
    r"(?P<io>_input_projector|_output_head)\.(?P<io_leaf>W|b)"
    r"|_blocks\.(?P<blk>\d+)\.(?:attn\.(?P<proj>q|k|v|out)_proj\.weight|attn\.(?P<rope>rope\.inv_freq)|mlp\.(?P<mlp>\d+)\.(?P<mlp_leaf>W|b)))$"
)


def ci_state_dict(spec: CIFnSpec, ci_fn: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their `ci_fn.*` tensors under our CI function's state-dict names.

    Layerwise `mlp` / `vector_mlp`: `_ci_fns.<dashed>.layers.{k}.{W,b}` -> `mlps.<dashed>.layers.{k}.{W,b}`
    (the same ParallelLinear [C, in, out] layout). `shared_mlp`: their `Linear`
    `_ci_fns.<dashed>.layers.{k}.W` [in, out] -> nn.Linear `mlps.<dashed>.{k}.weight` [out, in]
    (transposed), `b` -> `bias`. Global: their `Linear.W` [in, out] -> nn.Linear `weight` [out, in]
    (transposed), `b` -> `bias`, `out_proj` -> `o_proj`; the stored RoPE `inv_freq` must match the
    frequencies our attention computes from d_model / n_heads / rope_base.
    """
    out: dict[str, torch.Tensor] = {}
    if spec.fn_type == "shared_mlp":
        for k, v in ci_fn.items():
            m = _SHARED_MLP_KEY_RE.match(k)
            if m is None:
                raise UserError(f"checkpoint CI key ci_fn.{k} is not part of a shared_mlp CI function (_ci_fns.<module>.layers.<k>.W/b)")
            if v.ndim != (2 if m["leaf"] == "W" else 1):
                raise UserError(
                    f"checkpoint CI tensor ci_fn.{k} has shape {tuple(v.shape)}, but a shared_mlp stores W [in, out] and "
                    "b [out]; does the config's CI function type match the checkpoint?"
                )
            leaf, v = ("weight", v.T) if m["leaf"] == "W" else ("bias", v)
            out[f"mlps.{m['module']}.{m['layer']}.{leaf}"] = v
        return out
    if not spec.is_global:
        for k, v in ci_fn.items():
            if not k.startswith("_ci_fns."):
                raise UserError(f"checkpoint CI key ci_fn.{k} is not layerwise, but the config says {spec.fn_type!r}")
            out["mlps." + k.removeprefix("_ci_fns.")] = v
        return out
    # only a global_shared_transformer gets here (ci_config_for refused the other global types), and its spec has these
    assert spec.d_model is not None and spec.n_heads is not None and spec.rope_base is not None
    head_dim = spec.d_model // spec.n_heads
    expected_inv_freq = 1.0 / (spec.rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    for k, v in ci_fn.items():
        m = _GLOBAL_KEY_RE.match(k)
        if m is None:
            raise UserError(f"checkpoint CI key ci_fn.{k} is not part of a {spec.fn_type} CI function")
        if m["io"]:
            name = {"_input_projector": "input_proj", "_output_head": "output_head"}[m["io"]]
            out[f"{name}.{'weight' if m['io_leaf'] == 'W' else 'bias'}"] = v.T if m["io_leaf"] == "W" else v
        elif m["proj"]:
            out[f"blocks.{m['blk']}.attn.{'o' if m['proj'] == 'out' else m['proj']}_proj.weight"] = v
        elif m["rope"]:
            if v.shape != expected_inv_freq.shape or not torch.allclose(v.float(), expected_inv_freq, rtol=1e-5):
                raise UserError(
                    f"ci_fn.{k} does not match RoPE with head size {head_dim} and base {spec.rope_base}: "
                    "the config's n_heads or rope_base disagree with the checkpoint"
                )
        else:
            out[f"blocks.{m['blk']}.mlp.{m['mlp']}.{'weight' if m['mlp_leaf'] == 'W' else 'bias'}"] = v.T if m["mlp_leaf"] == "W" else v
    return out


def to_decomposition(config: GoodfireConfig, checkpoint: ReferenceCheckpoint, target: nn.Module) -> Decomposition:
    """A `Decomposition` of `target` holding exactly the checkpoint's V, U and CI function."""
    patterns: dict[str, int] = {}
    for pattern, c in config.targets:
        if pattern in patterns:
            raise UserError(f"module pattern {pattern!r} is listed twice in the run's config")
        patterns[pattern] = c
    C = resolve_patterns(target, patterns)
    modules = dict(target.named_modules())
    components: dict[str, LinearComponents] = {}
    for path, c in C.items():
        stored = checkpoint.components.get(dashed(path))
        if stored is None or "V" not in stored or "U" not in stored:
            raise UserKeyError(f"checkpoint has no _components.{dashed(path)}.V/.U for decomposed module {path}")
        comps = LinearComponents.for_module(modules[path], c)
        for name, want in (("V", (comps.d_in, c)), ("U", (c, comps.d_out))):
            if tuple(stored[name].shape) != want:
                raise UserError(f"_components.{dashed(path)}.{name} has shape {tuple(stored[name].shape)}, expected {want} (C={c} from the config)")
        with torch.no_grad():
            comps.V.copy_(stored["V"])
            comps.U.copy_(stored["U"])
        bias = getattr(modules[path], "bias", None)
        if "bias" in stored and (bias is None or not torch.equal(stored["bias"].float(), bias.detach().float())):
            raise UserError(f"_components.{dashed(path)}.bias differs from the target's bias of {path}")
        components[path] = comps
    extra = sorted(set(checkpoint.components) - {dashed(p) for p in C})
    if extra:
        raise UserError(f"checkpoint has components {extra[:5]} for modules the config's patterns do not match")
    for src, tgt in config.tied_weights:  # as their loader does after load_state_dict
        with torch.no_grad():
            components[tgt].U.copy_(components[src].V.T)
            components[tgt].V.copy_(components[src].U.T)
    ci_config = ci_config_for(config.ci)
    ci_fn = build_ci_fn(ci_config, C, {p: comps.d_in for p, comps in components.items()})
    _load_exact(ci_fn, ci_state_dict(config.ci, checkpoint.ci_fn), what="the checkpoint's CI function tensors (ci_fn.*)")
    return Decomposition(target, components, ci_fn, ci_config)


# --------------------------------------------------------------------------- entry points


def import_goodfire(
    run_dir_or_file: str | Path,
    out_dir: str | Path,
    *,
    target: nn.Module | None = None,
    target_weights: str | Path | None = None,
) -> Decomposition:
    """Convert a torch-era Goodfire run into a comptune decomposition folder, and return it loaded.

    `run_dir_or_file`: the run directory (highest `model_<step>.pth`) or one checkpoint file beside its
    config. The target comes from `target`, else `target_weights`, else the checkpoint itself (see
    `resolve_target`). When comptune built the target, it is also saved to `<out_dir>/target` (a
    Hugging Face folder), since later stages need the model the decomposition belongs to.
    """
    files = find_run_files(run_dir_or_file)
    config = read_config(files.config)
    if config.sigmoid_type not in ("leaky_hard", "first_release"):
        raise UserError(
            f"the run squashes causal importances with sigmoid_type={config.sigmoid_type!r}; comptune computes them with "
            "the leaky hard sigmoids only, so the imported importances would not be the run's"
        )
    checkpoint = split_checkpoint(load_state_dict(files.checkpoint))
    model, target_origin = resolve_target(config, checkpoint.target, target, target_weights)
    decomposition = to_decomposition(config, checkpoint, model)
    out_dir = Path(out_dir)
    if target_origin.pop("built", False):
        model.save_pretrained(out_dir / "target")  # type: ignore[operator]  # built here: a ComptuneLMForCausalLM
        share_files(out_dir / "target")
        target_origin["saved_to"] = "target"
    decomposition.provenance = {
        "source": "goodfire-torch",
        "config_file": str(files.config.resolve()),
        "checkpoint_file": str(files.checkpoint.resolve()),
        "checkpoint_sha256": _sha256(files.checkpoint),
        "step": files.step,
        "schema": config.schema,
        "ci_fn_type": config.ci.fn_type,
        "sigmoid_type": config.sigmoid_type,
        "target_class": config.target_class,
        "target_source": config.target_source,
        **target_origin,
        "reference_config": json.loads(json.dumps(config.raw, default=str)),  # YAML dates etc. as text
    }
    decomposition.save(out_dir)
    return decomposition
