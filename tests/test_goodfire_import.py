"""`comptune import-goodfire`: torch-era Goodfire runs written here in the reference layout, imported and
checked against the reference math computed directly from the raw checkpoint tensors; and runs made by
their own trainer (tests/fixtures/goodfire_run_*, scripts/make_goodfire_decomposition_fixture.py),
imported and checked against the outputs their code recorded."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from comptune.decomposition import Decomposition
from comptune.decomposition.goodfire import (
    PILE_4L,
    _comptune_shapes,
    build_pile_4l_target,
    comptune_config_from_llama_simple_mlp,
    import_goodfire,
    load_target_weights,
    normalize_keys,
    read_pretrain_run,
)
from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM

# A tiny LlamaSimpleMLP (their pretraining `model_config.yaml`) and the same model as ours.
LLAMA_CONFIG = dict(
    model_type="LlamaSimpleMLP", block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, n_intermediate=32,
    n_ctx=16, n_key_value_heads=2, rotary_dim=8, rotary_base=10000, rms_norm_eps=1e-6, flash_attention=False,
)
TINY = dict(vocab_size=64, n_layer=2, d_model=16, n_head=2, d_mlp=32, n_ctx=16)
TARGETS = [("h.*.mlp.c_fc", 5), ("h.*.attn.q_proj", 3)]
PATHS = ["h.0.attn.q_proj", "h.0.mlp.c_fc", "h.1.attn.q_proj", "h.1.mlp.c_fc"]
C = {p: 3 if "q_proj" in p else 5 for p in PATHS}
D_IN = {p: 16 for p in PATHS}
CI_D, CI_HEADS, CI_BLOCKS, CI_FF, ROPE_BASE = 8, 2, 2, 12, 10000.0
MLP_HIDDEN = 4
TARGET_CLASS = "spd.pretrain.models.llama_simple_mlp.LlamaSimpleMLP"

torch.set_num_threads(1)


def dashed(path):
    return path.replace(".", "-")


@pytest.fixture
def target():
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(**TINY)).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong norm would show
        for name, p in model.named_parameters():
            if "rms" in name or "ln_f" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------------------- reference writers


def reference_checkpoint(target, ci_kind, C=C, hidden=(MLP_HIDDEN,)):
    """The newest reference state dict: target_model.*, _components.* (V [d_in,C], U [C,d_out]), ci_fn.*.

    `hidden`: the hidden widths of a vector_mlp / shared_mlp CI function."""
    g = torch.Generator().manual_seed(1)
    sd = {f"target_model.{k}": v.clone() for k, v in target.state_dict().items()}
    for p in PATHS:
        sd[f"_components.{dashed(p)}.V"] = torch.randn(D_IN[p], C[p], generator=g) / 4
        sd[f"_components.{dashed(p)}.U"] = torch.randn(C[p], 32 if "c_fc" in p else 16, generator=g) / 2
    if ci_kind == "global":
        pre = "ci_fn._global_ci_fn."
        sd[pre + "_input_projector.W"] = torch.randn(sum(D_IN.values()), CI_D, generator=g) / 8  # [in, out]
        sd[pre + "_input_projector.b"] = torch.randn(CI_D, generator=g) / 4
        head = CI_D // CI_HEADS
        for i in range(CI_BLOCKS):
            b = f"{pre}_blocks.{i}."
            for n in ("q", "k", "v", "out"):
                sd[f"{b}attn.{n}_proj.weight"] = torch.randn(CI_D, CI_D, generator=g) / 3  # nn.Linear [out, in]
            sd[b + "attn.rope.inv_freq"] = 1.0 / (ROPE_BASE ** (torch.arange(0, head, 2).float() / head))
            sd[b + "mlp.0.W"] = torch.randn(CI_D, CI_FF, generator=g) / 3
            sd[b + "mlp.0.b"] = torch.randn(CI_FF, generator=g) / 4
            sd[b + "mlp.2.W"] = torch.randn(CI_FF, CI_D, generator=g) / 3
            sd[b + "mlp.2.b"] = torch.randn(CI_D, generator=g) / 4
        sd[pre + "_output_head.W"] = torch.randn(CI_D, sum(C.values()), generator=g) / 3
        sd[pre + "_output_head.b"] = torch.randn(sum(C.values()), generator=g) / 4
    elif ci_kind == "vector_mlp":  # per subcomponent an MLP of x: ParallelLinear W [C, in, out], b [C, out]
        for p in PATHS:
            widths = [D_IN[p], *hidden, 1]
            for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
                sd[f"ci_fn._ci_fns.{dashed(p)}.layers.{2 * k}.W"] = torch.randn(C[p], i, o, generator=g) / math.sqrt(i)
                sd[f"ci_fn._ci_fns.{dashed(p)}.layers.{2 * k}.b"] = torch.randn(C[p], o, generator=g) / 4
    elif ci_kind == "shared_mlp":  # one MLP x -> C per module: their Linear W [in, out], b [out]
        for p in PATHS:
            widths = [D_IN[p], *hidden, C[p]]
            for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
                sd[f"ci_fn._ci_fns.{dashed(p)}.layers.{2 * k}.W"] = torch.randn(i, o, generator=g) / math.sqrt(i)
                sd[f"ci_fn._ci_fns.{dashed(p)}.layers.{2 * k}.b"] = torch.randn(o, generator=g) / 4
    else:  # layerwise `mlp`: ParallelLinear W [C, in, out], b [C, out]
        for p in PATHS:
            pre = f"ci_fn._ci_fns.{dashed(p)}.layers."
            sd[pre + "0.W"] = torch.randn(C[p], 1, MLP_HIDDEN, generator=g)
            sd[pre + "0.b"] = torch.randn(C[p], MLP_HIDDEN, generator=g)
            sd[pre + "2.W"] = torch.randn(C[p], MLP_HIDDEN, 1, generator=g)
            sd[pre + "2.b"] = torch.randn(C[p], 1, generator=g)
    return sd


GLOBAL_CI = {
    "mode": "global", "fn_type": "global_shared_transformer", "hidden_dims": None,
    "simple_transformer_ci_cfg": {
        "d_model": CI_D, "n_blocks": CI_BLOCKS, "mlp_hidden_dim": [CI_FF],
        "attn_config": {"n_heads": CI_HEADS, "max_len": 64, "rope_base": ROPE_BASE},
    },
}
LAYERWISE_CI = {"mode": "layerwise", "fn_type": "mlp", "hidden_dims": [MLP_HIDDEN]}
VECTOR_CI = {"mode": "layerwise", "fn_type": "vector_mlp", "hidden_dims": [MLP_HIDDEN]}
SHARED_CI = {"mode": "layerwise", "fn_type": "shared_mlp", "hidden_dims": [MLP_HIDDEN]}
CI_CONFIGS = {"global": GLOBAL_CI, "layerwise": LAYERWISE_CI, "vector_mlp": VECTOR_CI, "shared_mlp": SHARED_CI}
OUR_CI_TYPE = {"global": "global_transformer", "layerwise": "layerwise_mlp", "vector_mlp": "vector_mlp", "shared_mlp": "shared_mlp"}


def spd_config(ci):
    """Older "spd" schema (final_config.yaml)."""
    return {
        "seed": 0, "n_mask_samples": 1, "ci_config": ci, "sigmoid_type": "leaky_hard",
        "module_info": [{"module_pattern": p, "C": c} for p, c in TARGETS],
        "identity_module_info": None, "use_delta_component": True, "steps": 10, "batch_size": 4,
        "pretrained_model_class": TARGET_CLASS, "pretrained_model_name": "wandb:goodfire/spd/t-00000000",
        "pretrained_model_output_attr": "idx_0",
    }


def param_decomp_config(ci):
    """Newer param-decomp schema (experiment_config.yaml)."""
    return {
        "pd": {
            "seed": 0, "n_mask_samples": 1, "ci_config": ci, "sigmoid_type": "leaky_hard",
            "decomposition_targets": [{"module_pattern": p, "C": c} for p, c in TARGETS],
            "identity_decomposition_targets": None, "use_delta_component": True, "steps": 10, "batch_size": 4,
        },
        "runtime": {"device": "cpu"},
        "cadence": {"train_log_every": 1},
        "target": {"spec": {"kind": "pretrained", "model_class": TARGET_CLASS, "run_path": "goodfire/spd/runs/t-00000000"}, "output_extract": 0},
        "data": {"tokenizer_name": "EleutherAI/gpt-neox-20b"},
    }


def write_run(run_dir, config_name, config, state_dicts):
    """`state_dicts`: {step: state dict}, saved as model_<step>.pth with torch.save like the reference."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / config_name).write_text(yaml.safe_dump(config))
    for step, sd in state_dicts.items():
        torch.save(sd, run_dir / f"model_{step}.pth")
    return run_dir


# ---------------------------------------------------------------------------- reference math


def reference_global_ci(sd, acts, C=C):
    """Their GlobalSharedTransformerCiFn, written out from the raw tensors: sorted modules, weightless
    RMS norms, [in, out] projector, pre-norm bidirectional RoPE attention, GELU MLP, split logits."""
    pre = "ci_fn._global_ci_fn."
    order = sorted(acts)
    h = torch.cat([F.rms_norm(acts[p], (acts[p].shape[-1],)) for p in order], -1)
    h = h @ sd[pre + "_input_projector.W"] + sd[pre + "_input_projector.b"]
    B, T, D = h.shape
    dh = D // CI_HEADS
    for i in range(CI_BLOCKS):
        b = f"{pre}_blocks.{i}."
        a = F.rms_norm(h, (D,))
        q, k, v = (
            (a @ sd[f"{b}attn.{n}_proj.weight"].T).view(B, T, CI_HEADS, dh).transpose(1, 2) for n in "qkv"
        )
        angles = torch.arange(T).float()[:, None] * sd[b + "attn.rope.inv_freq"][None]
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

        def rot(x):
            return x * cos + torch.cat([-x[..., dh // 2 :], x[..., : dh // 2]], -1) * sin

        q, k = rot(q), rot(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1)  # no causal mask
        h = h + ((att @ v).transpose(1, 2).reshape(B, T, D) @ sd[b + "attn.out_proj.weight"].T)
        m = F.rms_norm(h, (D,)) @ sd[b + "mlp.0.W"] + sd[b + "mlp.0.b"]
        h = h + (F.gelu(m) @ sd[b + "mlp.2.W"] + sd[b + "mlp.2.b"])
    z = h @ sd[pre + "_output_head.W"] + sd[pre + "_output_head.b"]
    return dict(zip(order, z.split([C[p] for p in order], -1)))


def reference_layerwise_ci(sd, acts):
    """Their MLPCiFn on the inner activations a = x V of each module."""
    out = {}
    for p, x in acts.items():
        a = x @ sd[f"_components.{dashed(p)}.V"]  # [..., C]
        pre = f"ci_fn._ci_fns.{dashed(p)}.layers."
        hidden = F.gelu(a[..., None] * sd[pre + "0.W"][:, 0, :] + sd[pre + "0.b"])  # [..., C, H]
        out[p] = (hidden * sd[pre + "2.W"][:, :, 0]).sum(-1) + sd[pre + "2.b"][:, 0]
    return out


def reference_vector_ci(sd, acts):
    """Their VectorMLPCiFn, one subcomponent at a time: MLP c maps the raw input x [..., d_in] to one logit."""
    out = {}
    for p, x in acts.items():
        pre = f"ci_fn._ci_fns.{dashed(p)}.layers."
        n_layers = len([k for k in sd if k.startswith(pre) and k.endswith(".W")])
        logits = []
        for c in range(C[p]):
            h = x
            for k in range(n_layers):
                h = h @ sd[f"{pre}{2 * k}.W"][c] + sd[f"{pre}{2 * k}.b"][c]
                h = F.gelu(h) if k < n_layers - 1 else h
            logits.append(h[..., 0])  # the last layer has one output
        out[p] = torch.stack(logits, -1)
    return out


def reference_shared_ci(sd, acts):
    """Their VectorSharedMLPCiFn: one MLP per module, x [..., d_in] -> [..., C], GELU between layers."""
    out = {}
    for p, x in acts.items():
        pre = f"ci_fn._ci_fns.{dashed(p)}.layers."
        n_layers = len([k for k in sd if k.startswith(pre) and k.endswith(".W")])
        h = x
        for k in range(n_layers):
            h = h @ sd[f"{pre}{2 * k}.W"] + sd[f"{pre}{2 * k}.b"]
            h = F.gelu(h) if k < n_layers - 1 else h
        out[p] = h
    return out


def reference_ci(sd, acts, ci_kind, C=C):
    if ci_kind == "global":
        return reference_global_ci(sd, acts, C)
    return {"layerwise": reference_layerwise_ci, "vector_mlp": reference_vector_ci, "shared_mlp": reference_shared_ci}[ci_kind](sd, acts)


def random_acts(seed=3, B=2, T=7):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randn(B, T, D_IN[p], generator=g) * 2 for p in PATHS}


def assert_matches_reference(decomposition, sd, ci_kind, C=C):
    for p in PATHS:
        comps = decomposition.get_components(p)
        V, U = sd[f"_components.{dashed(p)}.V"], sd[f"_components.{dashed(p)}.U"]
        assert torch.equal(comps.V, V) and torch.equal(comps.U, U)
        assert torch.allclose(comps.weight(), (V @ U).T)  # unmasked weight [d_out, d_in]
    acts = random_acts()
    expected = reference_ci(sd, acts, ci_kind, C)
    got = decomposition.ci_logits(acts)
    for p in PATHS:
        assert torch.allclose(got[p], expected[p], atol=1e-5), p


# ---------------------------------------------------------------------------- imports


@pytest.mark.parametrize("ci_kind", list(CI_CONFIGS))
@pytest.mark.parametrize("schema", ["spd", "param_decomp"])
def test_import_matches_reference_math(tmp_path, target, ci_kind, schema):
    """SPEC V8.1, SPEC V2.1 (the global CI transformer)."""
    ci = CI_CONFIGS[ci_kind]
    config, name = (spd_config(ci), "final_config.yaml") if schema == "spd" else (param_decomp_config(ci), "experiment_config.yaml")
    sd = reference_checkpoint(target, ci_kind)
    older = {k: v * 0 for k, v in sd.items()}  # an earlier checkpoint that must not be picked
    run = write_run(tmp_path / "run", name, config, {100: older, 2000: sd, 300: older})
    out = tmp_path / "out"
    decomposition = import_goodfire(run, out, target=target)
    assert decomposition.module_paths == PATHS
    assert decomposition.ci_config.type == OUR_CI_TYPE[ci_kind]
    assert_matches_reference(decomposition, sd, ci_kind)

    meta = yaml.safe_load((out / "decomposition.json").read_text())
    assert meta["format"] == "comptune-decomposition" and meta["provenance"]["step"] == 2000
    assert meta["provenance"]["checkpoint_file"].endswith("model_2000.pth")
    assert meta["provenance"]["schema"] == schema and meta["provenance"]["reference_config"] == config
    assert {p: m["C"] for p, m in meta["modules"].items()} == C
    decomposition.remove_hooks()
    reloaded = Decomposition.load(out, target)  # the saved folder is a normal comptune decomposition
    assert_matches_reference(reloaded, sd, ci_kind)


def test_ci_of_a_real_forward_uses_the_captured_activations(tmp_path, target):
    """SPEC V2.2."""
    sd = reference_checkpoint(target, "global")
    run = write_run(tmp_path / "run", "final_config.yaml", spd_config(GLOBAL_CI), {5: sd})
    decomposition = import_goodfire(run / "model_5.pth", tmp_path / "out", target=target)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    acts = {}
    hooks = [target.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: acts.__setitem__(p, a[0])) for p in PATHS]
    target(ids)
    for h in hooks:
        h.remove()
    ci = decomposition.causal_importance(ids).lower
    for p, z in reference_global_ci(sd, acts).items():
        assert torch.allclose(ci[p], z.clamp(0, 1), atol=1e-5)


def to_legacy(sd, era):
    """Rewrite a newest-layout state dict in an older key layout of the reference."""
    out = {}
    for k, v in sd.items():
        if era == "patched_model":  # Jul-Sep 2025: ComponentsOrModule wrappers, _gates
            if k.startswith("target_model."):
                path = k.removeprefix("target_model.").removesuffix(".weight")
                k = f"patched_model.{path}.original.weight" if path in PATHS else "patched_model." + k.removeprefix("target_model.")
            elif k.startswith("_components."):
                dpath, leaf = k.removeprefix("_components.").rsplit(".", 1)
                k = f"patched_model.{dpath.replace('-', '.')}.components.{leaf}"
            else:
                k = k.replace("ci_fn._ci_fns.", "_gates.")
        elif era == "top_level_ci_fns":  # Oct 2025
            k = k.replace("ci_fn._ci_fns.", "_ci_fns.")
        elif era == "first_release":  # June 2025: model.*, components.*.{A,B}, gates.*.{mlp_in,...}
            if k.startswith("target_model."):
                k = "model." + k.removeprefix("target_model.")
            elif k.startswith("_components."):
                k = "components." + k.removeprefix("_components.").replace(".V", ".A").replace(".U", ".B")
            else:
                continue
        out[k] = v
    if era == "first_release":
        for p in PATHS:
            pre = f"ci_fn._ci_fns.{dashed(p)}.layers."
            g = f"gates.{dashed(p)}."
            out[g + "mlp_in"] = sd[pre + "0.W"][:, 0, :]
            out[g + "in_bias"] = sd[pre + "0.b"]
            out[g + "mlp_out"] = sd[pre + "2.W"][:, :, 0]
            out[g + "out_bias"] = sd[pre + "2.b"][:, 0]
    return out


@pytest.mark.parametrize("era", ["patched_model", "top_level_ci_fns", "first_release"])
def test_legacy_key_layouts_import_the_same(tmp_path, target, era):
    """SPEC V8.1."""
    if era == "first_release":  # one C for every pattern; gates with n hidden neurons
        C_used = {p: 4 for p in PATHS}
        config = {
            "C": 4, "target_module_patterns": [p for p, _ in TARGETS], "n_ci_mlp_neurons": MLP_HIDDEN,
            "pretrained_model_class": TARGET_CLASS, "pretrained_model_path": "model.pth",
        }
    else:
        C_used, config = C, spd_config(LAYERWISE_CI)
    sd = reference_checkpoint(target, "layerwise", C_used)
    legacy = to_legacy(sd, era)
    assert set(legacy) != set(sd)  # really a different layout
    run = write_run(tmp_path / "run", "final_config.yaml", config, {7: legacy})
    decomposition = import_goodfire(run, tmp_path / "out", target=target)
    assert_matches_reference(decomposition, sd, "layerwise", C_used)
    assert decomposition.provenance["sigmoid_type"] == ("first_release" if era == "first_release" else "leaky_hard")


@pytest.mark.parametrize("fn_type, hidden", [("vector_mlp", [MLP_HIDDEN, 3]), ("shared_mlp", [])])
def test_older_schema_ci_fn_type_imports_vector_and_shared_mlps(tmp_path, target, fn_type, hidden):
    """SPEC V8.1. `ci_fn_type` / `ci_fn_hidden_dims` config fields and top-level `_ci_fns.` keys (Oct 2025); shared_mlp
    without hidden layers is one affine map x -> C."""
    config = {k: v for k, v in spd_config(LAYERWISE_CI).items() if k != "ci_config"}
    config.update(ci_fn_type=fn_type, ci_fn_hidden_dims=hidden)
    sd = reference_checkpoint(target, fn_type, hidden=hidden)
    run = write_run(tmp_path / "run", "final_config.yaml", config, {4: to_legacy(sd, "top_level_ci_fns")})
    decomposition = import_goodfire(run, tmp_path / "out", target=target)
    assert decomposition.ci_config.hidden_dims == hidden
    assert_matches_reference(decomposition, sd, fn_type)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    acts = {}  # the CI function reads the raw pre-weight activations of a real forward
    hooks = [target.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: acts.__setitem__(p, a[0])) for p in PATHS]
    target(ids)
    for h in hooks:
        h.remove()
    ci = decomposition.causal_importance(ids).lower
    for p, z in reference_ci(sd, acts, fn_type).items():
        assert torch.allclose(ci[p], z.clamp(0, 1), atol=1e-5)


def test_first_release_linear_gate_becomes_an_affine_ci(tmp_path, target):
    x = torch.randn(6, 3)
    out = normalize_keys({"gates.h-0-mlp-c_fc.weight": torch.tensor([2.0, -1.0, 0.5]), "gates.h-0-mlp-c_fc.bias": torch.tensor([0.1, 0.2, 0.3])})
    W, b = out["ci_fn._ci_fns.h-0-mlp-c_fc.layers.0.W"], out["ci_fn._ci_fns.h-0-mlp-c_fc.layers.0.b"]
    assert torch.allclose(torch.einsum("nci,cio->nco", x[..., None], W)[..., 0] + b[:, 0], x * torch.tensor([2.0, -1.0, 0.5]) + torch.tensor([0.1, 0.2, 0.3]))


def test_target_built_from_their_pretraining_run(tmp_path, target):
    """SPEC V8.2. No target_model.* in the checkpoint: the target comes from their pretrain dir and is saved beside the import."""
    pretrain = tmp_path / "pretrain"
    (pretrain / "checkpoints").mkdir(parents=True)
    (pretrain / "model_config.yaml").write_text(yaml.safe_dump(LLAMA_CONFIG))
    torch.save({k: v * 0 for k, v in target.state_dict().items()}, pretrain / "checkpoints" / "model_step_10.pt")
    torch.save({"_orig_mod." + k: v for k, v in target.state_dict().items()}, pretrain / "checkpoints" / "model_step_200.pt")
    sd = reference_checkpoint(target, "layerwise")
    sd = {k: v for k, v in sd.items() if not k.startswith("target_model.")}
    run = write_run(tmp_path / "run", "experiment_config.yaml", param_decomp_config(LAYERWISE_CI), {3: sd})
    out = tmp_path / "out"
    decomposition = import_goodfire(run, out, target_weights=pretrain)
    for k, v in target.state_dict().items():
        assert torch.equal(decomposition.target.state_dict()[k], v)
    assert_matches_reference(decomposition, sd, "layerwise")
    decomposition.remove_hooks()
    saved_target = ComptuneLMForCausalLM.from_pretrained(out / "target")
    Decomposition.load(out, saved_target)  # fingerprint of the saved target matches
    with pytest.raises(ValueError, match="no target_model"):
        import_goodfire(run, tmp_path / "out2")
    again = import_goodfire(run, tmp_path / "out3", target_weights=out / "target")  # our own HF folder works too
    assert_matches_reference(again, sd, "layerwise")


def test_hf_conv1d_target_from_a_local_folder(tmp_path):
    """A GPT-2 run (Conv1D weights [d_in, d_out], with biases): target given as a local HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    dims = {"transformer.h.0.attn.c_proj": (16, 16), "transformer.h.0.mlp.c_fc": (16, 64)}  # (d_in, d_out)
    g = torch.Generator().manual_seed(2)
    sd = {f"target_model.{k}": v.clone() for k, v in gpt2.state_dict().items()}
    for p, (d_in, d_out) in dims.items():
        pre = f"_components.{dashed(p)}."
        sd[pre + "V"], sd[pre + "U"] = torch.randn(d_in, 3, generator=g), torch.randn(3, d_out, generator=g)
        sd[pre + "bias"] = gpt2.get_submodule(p).bias.detach().clone()  # their frozen-bias buffer
        layers = f"ci_fn._ci_fns.{dashed(p)}.layers."
        sd[layers + "0.W"], sd[layers + "0.b"] = torch.randn(3, 1, 2, generator=g), torch.randn(3, 2, generator=g)
        sd[layers + "2.W"], sd[layers + "2.b"] = torch.randn(3, 2, 1, generator=g), torch.randn(3, 1, generator=g)
    config = {
        **spd_config({"mode": "layerwise", "fn_type": "mlp", "hidden_dims": [2]}),
        "module_info": [{"module_pattern": p, "C": 3} for p in dims],
        "pretrained_model_class": "transformers.GPT2LMHeadModel", "pretrained_model_name": "openai-community/gpt2",
    }
    run = write_run(tmp_path / "run", "final_config.yaml", config, {1: sd})
    with pytest.raises(ValueError, match="cannot build"):
        import_goodfire(run, tmp_path / "o")
    decomposition = import_goodfire(run, tmp_path / "out", target_weights=tmp_path / "gpt2")
    acts = {p: torch.randn(2, 5, d_in, generator=g) for p, (d_in, _) in dims.items()}
    expected = reference_layerwise_ci(sd, acts)
    for p in dims:
        comps = decomposition.get_components(p)
        assert comps.kind == "conv1d" and torch.equal(comps.V, sd[f"_components.{dashed(p)}.V"])
        assert torch.allclose(decomposition.ci_logits(acts)[p], expected[p], atol=1e-5)


def test_cli_imports_a_run(tmp_path, target, capsys):
    from comptune.cli import build_parser

    parser = build_parser()
    pretrain = tmp_path / "pretrain"
    (pretrain / "checkpoints").mkdir(parents=True)
    (pretrain / "model_config.yaml").write_text(yaml.safe_dump(LLAMA_CONFIG))
    torch.save(target.state_dict(), pretrain / "checkpoints" / "model_step_1.pt")
    sd = reference_checkpoint(target, "global")
    run = write_run(tmp_path / "run", "final_config.yaml", spd_config(GLOBAL_CI), {9: sd})
    args = parser.parse_args(["import-goodfire", str(run), "--out", str(tmp_path / "out"), "--target-weights", str(pretrain)])
    assert args.func(args) == 0
    assert "4 modules (16 subcomponents)" in capsys.readouterr().out
    loaded = Decomposition.load(tmp_path / "out", ComptuneLMForCausalLM.from_pretrained(tmp_path / "out" / "target"))
    assert_matches_reference(loaded, sd, "global")
    args = parser.parse_args(["import-goodfire", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        args.func(args)


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(tmp_path, target):
    sd = reference_checkpoint(target, "global")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    torch.save(sd, no_config / "model_1.pth")
    with pytest.raises(FileNotFoundError, match="final_config.yaml or experiment_config.yaml"):
        import_goodfire(no_config, tmp_path / "o", target=target)

    no_ckpt = write_run(tmp_path / "no_ckpt", "final_config.yaml", spd_config(GLOBAL_CI), {})
    with pytest.raises(FileNotFoundError, match=r"model_<step>\.pth"):
        import_goodfire(no_ckpt, tmp_path / "o", target=target)

    unknown = write_run(tmp_path / "unknown", "final_config.yaml", {"lr": 1.0, "model": "x"}, {1: sd})
    with pytest.raises(ValueError, match="no known Goodfire schema"):
        import_goodfire(unknown, tmp_path / "o", target=target)

    missing = dict(sd)
    del missing["_components.h-1-mlp-c_fc.U"]
    run = write_run(tmp_path / "missing", "final_config.yaml", spd_config(GLOBAL_CI), {1: missing})
    with pytest.raises(KeyError, match=r"_components\.h-1-mlp-c_fc"):
        import_goodfire(run, tmp_path / "o", target=target)

    no_head = {k: v for k, v in sd.items() if "_output_head" not in k}
    run = write_run(tmp_path / "no_head", "final_config.yaml", spd_config(GLOBAL_CI), {1: no_head})
    with pytest.raises(KeyError, match="output_head"):
        import_goodfire(run, tmp_path / "o", target=target)

    wrong_heads = spd_config({**GLOBAL_CI, "simple_transformer_ci_cfg": {**GLOBAL_CI["simple_transformer_ci_cfg"],
        "attn_config": {"n_heads": 1, "rope_base": ROPE_BASE}}})
    run = write_run(tmp_path / "heads", "final_config.yaml", wrong_heads, {1: sd})
    with pytest.raises(ValueError, match="n_heads or rope_base"):
        import_goodfire(run, tmp_path / "o", target=target)

    run = write_run(tmp_path / "global_mlp", "final_config.yaml", spd_config({"mode": "global", "fn_type": "global_shared_mlp", "hidden_dims": [4]}), {1: sd})
    with pytest.raises(ValueError, match="'global_shared_mlp'.*no comptune counterpart"):
        import_goodfire(run, tmp_path / "o", target=target)

    vector_sd = reference_checkpoint(target, "vector_mlp")  # config and checkpoint disagree on the CI type
    run = write_run(tmp_path / "mismatch", "final_config.yaml", spd_config(SHARED_CI), {1: vector_sd})
    with pytest.raises(ValueError, match=r"shared_mlp stores W \[in, out\]"):
        import_goodfire(run, tmp_path / "o", target=target)

    other = ComptuneLMForCausalLM(ComptuneLMConfig(**TINY)).eval()  # same shapes, other weights
    run = write_run(tmp_path / "other", "final_config.yaml", spd_config(GLOBAL_CI), {1: sd})
    with pytest.raises(ValueError, match="different model"):
        import_goodfire(run, tmp_path / "o", target=other)

    bad_pattern = spd_config(GLOBAL_CI)
    bad_pattern["module_info"].append({"module_pattern": "h.*.nothing", "C": 2})
    run = write_run(tmp_path / "pattern", "final_config.yaml", bad_pattern, {1: sd})
    with pytest.raises(ValueError, match="matches no module"):
        import_goodfire(run, tmp_path / "o", target=target)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = write_run(tmp_path / "evil", "final_config.yaml", spd_config(GLOBAL_CI), {1: {**sd, "x": Evil()}})
    with pytest.raises(ValueError, match="refused"):
        import_goodfire(run, tmp_path / "o", target=target)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------- target models


def reference_llama_simple_mlp_logits(model, ids, cfg):
    """Their LlamaSimpleMLP forward written from its definition: freq = base^(i/(rotary_dim/2)) repeated
    (not adjacent pairs), rotate-half, manual causal softmax attention, RMSNorm in fp32 then * weight,
    NewGELU (tanh), tied lm_head."""
    sd = model.state_dict()
    B, T = ids.shape
    D, H = cfg["n_embd"], cfg["n_head"]
    dh = D // H
    freq = cfg["rotary_base"] ** (torch.arange(dh // 2).float() / (dh / 2))
    angles = torch.arange(T).float()[:, None] / freq.repeat(2)[None]

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"]))

    def rot(x):
        return x * angles.cos() + torch.cat([-x[..., dh // 2 :], x[..., : dh // 2]], -1) * angles.sin()

    x = sd["wte.weight"][ids]
    causal = torch.tril(torch.ones(T, T)).bool()
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        a = rms(x, sd[p + "rms_1.weight"])
        q, k, v = ((a @ sd[f"{p}attn.{n}_proj.weight"].T).view(B, T, H, dh).transpose(1, 2) for n in "qkv")
        att = (rot(q) @ rot(k).transpose(-1, -2)) / math.sqrt(dh)
        att = torch.softmax(att.masked_fill(~causal, float("-inf")), -1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, D) @ sd[p + "attn.o_proj.weight"].T
        m = rms(x, sd[p + "rms_2.weight"]) @ sd[p + "mlp.c_fc.weight"].T
        m = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m**3)))
        x = x + m @ sd[p + "mlp.down_proj.weight"].T
    return rms(x, sd["ln_f.weight"]) @ sd["lm_head.weight"].T


def test_comptune_model_computes_their_llama_simple_mlp(target):
    config = comptune_config_from_llama_simple_mlp(LLAMA_CONFIG)
    assert (config.d_model, config.n_head, config.d_mlp, config.n_layer, config.n_ctx) == (16, 2, 32, 2, 16)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(target(ids).logits, reference_llama_simple_mlp_logits(target, ids, LLAMA_CONFIG), atol=1e-5)


def test_unrepresentable_llama_simple_mlp_is_refused():
    """SPEC V8.2."""
    with pytest.raises(ValueError, match="3 KV heads, which do not divide its 2 query heads"):
        comptune_config_from_llama_simple_mlp({**LLAMA_CONFIG, "n_key_value_heads": 3})
    with pytest.raises(ValueError, match="biases"):
        comptune_config_from_llama_simple_mlp({**LLAMA_CONFIG, "mlp_bias": True})


def test_pile_4l_target_has_the_paper_architecture():
    """SPEC V8.2."""
    model = build_pile_4l_target()
    cfg = model.config
    assert (cfg.vocab_size, cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_mlp, cfg.n_ctx) == (50277, 4, 768, 6, 3072, 512)
    assert (cfg.rope_base, cfg.rms_eps, cfg.tie_word_embeddings) == (10000.0, 1e-6, True)
    assert model.lm_head.weight is model.wte.weight
    assert 66.5e6 < sum(p.numel() for p in model.parameters()) < 67.5e6
    # the reference pretrain config of that model maps onto the same architecture
    reference = dict(
        model_type="LlamaSimpleMLP", attn_bias=False, block_size=512, flash_attention=False, mlp_bias=False, n_ctx=512,
        n_embd=768, n_head=6, n_intermediate=3072, n_key_value_heads=6, n_layer=4, rms_norm_eps=1e-6,
        rotary_adjacent_pairs=False, rotary_base=10000, rotary_dim=128, use_grouped_query_attention=True, vocab_size=50277,
    )
    assert _comptune_shapes(comptune_config_from_llama_simple_mlp(reference)) == _comptune_shapes(ComptuneLMConfig(**PILE_4L))


def test_target_in_checkpoint_other_than_pile_4l_needs_its_config(tmp_path, target):
    run = write_run(tmp_path / "run", "final_config.yaml", spd_config(LAYERWISE_CI), {1: reference_checkpoint(target, "layerwise")})
    with pytest.raises(ValueError, match="other than the paper's Pile 4L"):
        import_goodfire(run, tmp_path / "o")


@pytest.mark.slow
def test_pile_4l_target_is_built_from_the_checkpoint_alone(tmp_path):
    """The paper's run layout: the 67M target only inside the checkpoint, as target_model.*."""
    torch.manual_seed(0)
    pile = build_pile_4l_target()
    g = torch.Generator().manual_seed(1)
    sd = {f"target_model.{k}": v for k, v in pile.state_dict().items()}
    sd["_components.h-3-attn-v_proj.V"] = torch.randn(768, 8, generator=g)
    sd["_components.h-3-attn-v_proj.U"] = torch.randn(8, 768, generator=g)
    for name, shape in (("0.W", (8, 1, 4)), ("0.b", (8, 4)), ("2.W", (8, 4, 1)), ("2.b", (8, 1))):
        sd[f"ci_fn._ci_fns.h-3-attn-v_proj.layers.{name}"] = torch.randn(*shape, generator=g)
    config = {**spd_config(LAYERWISE_CI), "module_info": [{"module_pattern": "h.3.attn.v_proj", "C": 8}]}
    run = write_run(tmp_path / "run", "final_config.yaml", config, {400000: sd})
    decomposition = import_goodfire(run, tmp_path / "out")
    assert decomposition.target.config.n_head == 6
    assert torch.equal(decomposition.target_weight("h.3.attn.v_proj"), pile.h[3].attn.v_proj.weight)
    assert torch.equal(decomposition.get_components("h.3.attn.v_proj").U, sd["_components.h-3-attn-v_proj.U"])
    assert decomposition.provenance["saved_to"] == "target" and (tmp_path / "out" / "target" / "config.json").is_file()


GQA_FIXTURE = Path(__file__).parent / "fixtures" / "goodfire_gqa"  # made by scripts/make_goodfire_gqa_fixture.py with their code


def test_gqa_target_computes_what_their_llama_simple_mlp_computes():
    """SPEC V8.2. Their grouped-query target (4 query heads sharing 2 KV heads), built by comptune
    from their pretraining-run files, gives the logits *their* forward recorded (their code, commit
    in the fixture's provenance.json)."""
    from safetensors.torch import load_file

    model_config, sd, _ = read_pretrain_run(GQA_FIXTURE)
    config = comptune_config_from_llama_simple_mlp(model_config)
    assert (config.n_head, config.n_kv_head, config.num_key_value_heads) == (4, 2, 2)
    model = ComptuneLMForCausalLM(config).eval()
    load_target_weights(model, sd, what="fixture")
    ref = load_file(str(GQA_FIXTURE / "reference.safetensors"))
    with torch.no_grad():
        ours = model(ref["input_ids"]).logits
    assert (ours - ref["logits"]).abs().max().item() < 1e-5
    # the KV sharing matters: the same weights with each KV head's neighbour swapped in give other logits
    swapped = {k: (v.view(2, 8, -1).flip(0).reshape(v.shape) if k.endswith(("k_proj.weight", "v_proj.weight")) else v) for k, v in sd.items()}
    load_target_weights(model, swapped, what="swapped fixture")
    with torch.no_grad():
        assert (model(ref["input_ids"]).logits - ref["logits"]).abs().max().item() > 1e-2


def test_a_decomposition_of_a_gqa_target_imports_through_the_cli(tmp_path, capsys):
    """SPEC V8.1. A run that decomposes the narrower k/v projections of a GQA target imports, with the
    target built from their pretraining run and saved inside the imported folder."""
    from comptune.cli import main

    g = torch.Generator().manual_seed(3)
    paths = {"h.0.attn.k_proj": (32, 16), "h.1.attn.v_proj": (32, 16), "h.1.attn.q_proj": (32, 32)}
    sd = {}
    for p, (d_in, d_out) in paths.items():
        sd[f"_components.{dashed(p)}.V"] = torch.randn(d_in, 4, generator=g) / 4
        sd[f"_components.{dashed(p)}.U"] = torch.randn(4, d_out, generator=g) / 2
        pre = f"ci_fn._ci_fns.{dashed(p)}.layers."
        sd[pre + "0.W"], sd[pre + "0.b"] = torch.randn(4, 1, MLP_HIDDEN, generator=g), torch.randn(4, MLP_HIDDEN, generator=g)
        sd[pre + "2.W"], sd[pre + "2.b"] = torch.randn(4, MLP_HIDDEN, 1, generator=g), torch.randn(4, 1, generator=g)
    config = param_decomp_config(LAYERWISE_CI)
    config["pd"]["decomposition_targets"] = [{"module_pattern": p, "C": 4} for p in paths]
    run = write_run(tmp_path / "run", "experiment_config.yaml", config, {7: sd})
    assert main(["import-goodfire", str(run), "--target-weights", str(GQA_FIXTURE), "--out", str(tmp_path / "out")]) == 0
    model = ComptuneLMForCausalLM.from_pretrained(tmp_path / "out" / "target")
    assert model.config.n_kv_head == 2
    decomposition = Decomposition.load(tmp_path / "out", model)
    for p, (d_in, d_out) in paths.items():
        comps = decomposition.get_components(p)
        assert comps.V.shape == (d_in, 4) and comps.U.shape == (4, d_out)
        assert torch.equal(comps.V, sd[f"_components.{dashed(p)}.V"])


class ReturnsLogitsAndLoss(ComptuneLMForCausalLM):
    """Their calling convention: forward(idx) -> (logits, loss), same parameter names."""

    def forward(self, idx, **kwargs):
        return super().forward(idx).logits, None


def test_a_target_returning_logits_and_loss_is_accepted_as_it_is(tmp_path, target):
    """SPEC V8.1. Goodfire's targets return (logits, loss); `target=` takes such a module unchanged."""
    theirs = ReturnsLogitsAndLoss(target.config).eval()
    theirs.load_state_dict(target.state_dict())
    sd = reference_checkpoint(target, "global")
    run = write_run(tmp_path / "run", "final_config.yaml", spd_config(GLOBAL_CI), {5: sd})
    decomposition = import_goodfire(run, tmp_path / "out", target=theirs)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(decomposition.target_logits(ids), target(ids).logits)
        ci = decomposition.causal_importance(ids).lower
    assert set(ci) == set(PATHS) and all(v.shape[:2] == (2, 9) for v in ci.values())


def test_the_target_named_by_the_run_is_found_when_it_is_local(tmp_path, capsys):
    """SPEC V8.2. A run whose config names a local pretraining run imports without --target-weights; one
    naming a W&B run says which run it names and what to pass."""
    from comptune.cli import main

    g = torch.Generator().manual_seed(5)
    sd = {"_components.h-1-attn-v_proj.V": torch.randn(32, 3, generator=g), "_components.h-1-attn-v_proj.U": torch.randn(3, 16, generator=g)}
    pre = "ci_fn._ci_fns.h-1-attn-v_proj.layers."
    sd.update({pre + "0.W": torch.randn(3, 1, MLP_HIDDEN, generator=g), pre + "0.b": torch.randn(3, MLP_HIDDEN, generator=g),
               pre + "2.W": torch.randn(3, MLP_HIDDEN, 1, generator=g), pre + "2.b": torch.randn(3, 1, generator=g)})
    config = spd_config(LAYERWISE_CI)
    config["module_info"] = [{"module_pattern": "h.1.attn.v_proj", "C": 3}]
    config["pretrained_model_name"] = str(GQA_FIXTURE)
    run = write_run(tmp_path / "run", "final_config.yaml", config, {2: sd})
    assert main(["import-goodfire", str(run), "--out", str(tmp_path / "out")]) == 0
    meta = yaml.safe_load((tmp_path / "out" / "decomposition.json").read_text())
    assert "names it" in json.dumps(meta["provenance"])
    assert ComptuneLMForCausalLM.from_pretrained(tmp_path / "out" / "target").config.n_kv_head == 2

    config["pretrained_model_name"] = "wandb:goodfire/spd/runs/abc123"
    run2 = write_run(tmp_path / "run2", "final_config.yaml", config, {2: sd})
    assert main(["import-goodfire", str(run2), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "the target the run names (wandb:goodfire/spd/runs/abc123) is not a file or folder on this machine" in err and "--target-weights" in err
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------------------- runs made by their trainer

# Made by scripts/make_goodfire_decomposition_fixture.py: their torch-era trainer (param-decomp @ b675341,
# `param_decomp.optimize.Trainer`) decomposed the GQA target for 30 steps on the CPU with Δ on; each folder
# holds what it wrote (experiment_config.yaml + model_30.pth) and what their code computed from those files
# on a fixed batch (reference.safetensors). The target is their pretraining-run layout in goodfire_run_target.
FIXTURES = Path(__file__).parent / "fixtures"
THEIR_RUNS = {ci: FIXTURES / f"goodfire_run_{ci}" for ci in ("shared_mlp", "global_shared_transformer")}
THEIR_TARGET_RUN = FIXTURES / "goodfire_run_target"
OUR_TYPE_OF_THEIRS = {"shared_mlp": "shared_mlp", "global_shared_transformer": "global_transformer"}
TOL = 1e-5


def their_reference(ci_type):
    from safetensors.torch import load_file

    return load_file(str(THEIR_RUNS[ci_type] / "reference.safetensors"))


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def assert_reproduces_their_run(decomposition, ref):
    """Every tensor their code recorded, recomputed by comptune's Decomposition to ≤ TOL."""
    ids = ref["input_ids"]
    paths = decomposition.module_paths
    assert paths == sorted(k.removeprefix("ci_lower.") for k in ref if k.startswith("ci_lower."))
    B, T = ids.shape
    with torch.no_grad():
        assert max_diff(decomposition.target_logits(ids), ref["target_logits"]) <= TOL
        ci = decomposition.causal_importance(ids)
        assert max_diff(ci.target_logits, ref["target_logits"]) <= TOL
        z = decomposition.ci_logits(ci.pre_weight_acts)
        for p in paths:
            assert max_diff(ci.pre_weight_acts[p], ref[f"pre_weight_acts.{p}"]) <= TOL, p
            assert max_diff(decomposition.get_components(p).inner_acts(ci.pre_weight_acts[p]), ref[f"inner_acts.{p}"]) <= TOL, p
            assert max_diff(z[p], ref[f"ci_pre_sigmoid.{p}"]) <= TOL, p
            assert max_diff(ci.lower[p], ref[f"ci_lower.{p}"]) <= TOL, p
            assert max_diff(ci.upper[p], ref[f"ci_upper.{p}"]) <= TOL, p
        ones = {p: torch.ones(B, T, decomposition.C(p)) for p in paths}
        all_delta = {p: torch.ones(B, T) for p in paths}
        assert max_diff(decomposition.masked_logits(ids, ones, all_delta), ref["unmasked_delta_logits"]) <= TOL
        assert max_diff(decomposition.masked_logits(ids, ones), ref["unmasked_logits"]) <= TOL
        assert max_diff(decomposition.masked_logits(ids, ci.lower), ref["ci_masked_logits"]) <= TOL
        masks = {p: ref[f"random_mask.{p}"] for p in paths}
        delta_masks = {p: ref[f"random_delta_mask.{p}"] for p in paths}
        routing = {p: ref[f"random_routing.{p}"] for p in paths}
        assert max_diff(decomposition.masked_logits(ids, masks, delta_masks), ref["random_masked_logits"]) <= TOL
        assert max_diff(decomposition.masked_logits(ids, masks, delta_masks, routing), ref["random_routed_logits"]) <= TOL


@pytest.mark.parametrize("ci_type", list(THEIR_RUNS))
def test_their_trainers_runs_exercise_what_they_claim(ci_type):
    """The fixtures are no degenerate case: their checkpoint is in the newest key layout, every module
    of both GQA layers is decomposed (k/v narrower than q), the CI logits fall below 0, inside (0, 1)
    and above 1 (both sigmoids' branches), Δ and the masks change the output, and routing is mixed."""
    ref = their_reference(ci_type)
    sd = torch.load(THEIR_RUNS[ci_type] / "model_30.pth", map_location="cpu", weights_only=True)
    assert normalize_keys(sd).keys() == sd.keys()  # target_model.*, _components.*, ci_fn.* as written
    prefix = "ci_fn._ci_fns." if ci_type == "shared_mlp" else "ci_fn._global_ci_fn."
    assert any(k.startswith(prefix) for k in sd) and any(k.startswith("target_model.") for k in sd)
    assert sd["_components.h-0-attn-k_proj.U"].shape == (6, 16) and sd["_components.h-0-attn-q_proj.U"].shape == (8, 32)
    z = torch.cat([v.flatten() for k, v in ref.items() if k.startswith("ci_pre_sigmoid.")])
    assert (z < 0).any() and ((z > 0) & (z < 1)).any() and (z > 1).any()
    target = ref["target_logits"]
    for name in ("unmasked_logits", "ci_masked_logits", "random_masked_logits", "random_routed_logits"):
        assert max_diff(ref[name], target) > 1e-2, name
    assert max_diff(ref["unmasked_delta_logits"], target) < 1e-5  # every mask 1 with Δ is the target (SPEC V1.3)
    routing = torch.stack([v for k, v in ref.items() if k.startswith("random_routing.")])
    assert routing.any() and not routing.all()
    their_target = torch.load(THEIR_TARGET_RUN / "checkpoints" / "model_step_1.pt", weights_only=True)
    gqa_target = torch.load(GQA_FIXTURE / "checkpoints" / "model_step_1.pt", weights_only=True)
    assert their_target.keys() == gqa_target.keys() and all(torch.equal(their_target[k], gqa_target[k]) for k in gqa_target)


@pytest.mark.parametrize("ci_type", list(THEIR_RUNS))
def test_a_run_of_their_trainer_imports_through_the_cli_and_reproduces_their_outputs(tmp_path, monkeypatch, capsys, ci_type):
    """SPEC V8.1, V8.2, V1.2, V1.3, V2.1, V2.3, V3.2. A run written by their trainer, imported with no flag:
    the target is the one its config names (their repo-relative `target.spec.run_path`, a pretraining
    checkpoint file), built and saved inside the imported folder; components, CI values, inner
    activations and every masked output they recorded are reproduced to 1e-5."""
    from comptune.cli import main

    monkeypatch.chdir(Path(__file__).parents[1])  # their run_path is relative to the checkout the run was launched from
    out = tmp_path / "out"
    assert main(["import-goodfire", str(THEIR_RUNS[ci_type]), "--out", str(out)]) == 0
    assert "12 modules (100 subcomponents)" in capsys.readouterr().out
    meta = json.loads((out / "decomposition.json").read_text())
    assert meta["provenance"]["step"] == 30 and meta["provenance"]["ci_fn_type"] == ci_type
    assert "names it" in meta["provenance"]["found_by"] and meta["provenance"]["saved_to"] == "target"
    model = ComptuneLMForCausalLM.from_pretrained(out / "target")
    assert (model.config.n_head, model.config.n_kv_head) == (4, 2)
    decomposition = Decomposition.load(out, model)
    assert decomposition.ci_config.type == OUR_TYPE_OF_THEIRS[ci_type]
    sd = torch.load(THEIR_RUNS[ci_type] / "model_30.pth", map_location="cpu", weights_only=True)
    for p in decomposition.module_paths:
        comps = decomposition.get_components(p)
        assert torch.equal(comps.V, sd[f"_components.{dashed(p)}.V"]) and torch.equal(comps.U, sd[f"_components.{dashed(p)}.U"])
    assert_reproduces_their_run(decomposition, their_reference(ci_type))


@pytest.mark.parametrize("ci_type", list(THEIR_RUNS))
def test_a_run_of_their_trainer_imports_through_the_api_and_reproduces_their_outputs(tmp_path, monkeypatch, ci_type):
    """SPEC V8.1, V8.2, V2.1. The same through `import_goodfire`, with the target from their pretraining run
    (`target_weights=`), and again from the saved folder; a run folder as their trainer leaves it
    (`training_<step>.pth` and `metrics.jsonl` beside the checkpoint) imports the same."""
    run = tmp_path / "run"
    shutil.copytree(THEIR_RUNS[ci_type], run)
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    torch.save({"step": 30, "component_model": {}, "pd_config": {"seed": 0}}, run / "training_30.pth")
    decomposition = import_goodfire(run, tmp_path / "out", target_weights=THEIR_TARGET_RUN)
    assert decomposition.provenance["checkpoint_file"].endswith("model_30.pth")
    ref = their_reference(ci_type)
    assert_reproduces_their_run(decomposition, ref)
    decomposition.remove_hooks()
    reloaded = Decomposition.load(tmp_path / "out", ComptuneLMForCausalLM.from_pretrained(tmp_path / "out" / "target"))
    assert_reproduces_their_run(reloaded, ref)
    monkeypatch.chdir(tmp_path)  # elsewhere the repo-relative target path does not resolve: the error says what to pass
    with pytest.raises(ValueError, match=r"goodfire_run_target/checkpoints/model_step_1\.pt\) is not a file or folder.*--target-weights"):
        import_goodfire(run, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
