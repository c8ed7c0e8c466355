"""ComponentScale adapter: forward = masked decomposed forward, merge / LoRA export exactness,
save/load, bad input; SVD- and neuron-scale bases; the peft LoRA baselines."""

import json
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from comptune.decomposition import CIConfig, Decomposition
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tuning import (
    Components,
    ComponentScaleConfig,
    Selection,
    TuneConfig,
    apply_component_scale,
    build_method,
    linear_module_paths,
    load_adapter,
    module_keys,
    svd_components,
)

torch.set_num_threads(1)

V_SIZE, C = 64, 12
DECOMPOSED = ["h.0.attn.q_proj", "h.0.mlp.c_fc", "h.1.attn.v_proj", "h.1.mlp.down_proj"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=V_SIZE, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)).eval()


def random_components(model, seed=1):
    """A stand-in decomposition: random rank-1 subcomponents; Δ = W − (VU)ᵀ carries the rest."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for path in DECOMPOSED:
        lin = model.get_submodule(path)
        out[path] = Components(torch.randn(lin.in_features, C, generator=g) / lin.in_features**0.5, torch.randn(C, lin.out_features, generator=g) / C**0.5)
    return out


def ids_batch(seed=2, B=3, T=16):
    return torch.randint(0, V_SIZE, (B, T), generator=torch.Generator().manual_seed(seed))


KEYS = ["h.1.attn.v_proj:5", "h.1.attn.v_proj:0", "h.0.mlp.c_fc:11"]
SCALES = {"h.1.attn.v_proj:5": -1.5, "h.1.attn.v_proj:0": 0.25, "h.0.mlp.c_fc:11": 4.0}  # exact in fp32


def edited(model=None, comps=None, keys=KEYS, scales=SCALES, ci_threshold=None):
    model = model or tiny_model()
    comps = comps or random_components(model)
    wrapped = apply_component_scale(model, comps, ComponentScaleConfig(keys=keys, ci_threshold=ci_threshold))
    wrapped.set_scales(scales)
    return wrapped, comps


def tiny_decomposition(model):
    """A real (untrained) Decomposition of three matrices with a small layerwise CI function."""
    torch.manual_seed(3)
    return Decomposition.create(model, {"h.*.attn.v_proj": C, "h.0.mlp.c_fc": C}, CIConfig(type="layerwise_mlp"))


def scaled_masks(dec, ids, scales, gate=None):
    """Masks 1 everywhere except the scaled subcomponents, which get s (where `gate` is on)."""
    masks = {p: torch.ones(*ids.shape, C) for p in dec.module_paths}
    for key, s in scales.items():
        path, idx = key.rsplit(":", 1)
        on = torch.ones(ids.shape, dtype=torch.bool) if gate is None else gate[path][..., int(idx)]
        masks[path][..., int(idx)] = torch.where(on, torch.tensor(s), torch.tensor(1.0))
    return masks


def test_forward_equals_decomposition_masked_logits_with_delta():
    """SEMANTICS S2.1."""
    ids = ids_batch()
    dec = tiny_decomposition(tiny_model())
    with torch.no_grad():
        ref = dec.masked_logits(ids, scaled_masks(dec, ids, SCALES), delta_masks={p: torch.ones(ids.shape) for p in dec.module_paths})
    wrapped = apply_component_scale(tiny_model(), dec, ComponentScaleConfig(keys=KEYS))  # another instance of the same model
    wrapped.set_scales(SCALES)
    with torch.no_grad():
        assert torch.allclose(wrapped(input_ids=ids).logits, ref, atol=1e-5)
    assert wrapped.provenance["target"]["fingerprint"] == dec.metadata()["target"]["fingerprint"]
    with pytest.raises(ValueError, match="made for a different model"):
        apply_component_scale(tiny_model(seed=5), dec, ComponentScaleConfig(keys=KEYS))


def test_ci_gated_scaling_computes_ci_once_per_batch(monkeypatch):
    ids = ids_batch()
    model = tiny_model()
    dec = tiny_decomposition(model)
    threshold = 0.05
    scales = {"h.1.attn.v_proj:5": -1.5, "h.0.attn.v_proj:11": 0.25, "h.0.mlp.c_fc:5": 4.0}
    with torch.no_grad():
        gate = {p: ci > threshold for p, ci in dec.causal_importance(ids).lower.items()}
        ref = dec.masked_logits(ids, scaled_masks(dec, ids, scales, gate), delta_masks={p: torch.ones(ids.shape) for p in dec.module_paths})
    for key in scales:  # the gates really vary over positions
        path, idx = key.rsplit(":", 1)
        assert 0 < gate[path][..., int(idx)].float().mean() < 1
    # edit the decomposition's own target in place: CI must still come from the clean model
    wrapped = apply_component_scale(model, dec, ComponentScaleConfig(keys=list(scales), ci_threshold=threshold))
    wrapped.set_scales(scales)
    calls = []
    original = dec.causal_importance
    monkeypatch.setattr(dec, "causal_importance", lambda x: calls.append(x.shape) or original(x))
    with torch.no_grad():
        out = wrapped(input_ids=ids).logits
    assert calls == [ids.shape]
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.no_grad(), wrapped.disable_adapter():
        assert torch.allclose(wrapped(input_ids=ids).logits, dec.target_logits(ids), atol=0)
    assert len(calls) == 1  # no CI when the edit is off


def test_gates_from_precomputed_ci():
    ids = ids_batch()
    dec = tiny_decomposition(tiny_model())
    ci = {p: torch.rand(*ids.shape, C, generator=torch.Generator().manual_seed(7)) for p in dec.module_paths}
    gate = {p: v > 0.5 for p, v in ci.items()}
    with torch.no_grad():
        ref = dec.masked_logits(ids, scaled_masks(dec, ids, SCALES, gate), delta_masks={p: torch.ones(ids.shape) for p in dec.module_paths})
    wrapped = apply_component_scale(tiny_model(), dec, ComponentScaleConfig(keys=KEYS, ci_threshold=0.5))
    wrapped.set_scales(SCALES)
    with torch.no_grad(), wrapped.gated(wrapped.gates_from_ci(ci)):
        assert torch.allclose(wrapped(input_ids=ids).logits, ref, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be merged"):
        wrapped.merge_and_unload()
    # plain components carry no CI function: a gated adapter on them needs explicit gates
    no_ci, _ = edited(ci_threshold=0.5)
    with pytest.raises(ValueError, match="needs the decomposition"):
        no_ci(input_ids=ids)


def test_ci_gate_at_threshold_zero_is_the_ungated_edit_where_ci_is_positive_and_no_edit_elsewhere():
    """SEMANTICS S2.3."""
    ids = ids_batch()
    path = "h.1.attn.v_proj"
    keys = [k for k in KEYS if k.startswith(path)]
    g = torch.Generator().manual_seed(5)
    ci = {p: torch.rand(*ids.shape, C, generator=g) * (torch.rand(*ids.shape, C, generator=g) > 0.5) for p in DECOMPOSED}  # half exactly 0

    def layer_output(ci_threshold, gates=None, disabled=False):
        wrapped, _ = edited(keys=keys, scales={k: SCALES[k] for k in keys}, ci_threshold=ci_threshold)
        out = {}
        wrapped.model.get_submodule(path).register_forward_hook(lambda m, a, o: out.setdefault("y", o))
        with torch.no_grad(), (wrapped.gated(wrapped.gates_from_ci(gates)) if gates else wrapped.disable_adapter() if disabled else nullcontext()):
            wrapped(input_ids=ids)
        return out["y"]

    gated = layer_output(0.0, gates=ci)
    ungated, base = layer_output(None), layer_output(None, disabled=True)
    idx = [int(k.rsplit(":", 1)[1]) for k in keys]
    on = (ci[path][..., idx] > 0).any(-1)  # positions where some scaled subcomponent has CI > 0
    assert 0 < on.float().mean() < 1
    # wherever all the scaled subcomponents have CI > 0 the gated edit is the ungated one; where none has, the layer is the base
    all_on, none_on = (ci[path][..., idx] > 0).all(-1), ~on
    assert torch.allclose(gated[all_on], ungated[all_on], atol=1e-6) and not torch.allclose(ungated[all_on], base[all_on], atol=1e-3)
    assert torch.allclose(gated[none_on], base[none_on], atol=1e-6)


def test_the_wrapped_model_answers_like_the_model_it_wraps():
    """SEMANTICS S2.1. `config`, `generate` and evaluation reach the wrapped model, as on a PeftModel; the adapter's
    own settings are `scale_config`."""
    from comptune.evaluation import evaluate_ce

    model = tiny_model()
    wrapped, _ = edited(model=model)
    assert wrapped.config is model.config and wrapped.scale_config == ComponentScaleConfig(keys=KEYS)
    ids = ids_batch()
    with torch.no_grad():
        live = evaluate_ce(wrapped, {"x": ids}).datasets["x"].ce
        out = wrapped.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)
    merged = wrapped.merge_and_unload()
    assert abs(evaluate_ce(merged, {"x": ids}).datasets["x"].ce - live) < 1e-5
    with pytest.raises(AttributeError, match="no_such_attribute"):
        wrapped.no_such_attribute


def test_disable_adapter_and_unload_restore_the_original():
    ids = ids_batch()
    with torch.no_grad():
        base = tiny_model()(input_ids=ids).logits
    wrapped, _ = edited()
    with torch.no_grad(), wrapped.disable_adapter():
        assert torch.equal(wrapped(input_ids=ids).logits, base)
    assert [n for n, p in wrapped.named_parameters() if p.requires_grad] == [
        "model.h.0.mlp.c_fc.scale", "model.h.1.attn.v_proj.scale"
    ]
    model = wrapped.unload()
    assert all(isinstance(model.get_submodule(p), nn.Linear) for p in DECOMPOSED)
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)


def test_layer_merge_and_unmerge():
    ids = ids_batch()
    wrapped, _ = edited()
    layer = wrapped.model.get_submodule("h.1.attn.v_proj")
    w0 = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        edited_logits = wrapped(input_ids=ids).logits
        for path in ("h.1.attn.v_proj", "h.0.mlp.c_fc"):
            wrapped.model.get_submodule(path).merge()
        assert torch.allclose(wrapped(input_ids=ids).logits, edited_logits, atol=1e-5)
        assert not torch.allclose(layer.base_layer.weight, w0)
        for path in ("h.1.attn.v_proj", "h.0.mlp.c_fc"):
            wrapped.model.get_submodule(path).unmerge()
    assert torch.allclose(layer.base_layer.weight, w0, atol=1e-6)


def test_l1_penalty_and_module_keys():
    model = tiny_model()
    comps = random_components(model)
    keys = module_keys(comps, ["h.1.attn.v_proj"])
    assert keys == [f"h.1.attn.v_proj:{c}" for c in range(C)]
    wrapped = apply_component_scale(model, comps, ComponentScaleConfig(keys=keys))
    assert float(wrapped.l1_penalty().detach()) == 0.0
    wrapped.set_scales({"h.1.attn.v_proj:3": -1.0, "h.1.attn.v_proj:7": 1.5})
    assert float(wrapped.l1_penalty().detach()) == pytest.approx(2.5)
    assert wrapped.scales()["h.1.attn.v_proj:3"] == -1.0


def test_merge_equals_adapter_and_loads_in_transformers(tmp_path):
    ids = ids_batch()
    wrapped, _ = edited()
    with torch.no_grad():
        adapter_logits = wrapped(input_ids=ids).logits
    merged = wrapped.merge_and_unload()
    assert all(isinstance(merged.get_submodule(p), nn.Linear) for p in DECOMPOSED)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapter_logits, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    save_file({"ids": ids, "logits": adapter_logits}, str(tmp_path / "expected.safetensors"))
    # a fresh interpreter in which comptune cannot be imported: transformers alone must load it
    script = f"""
import sys
class NoComptune:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "comptune":
            raise ImportError("comptune is blocked in this check")
sys.meta_path.insert(0, NoComptune())
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "merged")!r}, trust_remote_code=True).eval()
expected = load_file({str(tmp_path / "expected.safetensors")!r})
with torch.no_grad():
    print(float((model(input_ids=expected["ids"]).logits - expected["logits"]).abs().max()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


def test_export_peft_lora_gives_the_same_logits(tmp_path):
    """SEMANTICS S2.2."""
    from peft import PeftModel

    ids = ids_batch()
    wrapped, _ = edited()  # rank 2 on v_proj, rank 1 on c_fc: exercises peft's rank_pattern
    with torch.no_grad():
        adapter_logits = wrapped(input_ids=ids).logits
    wrapped.export_peft_lora(tmp_path / "lora")
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and sorted(cfg["target_modules"]) == ["h.0.mlp.c_fc", "h.1.attn.v_proj"]
    peft_model = PeftModel.from_pretrained(tiny_model(), tmp_path / "lora").eval()
    lora_v = peft_model.base_model.model.get_submodule("h.1.attn.v_proj")
    assert lora_v.r["default"] == 2 and lora_v.scaling["default"] == 1.0
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, adapter_logits, atol=1e-5)


def test_conv1d_layers_forward_merge_and_lora_export(tmp_path):
    """SPEC V1.1 (Conv1D), SEMANTICS S2.2."""
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=V_SIZE, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()

    model = gpt2()
    g = torch.Generator().manual_seed(3)
    paths = ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    comps = {}
    for p in paths:
        d_in, d_out = model.get_submodule(p).weight.shape  # Conv1D stores [d_in, d_out]
        comps[p] = Components(torch.randn(d_in, 6, generator=g) * 0.2, torch.randn(6, d_out, generator=g) * 0.2)
    ids = ids_batch()
    wrapped = apply_component_scale(model, comps, ComponentScaleConfig(keys=["transformer.h.0.attn.c_attn:2", "transformer.h.1.mlp.c_proj:4"]))
    wrapped.set_scales({"transformer.h.0.attn.c_attn:2": -2.0, "transformer.h.1.mlp.c_proj:4": 3.0})
    with torch.no_grad():
        adapter_logits = wrapped(input_ids=ids).logits
        # explicit edited weights: Conv1D W' = W + (s − 1) v uᵀ in its [d_in, d_out] layout
        ref_model = gpt2()
        for p, idx, s in (("transformer.h.0.attn.c_attn", 2, -2.0), ("transformer.h.1.mlp.c_proj", 4, 3.0)):
            V, U = comps[p]
            ref_model.get_submodule(p).weight += (s - 1) * torch.outer(V[:, idx], U[idx])
        assert torch.allclose(ref_model(input_ids=ids).logits, adapter_logits, atol=1e-5)
    wrapped.export_peft_lora(tmp_path / "lora")
    peft_model = PeftModel.from_pretrained(gpt2(), tmp_path / "lora").eval()
    merged = wrapped.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, adapter_logits, atol=1e-5)
        assert torch.allclose(merged(input_ids=ids).logits, adapter_logits, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    ids = ids_batch()
    model = tiny_model()
    dec = tiny_decomposition(model)
    dec.save(tmp_path / "dec")
    wrapped = apply_component_scale(model, dec, ComponentScaleConfig(keys=KEYS), decomposition_dir=tmp_path / "dec")
    wrapped.set_scales(SCALES)
    with torch.no_grad():
        adapter_logits = wrapped(input_ids=ids).logits
    wrapped.save_adapter(tmp_path / "ad")
    meta = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert meta["config"]["keys"] == KEYS and meta["scales"] == SCALES and "s < 0 inverts" in meta["sign_convention"]
    assert meta["decomposition"]["path"] == str(tmp_path / "dec")
    # the same fingerprint as the decomposition's own record of its target
    assert meta["target"]["fingerprint"] == json.loads((tmp_path / "dec" / "decomposition.json").read_text())["target"]["fingerprint"]
    fresh = tiny_model()
    loaded = load_adapter(tmp_path / "ad", fresh, decomposition=Decomposition.load(tmp_path / "dec", fresh))
    assert loaded.scales() == SCALES
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, adapter_logits)
    # self-contained: loads without any decomposition too
    assert load_adapter(tmp_path / "ad", tiny_model()).scales() == SCALES
    # an adapter of format 1 (the keys beside the config, as the committed studies' edits) loads the same
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(
        {**meta, "format_version": 1, "keys": KEYS, "config": {k: v for k, v in meta["config"].items() if k != "keys"}}))
    old = load_adapter(tmp_path / "ad", tiny_model())
    assert old.scale_config == wrapped.scale_config and old.scales() == SCALES
    with torch.no_grad():
        assert torch.equal(old(input_ids=ids).logits, adapter_logits)
    with pytest.raises(ValueError, match="keys"):
        ComponentScaleConfig(keys=[])  # nothing to scale is refused


def test_load_refuses_another_model_and_another_decomposition(tmp_path):
    """SEMANTICS S1.3."""
    wrapped, _ = edited()
    wrapped.save_adapter(tmp_path / "ad")
    with pytest.raises(ValueError, match="belongs to another model"):
        load_adapter(tmp_path / "ad", tiny_model(seed=5))
    other = random_components(tiny_model(), seed=9)  # same module names and sizes, other subcomponents
    with pytest.raises(ValueError, match="not to the given one"):
        load_adapter(tmp_path / "ad", tiny_model(), decomposition=other)
    with pytest.raises(ValueError, match="module 'h.0.mlp.c_fc' is not in the decomposition"):
        load_adapter(tmp_path / "ad", tiny_model(), decomposition={"h.1.attn.v_proj": other["h.1.attn.v_proj"]})
    with pytest.raises(FileNotFoundError, match="not a .*ComponentScale adapter"):
        load_adapter(tmp_path, tiny_model())


def test_bad_keys_name_valid_modules_and_index_range():
    model = tiny_model()
    comps = random_components(model)
    with pytest.raises(ValueError, match=r"valid modules \(index range\): h\.0\.attn\.q_proj \(0\.\.11\), h\.0\.mlp\.c_fc \(0\.\.11\)"):
        apply_component_scale(model, comps, ComponentScaleConfig(keys=["h.3.attn.v_proj:1"]))
    with pytest.raises(ValueError, match=r"12 subcomponents, valid indices 0\.\.11"):
        apply_component_scale(model, comps, ComponentScaleConfig(keys=["h.1.attn.v_proj:12"]))
    with pytest.raises(ValueError, match="not of the form"):
        apply_component_scale(model, comps, ComponentScaleConfig(keys=["h.1.attn.v_proj"]))
    with pytest.raises(ValueError, match="repeat"):
        apply_component_scale(model, comps, ComponentScaleConfig(keys=["h.1.attn.v_proj:1", "h.1.attn.v_proj:1"]))
    assert all(isinstance(model.get_submodule(p), nn.Linear) for p in DECOMPOSED)  # nothing half-applied


def test_svd_components_reconstruct_and_scale_singular_values():
    model = tiny_model()
    path = "h.1.mlp.down_proj"
    W = model.get_submodule(path).weight.detach().clone()
    basis = svd_components(model, [path])
    V, U = basis[path]
    assert torch.allclose((V @ U).T, W, atol=1e-5)
    sigma = torch.linalg.svdvals(W)
    wrapped = apply_component_scale(model, basis, ComponentScaleConfig(keys=[f"{path}:0"]))
    wrapped.set_scales({f"{path}:0": 0.0})  # ablate the top singular direction
    merged = wrapped.merge_and_unload()
    new_sigma = torch.linalg.svdvals(merged.get_submodule(path).weight.detach())
    assert torch.allclose(new_sigma[:-1], sigma[1:], atol=1e-5) and new_sigma[-1] < 1e-5


def config(method, **kw):
    return TuneConfig(method=method, budget=8, **kw)


def test_neuron_scale_is_ia3_and_equals_component_scale_in_the_neuron_basis():
    ids = ids_batch()
    path = "h.1.mlp.down_proj"
    sel = Selection(keys=[f"{path}:3", f"{path}:40"])
    tunable = build_method("neuron_scale", tiny_model(), None, sel, config("neuron_scale", selection=sel))
    (ia3,) = tunable.parameters
    assert ia3.shape == (1, 64)
    opt = torch.optim.Adam(tunable.parameters, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        tunable.model(input_ids=ids).logits.pow(2).mean().backward()
        opt.step()
    scalars = tunable.scalars()
    assert set(scalars) == {f"{path}:3", f"{path}:40"} and all(abs(s - 1) > 1e-3 for s in scalars.values())
    others = torch.ones(64, dtype=torch.bool)
    others[[3, 40]] = False
    assert torch.equal(ia3.detach()[0, others], torch.ones(int(others.sum())))  # unselected units exactly 1
    # the same scalars as ComponentScale over the neuron basis (v_j = e_j, u_j = W[:, j])
    model = tiny_model()
    W = model.get_submodule(path).weight.detach()
    neuron_basis = {path: Components(torch.eye(64), W.T.clone())}
    cs = apply_component_scale(model, neuron_basis, ComponentScaleConfig(keys=list(scalars)))
    cs.set_scales(scalars)
    with torch.no_grad():
        assert torch.allclose(cs(input_ids=ids).logits, tunable.model(input_ids=ids).logits, atol=1e-5)
    assert float(tunable.l1_penalty().detach()) == pytest.approx(sum(abs(s - 1) for s in scalars.values()), rel=1e-5)
    attention = Selection(keys=["h.1.attn.o_proj:3"])  # a linear weight, but not an MLP's hidden units
    with pytest.raises(ValueError, match=r"'h.1.attn.o_proj' is not one \(this model's: h.0.mlp.down_proj, h.1.mlp.down_proj\)"):
        build_method("neuron_scale", tiny_model(), None, attention, config("neuron_scale", selection=attention))


def test_lora_baselines_cover_the_right_matrices_and_start_as_the_base():
    ids = ids_batch()
    with torch.no_grad():
        base = tiny_model()(input_ids=ids).logits
    model = tiny_model()
    linears = linear_module_paths(model)
    assert "lm_head" not in linears and len(linears) == 12  # 2 layers × (q, k, v, o, c_fc, down_proj)
    r4 = build_method("lora", model, None, Selection(), config("lora", lora_rank=4))
    sizes = {p: model.get_submodule(p) for p in linears}
    n_expected = sum(4 * (m.in_features + m.out_features) for m in sizes.values())
    assert sum(p.numel() for p in r4.parameters) == n_expected
    with torch.no_grad():
        assert torch.equal(r4.model(input_ids=ids).logits, base)
    sel = Selection(keys=["h.1.attn.v_proj:513"])
    local = build_method("lora_local", tiny_model(), None, sel, config("lora_local", selection=sel))
    names = [n for n, p in local.model.named_parameters() if p.requires_grad]
    assert names == ["base_model.model.h.1.attn.v_proj.lora_A.default.weight", "base_model.model.h.1.attn.v_proj.lora_B.default.weight"]
    assert local.scalars() == {} and local.l1_penalty is None


def test_config_rejects_inconsistent_method_options():
    with pytest.raises(ValueError, match="needs selection"):
        TuneConfig(method="component_scale", budget=4)
    with pytest.raises(ValueError, match="exactly one module"):
        TuneConfig(method="lora_local", budget=4, selection=Selection(keys=["h.0.attn.q_proj:1", "h.1.attn.q_proj:1"]))
    with pytest.raises(ValueError, match="has none"):
        TuneConfig(method="lora", budget=4, l1=0.1)
    with pytest.raises(ValueError, match="extra"):
        TuneConfig(method="lora", budget=4, learning_rate=0.1)
