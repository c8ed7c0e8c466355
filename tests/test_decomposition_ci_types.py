"""The layerwise CI functions that read the whole pre-weight input x (`vector_mlp`, `shared_mlp`):
their math, how a Decomposition feeds them, save/load, and a short training run with each."""

import json

import pytest
import torch
import torch.nn.functional as F

from comptune.decomposition import Decomposition
from comptune.decomposition.ci import CIConfig, LayerwiseMLPCI, SharedMLPCI, VectorMLPCI, build_ci_fn
from comptune.decomposition.train import DecomposeConfig, decompose
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

torch.set_num_threads(1)

C = {"h.0.attn.v_proj": 5, "h.1.mlp.c_fc": 3}
D_IN = {"h.0.attn.v_proj": 32, "h.1.mlp.c_fc": 32}
PATTERNS = {"h.0.attn.v_proj": 5, "h.1.mlp.c_fc": 3}


def tiny_lm():
    torch.manual_seed(0)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)).eval()


def randomize_biases(ci_fn):
    """Biases start at zero; make them non-zero so a misplaced bias would show."""
    with torch.no_grad():
        for name, p in ci_fn.named_parameters():
            if name.endswith((".b", ".bias")):
                p.normal_(0, 0.5)


def acts(seed=0, B=2, T=5):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randn(B, T, d, generator=g) for p, d in D_IN.items()}


def test_vector_mlp_is_one_independent_mlp_per_subcomponent_on_x():
    """SPEC V2.1."""
    torch.manual_seed(1)
    ci_fn = build_ci_fn(CIConfig(type="vector_mlp", hidden_dims=[4, 6]), C, D_IN)
    assert isinstance(ci_fn, VectorMLPCI) and ci_fn.input_kind == "pre_weight_acts"
    randomize_biases(ci_fn)
    x = acts()
    got = ci_fn(x)
    for p, c_count in C.items():
        layers = ci_fn.mlps[p.replace(".", "-")].layers
        W = [layers[k].W for k in (0, 2, 4)]  # [C, in, out] each
        b = [layers[k].b for k in (0, 2, 4)]
        for c in range(c_count):  # MLP c alone, written out with plain matmuls
            h = F.gelu(x[p] @ W[0][c] + b[0][c])
            h = F.gelu(h @ W[1][c] + b[1][c])
            assert torch.allclose(got[p][..., c], (h @ W[2][c] + b[2][c])[..., 0], atol=1e-6)
        assert got[p].shape == (2, 5, c_count)


@pytest.mark.parametrize("hidden", [[7], []])
def test_shared_mlp_maps_x_to_all_C_logits(hidden):
    """SPEC V2.1."""
    torch.manual_seed(2)
    ci_fn = build_ci_fn(CIConfig(type="shared_mlp", hidden_dims=hidden), C, D_IN)
    assert isinstance(ci_fn, SharedMLPCI) and ci_fn.input_kind == "pre_weight_acts"
    randomize_biases(ci_fn)
    x = acts()
    got = ci_fn(x)
    for p in C:
        linears = [m for m in ci_fn.mlps[p.replace(".", "-")] if isinstance(m, torch.nn.Linear)]
        assert len(linears) == len(hidden) + 1
        h = x[p]
        for i, lin in enumerate(linears):
            h = h @ lin.weight.T + lin.bias
            h = F.gelu(h) if i < len(linears) - 1 else h
        assert torch.allclose(got[p], h, atol=1e-6)
        assert got[p].shape == (2, 5, C[p])


def test_existing_state_dict_keys_are_unchanged():
    """Saved layerwise_mlp decompositions keep loading: its keys are those of the reference layout."""
    keys = set(LayerwiseMLPCI({"h.0.attn.v_proj": 3}, [4]).state_dict())
    assert keys == {f"mlps.h-0-attn-v_proj.layers.{k}.{n}" for k in (0, 2) for n in "Wb"}
    assert set(VectorMLPCI({"a": 3}, {"a": 8}, [4]).state_dict()) == {f"mlps.a.layers.{k}.{n}" for k in (0, 2) for n in "Wb"}
    assert set(SharedMLPCI({"a": 3}, {"a": 8}, [4]).state_dict()) == {f"mlps.a.{k}.{n}" for k in (0, 2) for n in ("weight", "bias")}


def test_config_sizes_and_validation():
    assert CIConfig(type="vector_mlp", hidden_dims=[8]).sizes() == {"type": "vector_mlp", "leaky_alpha": 0.01, "hidden_dims": [8]}
    assert CIConfig(type="shared_mlp", hidden_dims=[]).sizes() == {"type": "shared_mlp", "leaky_alpha": 0.01, "hidden_dims": []}
    with pytest.raises(ValueError, match="hidden_dims must be positive"):
        CIConfig(type="shared_mlp", hidden_dims=[0])
    with pytest.raises(ValueError):
        CIConfig(type="vector")


@pytest.mark.parametrize("ci_type", ["vector_mlp", "shared_mlp"])
def test_decomposition_feeds_pre_weight_acts_and_round_trips(tmp_path, ci_type):
    """SPEC V2.2."""
    model = tiny_lm()
    torch.manual_seed(3)
    d = Decomposition.create(model, PATTERNS, CIConfig(type=ci_type, hidden_dims=[4]))
    randomize_biases(d.ci_fn)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(4))
    captured = {}
    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: captured.__setitem__(p, a[0])) for p in PATTERNS]
    ci = d.causal_importance(ids)
    for h in hooks:
        h.remove()
    expected = d.ci_fn(captured)  # the raw module inputs, not the inner activations x V
    for p in PATTERNS:
        assert torch.allclose(ci.lower[p], expected[p].clamp(0, 1), atol=1e-6)
        assert ci.lower[p].shape == (2, 7, PATTERNS[p])

    d.save(tmp_path)
    assert json.loads((tmp_path / "decomposition.json").read_text())["ci_fn"]["type"] == ci_type
    d.remove_hooks()
    loaded = Decomposition.load(tmp_path, model)
    assert type(loaded.ci_fn) is type(d.ci_fn)
    for k, v in d.ci_fn.state_dict().items():
        assert torch.equal(loaded.ci_fn.state_dict()[k], v), k
    again = loaded.causal_importance(ids)
    for p in PATTERNS:
        assert torch.equal(again.lower[p], ci.lower[p])


@pytest.mark.parametrize("ci_type", ["vector_mlp", "shared_mlp"])
def test_three_step_decompose_trains_the_ci_function(tmp_path, ci_type):
    blocks = torch.randint(0, 64, (8, 10), generator=torch.Generator().manual_seed(1))
    config = DecomposeConfig(
        patterns=PATTERNS, ci={"type": ci_type, "hidden_dims": [4]}, steps=3, batch_size=4, lr=1e-2,
        faithfulness_warmup_steps=2, log_every=1, checkpoint_every=100, eval_every=100, pgd_eval_steps=1,
    )
    untrained = tiny_lm()
    torch.manual_seed(config.seed)  # decompose's seeded initialisation, redone
    initial = Decomposition.create(untrained, PATTERNS, config.ci).ci_fn.state_dict()
    d = decompose(tiny_lm(), blocks, config, tmp_path)
    assert isinstance(d.ci_fn, VectorMLPCI if ci_type == "vector_mlp" else SharedMLPCI)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    trained = d.ci_fn.state_dict()
    assert set(trained) == set(initial)
    assert all(not torch.equal(trained[k], initial[k]) for k in trained)  # every CI parameter was trained
    loaded = Decomposition.load(tmp_path, tiny_lm())
    assert loaded.ci_config.type == ci_type
    for k, v in trained.items():
        assert torch.equal(loaded.ci_fn.state_dict()[k], v), k
