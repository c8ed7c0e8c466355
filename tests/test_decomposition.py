"""Decomposition engine: sigmoid gradients, exactness of the masked forward (Linear and Conv1D),
losses and masks, the adversary, save/load with its errors, the quality report, config checks."""

import json
import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from comptune.decomposition import (
    CIConfig,
    Decomposition,
    LinearComponents,
    format_component_key,
    lower_leaky_hard_sigmoid,
    parse_component_key,
    upper_leaky_hard_sigmoid,
)
from comptune.decomposition.losses import (
    PersistentPGD,
    TargetDistribution,
    eval_pgd_kl,
    kl_target_to_masked,
    minimality_loss,
    route_sources,
    sample_subset_routing,
    source_coefficients,
)
from comptune.decomposition.report import quality_report
from comptune.decomposition.train import DecomposeConfig
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

torch.set_num_threads(1)

VOCAB = 64
SMALL_CI = CIConfig(d_model=32, n_blocks=1, n_heads=2, d_ff=64)
LAYERWISE_CI = CIConfig(type="layerwise_mlp", hidden_dims=[8])
PATTERNS = {"h.*.attn.*_proj": 24, "h.*.mlp.*": 40}


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=VOCAB, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)).eval()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()


def ids(seed=1, B=2, T=12):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


class OneLinear(nn.Module):
    """A target whose output is a single (biased) layer's output, to check the masked formula directly."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


# ----- sigmoids --------------------------------------------------------------------------------


def test_lower_leaky_hard_sigmoid_forward_and_sign_gated_leak():
    """SPEC V2.3."""
    z = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 1.5, -1.0, 2.0], requires_grad=True)
    alpha = 0.01
    y = lower_leaky_hard_sigmoid(z, alpha)
    assert torch.equal(y, z.detach().clamp(0, 1))
    grad_out = torch.tensor([-1.0, 2.0, -3.0, 4.0, -5.0, 6.0, 7.0, -8.0])
    (g,) = torch.autograd.grad(y, z, grad_out)
    # z ≤ 0: α·grad only where the incoming gradient is negative; (0, 1]: grad; > 1: blocked
    expected = torch.tensor([alpha * -1.0, 0.0, alpha * -3.0, 4.0, -5.0, 0.0, 0.0, 0.0])
    assert torch.allclose(g, expected)


def test_upper_leaky_hard_sigmoid_matches_definition():
    """SPEC V2.3."""
    z = torch.tensor([-2.0, -0.5, 0.25, 1.0, 3.0], requires_grad=True)
    y = upper_leaky_hard_sigmoid(z, 0.1)
    assert torch.allclose(y, torch.tensor([0.0, 0.0, 0.25, 1.0, 1.2]))
    (g,) = torch.autograd.grad(y.sum(), z)
    assert torch.allclose(g, torch.tensor([0.0, 0.0, 1.0, 1.0, 0.1]))


# ----- parametrisation and masked forward ------------------------------------------------------


def test_component_keys_round_trip_and_reject_garbage():
    """SPEC V1.5."""
    assert parse_component_key(format_component_key("h.3.attn.v_proj", 513)) == ("h.3.attn.v_proj", 513)
    for bad in ["h.3.attn.v_proj", "h.3.attn.v_proj:x", ":3"]:
        with pytest.raises(ValueError, match="module path"):
            parse_component_key(bad)


def test_linear_components_shapes_and_weight_layout():
    """SPEC V1.1."""
    comps = LinearComponents(d_in=5, d_out=3, C=7)
    assert comps.V.shape == (5, 7) and comps.U.shape == (7, 3)
    x = torch.randn(2, 4, 5)
    assert torch.allclose(comps(x, torch.ones(2, 4, 7)), x @ comps.weight().T, atol=1e-6)
    assert comps.inner_acts(x).shape == (2, 4, 7)


@pytest.mark.parametrize("make", [tiny_lm, tiny_gpt2], ids=["llama-style Linear", "gpt2 Conv1D"])
@pytest.mark.parametrize("ci", [SMALL_CI, LAYERWISE_CI], ids=["global", "layerwise"])
def test_masks_one_with_delta_reproduce_target(make, ci):
    """SPEC V1.3."""
    model = make()
    patterns = PATTERNS if make is tiny_lm else {"transformer.h.*.attn.c_*": 24, "transformer.h.*.mlp.c_*": 40}
    d = Decomposition.create(model, patterns, ci)
    x = ids()
    target = d.target_logits(x)
    ones = {p: torch.ones(*x.shape, d.C(p)) for p in d.module_paths}
    full_delta = {p: torch.ones(x.shape) for p in d.module_paths}
    assert torch.allclose(d.masked_logits(x, ones, full_delta), target, atol=1e-5)
    # without Δ the random components are far from W: the output must move
    assert (d.masked_logits(x, ones) - target).abs().max() > 1e-2
    # the CI function sees every decomposed module and gives values in [0, 1]
    ci_out = d.causal_importance(x)
    assert set(ci_out.lower) == set(d.module_paths)
    for p in d.module_paths:
        assert ci_out.lower[p].shape == (*x.shape, d.C(p))
        assert 0 <= ci_out.lower[p].min() and ci_out.lower[p].max() <= 1


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_masked_output_formula_and_delta_gap(kind):
    """SPEC V1.2."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = nn.Linear(6, 4, bias=True) if kind == "linear" else Conv1D(4, 6)
    if kind == "conv1d":
        nn.init.normal_(layer.bias)
    d = Decomposition.create(OneLinear(layer), {"layer": 5}, LAYERWISE_CI)
    assert d.get_components("layer").kind == kind
    x = torch.randn(3, 7, 6)
    W = d.target_weight("layer")  # [d_out, d_in]
    assert W.shape == (4, 6)
    comps = d.get_components("layer")
    delta = d.delta("layer").detach()
    assert torch.equal(delta, (W - comps.weight()).detach())
    m = torch.rand(3, 7, 5)
    m_delta = torch.rand(3, 7)
    a = x @ comps.V
    expected = (a * m) @ comps.U + m_delta[..., None] * (x @ delta.T) + layer.bias
    got = d.masked_logits(x, {"layer": m}, {"layer": m_delta})
    assert torch.allclose(got, expected, atol=1e-5)
    # Δ excluded: the gap to the target is exactly the Δ contribution
    ones = torch.ones(3, 7, 5)
    gap = d.target_logits(x) - d.masked_logits(x, {"layer": ones})
    assert torch.allclose(gap, x @ delta.T, atol=1e-5)
    # SPEC V3.2: positions routed out are the biased layer's own output, bit for bit
    routed = torch.rand(3, 7) < 0.5
    out = d.masked_logits(x, {"layer": m}, {"layer": m_delta}, routing={"layer": routed})
    assert torch.equal(out[~routed], d.target_logits(x)[~routed]) and torch.allclose(out[routed], expected[routed], atol=1e-5)


def test_routing_keeps_original_weight_where_unrouted():
    """SPEC V3.2."""
    d = Decomposition.create(tiny_lm(), PATTERNS, SMALL_CI)
    x = ids()
    zeros = {p: torch.zeros(*x.shape, d.C(p)) for p in d.module_paths}
    nowhere = {p: torch.zeros(x.shape, dtype=torch.bool) for p in d.module_paths}
    assert torch.equal(d.masked_logits(x, zeros, routing=nowhere), d.target_logits(x))
    # routing only the last position changes only logits at the last position (causal model)
    last = {p: torch.zeros(x.shape, dtype=torch.bool) for p in d.module_paths}
    for r in last.values():
        r[:, -1] = True
    out = d.masked_logits(x, zeros, routing=last)
    target = d.target_logits(x)
    assert torch.equal(out[:, :-1], target[:, :-1]) and not torch.allclose(out[:, -1], target[:, -1])


def test_gradients_reach_components_and_ci_but_not_target():
    """SPEC V5.5."""
    model = tiny_lm()
    d = Decomposition.create(model, PATTERNS, SMALL_CI)
    x = ids()
    ci = d.causal_importance(x)
    logits = d.masked_logits(x, ci.lower)
    kl_target_to_masked(logits, ci.target_logits).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.component_parameters())
    assert all(p.grad is not None for p in d.ci_fn.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


# ----- bad input ---------------------------------------------------------------------------


def test_bad_patterns_and_C_give_clear_errors():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"matches no module.*h\.0\.attn\.q_proj"):
        Decomposition.create(model, {"h.*.attn.nothing": 8})
    with pytest.raises(ValueError, match="RMSNorm.*only nn.Linear and transformers Conv1D"):
        Decomposition.create(model, {"h.0.rms_1": 8})
    with pytest.raises(ValueError, match="Embedding"):
        Decomposition.create(model, {"wte": 8})
    for bad_c in (0, -3):
        with pytest.raises(ValueError, match="positive"):
            Decomposition.create(model, {"h.0.attn.q_proj": bad_c})
    with pytest.raises(ValueError, match="matched by two patterns"):
        Decomposition.create(model, {"h.0.attn.*": 8, "h.0.attn.q_proj": 4})
    d = Decomposition.create(model, {"h.0.attn.q_proj": 4}, SMALL_CI)
    with pytest.raises(KeyError, match="not decomposed"):
        d.masked_logits(ids(), {"h.1.attn.q_proj": torch.ones(1)})
    with pytest.raises(KeyError, match="not decomposed"):
        d.get_components("h.9.attn.q_proj")


def test_ci_config_rejects_unknown_keys_and_bad_sizes():
    with pytest.raises(ValueError, match="extra"):
        CIConfig(d_modle=32)
    with pytest.raises(ValueError, match="divisible"):
        CIConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown preset"):
        DecomposeConfig.preset("huge")
    with pytest.raises(ValueError, match="positive"):
        DecomposeConfig(patterns={"h.*": 0})
    small = DecomposeConfig.preset("small", steps=10)
    assert small.steps == 10 and small.ci.d_model == 256 and DecomposeConfig.preset("paper") == DecomposeConfig()


# ----- save / load -----------------------------------------------------------------------------


@pytest.mark.parametrize("make,patterns,ci", [
    (tiny_lm, PATTERNS, SMALL_CI),
    (tiny_lm, {"h.1.mlp.c_fc": 16}, LAYERWISE_CI),
    (tiny_gpt2, {"transformer.h.0.attn.c_attn": 12, "transformer.h.1.mlp.c_proj": 20}, SMALL_CI),
], ids=["global", "layerwise", "conv1d"])
def test_save_load_round_trip(tmp_path, make, patterns, ci):
    """SPEC V1.6."""
    model = make()
    d = Decomposition.create(model, patterns, ci)
    d.config = {"note": "x"}
    d.save(tmp_path)
    meta = json.loads((tmp_path / "decomposition.json").read_text())
    assert meta["format"] == "comptune-decomposition" and meta["format_version"] == 1
    assert set(meta["modules"]) == set(d.module_paths) and meta["ci_fn"]["type"] == ci.type
    assert meta["versions"]["torch"] == torch.__version__
    loaded = Decomposition.load(tmp_path, make())  # a fresh copy of the same model
    assert loaded.module_paths == d.module_paths and loaded.config == {"note": "x"}
    for p in d.module_paths:
        assert torch.equal(loaded.get_components(p).V, d.get_components(p).V)
        assert loaded.get_components(p).kind == d.get_components(p).kind
    x = ids()
    a, b = d.causal_importance(x), loaded.causal_importance(x)
    for p in d.module_paths:
        assert torch.equal(a.lower[p], b.lower[p])


def test_load_rejects_other_targets_and_broken_files(tmp_path):
    """SPEC V1.6, SEMANTICS S1.3."""
    from safetensors.torch import load_file, save_file

    d = Decomposition.create(tiny_lm(), PATTERNS, SMALL_CI)
    d.save(tmp_path)
    with pytest.raises(ValueError, match="fingerprint.*different values"):
        Decomposition.load(tmp_path, tiny_lm(seed=5))
    wider = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=VOCAB, n_layer=2, d_model=32, n_head=2, d_mlp=48, n_ctx=32))
    with pytest.raises(ValueError, match=r"h\.0\.mlp\.c_fc.*d_out=48.*d_out=64"):
        Decomposition.load(tmp_path, wider)
    shallow = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=VOCAB, n_layer=1, d_model=32, n_head=2, d_mlp=64, n_ctx=32))
    with pytest.raises(ValueError, match=r"modules the target does not have.*h\.1\."):
        Decomposition.load(tmp_path, shallow)
    tensors = load_file(str(tmp_path / "decomposition.safetensors"))
    save_file({k: v for k, v in tensors.items() if k != "components.h.1.mlp.c_fc.U"}, str(tmp_path / "decomposition.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensors \['components\.h\.1\.mlp\.c_fc\.U'\]"):
        Decomposition.load(tmp_path, tiny_lm())
    save_file({**tensors, "components.h.7.mlp.c_fc.V": torch.zeros(1)}, str(tmp_path / "decomposition.safetensors"))
    with pytest.raises(ValueError, match=r"not listed.*h\.7\.mlp"):
        Decomposition.load(tmp_path, tiny_lm())
    with pytest.raises(FileNotFoundError, match="decomposition.json is missing"):
        Decomposition.load(tmp_path / "nowhere", tiny_lm())


class _Boom:
    def __reduce__(self):
        import os

        return (os.mkdir, (str(_Boom.marker),))


def test_pickle_disguised_as_weights_is_never_executed(tmp_path):
    """SPEC V1.6."""
    d = Decomposition.create(tiny_lm(), {"h.0.attn.q_proj": 4}, SMALL_CI)
    d.save(tmp_path)
    _Boom.marker = tmp_path / "pwned"
    (tmp_path / "decomposition.safetensors").write_bytes(pickle.dumps({"components.h.0.attn.q_proj.V": _Boom()}))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Decomposition.load(tmp_path, tiny_lm())
    assert not _Boom.marker.exists()


# ----- losses, masks, adversary ------------------------------------------------------------


def test_kl_direction_is_target_to_masked():
    """SPEC V5.1."""
    target = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    masked = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    p, q = target.exp(), masked.exp()
    forward_kl = (p * (p.log() - q.log())).sum()
    reverse_kl = (q * (q.log() - p.log())).sum()
    got = kl_target_to_masked(masked, target)
    assert torch.allclose(got, forward_kl) and not torch.allclose(got, reverse_kl)


def test_kl_against_a_precomputed_target_equals_the_log_softmax_definition():
    """SPEC V5.1. KL(p ‖ q) = Σ p log p − Σ p z + logsumexp(z): value and gradient equal the textbook form
    computed in fp64 (to float32 rounding: the KL is computed in float32), whether the target
    comes as logits or as its TargetDistribution."""
    g = torch.Generator().manual_seed(0)
    target, z0 = torch.randn(2, 5, 50, generator=g, dtype=torch.float64) * 3, torch.randn(2, 5, 50, generator=g, dtype=torch.float64) * 3
    z = z0.clone().requires_grad_(True)
    log_p, log_q = F.log_softmax(target, -1), F.log_softmax(z, -1)
    ref = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    (ref_grad,) = torch.autograd.grad(ref, z)
    for tgt in (target, TargetDistribution.of(target)):
        z = z0.clone().requires_grad_(True)
        got = kl_target_to_masked(z, tgt)
        got.backward()
        assert abs(got.item() - ref.item()) < 1e-5
        assert torch.allclose(z.grad, ref_grad, atol=1e-7)


def test_minimality_matches_formula():
    """SPEC V5.3."""
    g = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])  # [B=1, T=2, C=2]
    p, beta = 0.5, 0.5
    s = (g + 1e-12).pow(p).sum((0, 1))
    expected = (s / 2 + beta * (s / 2) * torch.log2(1 + s)).sum()
    assert torch.allclose(minimality_loss({"m": g}, p, beta), expected)
    # doubling the world size scales the count inside the log only
    expected_ws = (s / 2 + beta * (s / 2) * torch.log2(1 + 2 * s)).sum()
    assert torch.allclose(minimality_loss({"m": g}, p, beta, world_size=2), expected_ws)


def test_source_coefficients_and_subset_routing():
    """SPEC V3.1, SPEC V3.2. The coefficients m − m_Δ with m = g + (1 − g) r, and their gradients, equal
    the formula's under autograd (fp64); a module routed out gets coefficients 0 and m_Δ 1."""
    k = source_coefficients({"m": torch.tensor([[[0.0, 1.0, 0.5]]])}, {"m": (torch.tensor([[[0.5, 0.2, 0.5]]]), torch.tensor([[[0.9]]]))})
    assert torch.allclose(k["m"][0], torch.tensor([[[0.5, 1.0, 0.75]]]) - 0.9) and torch.equal(k["m"][1], torch.tensor([[[0.9]]]))
    gen = torch.Generator().manual_seed(0)
    g0, r0, d0, weight = (torch.rand(*shape, generator=gen, dtype=torch.float64) for shape in ((2, 3, 5), (2, 3, 5), (2, 3, 1), (2, 3, 5)))
    results = []
    for fused in (True, False):
        g, r, d = (t.clone().requires_grad_(True) for t in (g0, r0, d0))
        coef = source_coefficients({"m": g}, {"m": (r, d)})["m"][0] if fused else g + (1 - g) * r - d
        results.append((coef, *torch.autograd.grad((coef * weight).sum(), (g, r, d))))
    for fused, plain in zip(*results):
        assert torch.allclose(fused, plain, rtol=0, atol=1e-15)
    on = torch.tensor([[True, False, True], [False, False, True]])
    r, d = route_sources({"m": (r0, d0)}, {"m": on})["m"]
    coef = source_coefficients({"m": g0}, {"m": (r, d)})["m"][0]
    assert torch.equal(coef[~on], torch.zeros(3, 5, dtype=torch.float64)) and torch.equal(d[~on], torch.ones(3, 1, dtype=torch.float64))
    assert torch.allclose(coef[on], (g0 + (1 - g0) * r0 - d0)[on], rtol=0, atol=1e-15)
    paths = [f"m{i}" for i in range(4)]
    routing = sample_subset_routing(paths, (200, 50), "cpu", torch.Generator().manual_seed(0))
    k = torch.stack([routing[p] for p in paths]).sum(0)  # routed modules per position
    assert k.min() >= 1 and k.max() <= 4
    freq = torch.bincount(k.flatten(), minlength=5)[1:].float() / k.numel()
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.02)  # k ~ Uniform{1..4}
    per_module = torch.stack([routing[p].float().mean() for p in paths])
    assert torch.allclose(per_module, torch.full((4,), 0.625), atol=0.02)  # E[k]/L = 2.5/4


def test_persistent_pgd_ascends_stays_in_range_and_round_trips():
    """SPEC V4.1."""
    d = Decomposition.create(tiny_lm(), PATTERNS, SMALL_CI)
    x = ids()
    ci = d.causal_importance(x)
    C = {p: d.C(p) for p in d.module_paths}
    ppgd = PersistentPGD(C, x.shape, "cpu", torch.Generator().manual_seed(0))
    before = ppgd.loss(d, x, ci.target_logits, ci.lower).item()
    ppgd.ascend(d, x, ci.target_logits, ci.lower, lr=0.05, n_steps=10)
    after = ppgd.loss(d, x, ci.target_logits, ci.lower).item()
    assert after > before
    assert all(0 <= s.min() and s.max() <= 1 for s in ppgd.leaves())
    state = ppgd.state_tensors()
    assert all(state[f"{p}.{name}"].shape == (*x.shape, C[p] + 1) for p in C for name in ("source", "exp_avg", "exp_avg_sq"))
    assert all(p.grad is None for p in d.component_parameters())  # the ascent never trains the decomposition
    other = PersistentPGD(C, x.shape, "cpu", torch.Generator().manual_seed(1))
    other.load_state_tensors(state)
    moments = [[t for pair in adversary.exp_avg_sq.values() for t in pair] + adversary.leaves() for adversary in (other, ppgd)]
    assert other.t == 10 and all(torch.equal(a, b) for a, b in zip(*moments))
    with pytest.raises(ValueError, match="batch size or C changed"):
        PersistentPGD(C, (1, 12), "cpu").load_state_tensors(ppgd.state_tensors())


def test_eval_pgd_finds_worse_masks_than_its_random_start():
    """SPEC V4.3."""
    d = Decomposition.create(tiny_lm(), PATTERNS, SMALL_CI)
    x = ids()
    with torch.no_grad():
        ci = d.causal_importance(x)
    g = torch.Generator().manual_seed(3)  # the same seed as eval_pgd_kl below: identical starting sources
    sources = {p: torch.rand((1, 1, d.C(p) + 1), generator=g) for p in d.module_paths}
    masks = {p: ci.lower[p] + (1 - ci.lower[p]) * r[..., :-1] for p, r in sources.items()}
    delta = {p: r[..., -1] for p, r in sources.items()}
    with torch.no_grad():
        kl_start = kl_target_to_masked(d.masked_logits(x, masks, delta), ci.target_logits).item()
    assert eval_pgd_kl(d, x, ci.target_logits, ci.lower, 20, 0.1, torch.Generator().manual_seed(3)) > kl_start


# ----- quality report ----------------------------------------------------------------------


def test_quality_report_exact_components_reproduce_target():
    """SPEC V6.1."""
    model = tiny_lm()
    d = Decomposition.create(model, {"h.0.attn.v_proj": 32, "h.1.mlp.down_proj": 32}, SMALL_CI)
    with torch.no_grad():  # exact components from the SVD: Δ = 0 up to float error
        for p in d.module_paths:
            U_, S, Vh = torch.linalg.svd(d.target_weight(p), full_matrices=False)
            comps = d.get_components(p)
            comps.V.copy_(Vh[:32].T * S[:32])
            comps.U.copy_(U_[:, :32].T)
    blocks = torch.randint(0, VOCAB, (5, 12), generator=torch.Generator().manual_seed(0))
    r = quality_report(d, blocks, batch_size=2, pgd_steps=3)
    assert r["n_tokens"] == 60
    assert r["ce"]["unmasked"] == pytest.approx(r["ce"]["target"], abs=1e-4)
    assert r["ce"]["target"] == pytest.approx(_ce(model, blocks), abs=1e-5)
    assert r["kl"]["unmasked"] < 1e-6
    assert set(r["ce"]) >= {"target", "unmasked", "stochastic", "ci_masked", "rounded_0.0", "rounded_0.1", "rounded_0.5"}
    ci = d.causal_importance(blocks)
    assert r["l0"]["h.0.attn.v_proj"] == pytest.approx((ci.lower["h.0.attn.v_proj"] > 0).float().sum(-1).mean().item(), rel=1e-5)
    assert r["l0"]["total"] == pytest.approx(r["l0"]["h.0.attn.v_proj"] + r["l0"]["h.1.mlp.down_proj"])
    assert 0 <= r["alive"]["total"] <= 64 and r["C"]["total"] == 64 and r["pgd_kl"] >= 0


def _ce(model, blocks):
    logits = model(blocks).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten()).item()


def test_quality_report_rejects_bad_blocks():
    d = Decomposition.create(tiny_lm(), {"h.0.attn.v_proj": 4}, SMALL_CI)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        quality_report(d, torch.zeros(5, dtype=torch.long))
    assert math.isfinite(quality_report(d, torch.zeros(1, 2, dtype=torch.long), pgd_steps=1)["pgd_kl"])
