"""Robustness attacks on an edit (`comptune attack`): relearning, quantisation, dose."""

import copy

import pytest
import torch
from pydantic import ValidationError

from comptune.evaluation.ce import evaluate_ce
from comptune.evaluation.robustness import (
    AttackConfig,
    DosableEdit,
    attack_edit,
    attacker_block,
    check_disjoint,
    dosable,
    quantised,
    recovery_step,
    relearn_curve,
)
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tuning import ComponentScaleConfig, TuneConfig, apply_component_scale, build_method
from comptune.tuning.edits import check_dose, dosed_scales

torch.set_num_threads(1)
V = 48


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=V, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=64)).eval()


def markov_stream(n, seed, tokens=range(8, 24)):
    """A token distribution with structure to learn: from token t the next is t+1 or t+3 (mod the set)."""
    tokens = list(tokens)
    g = torch.Generator().manual_seed(seed)
    out, i = [], 0
    for _ in range(n):
        out.append(tokens[i])
        i = (i + (1 if torch.rand((), generator=g) < 0.5 else 3)) % len(tokens)
    return torch.tensor(out)


def trained_base():
    """A tiny model that has learned the Markov distribution (CE well below uniform)."""
    model = tiny_model()
    data = markov_stream(4096, seed=0).reshape(-1, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(150):
        x = data[(step * 8) % 64 : (step * 8) % 64 + 8]
        loss = torch.nn.functional.cross_entropy(model(x).logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_recovery_step_on_a_synthetic_curve():
    """SEMANTICS S8.1."""
    steps = [0, 10, 20, 30, 40]
    ce = [9.0, 8.0, 6.9, 5.2, 5.0]  # removed 4 nats (base 5): half back at ce <= 7, 90 % at ce <= 5.4
    assert recovery_step(steps, ce, edited_ce=9.0, base_ce=5.0, fraction=0.5) == 20
    assert recovery_step(steps, ce, edited_ce=9.0, base_ce=5.0, fraction=0.9) == 30
    assert recovery_step(steps, ce, edited_ce=9.0, base_ce=5.0, fraction=1.0) == 40
    assert recovery_step(steps, [9.0, 8.5, 8.0], edited_ce=9.0, base_ce=5.0, fraction=0.5) is None  # never recovers
    assert recovery_step(steps, ce, edited_ce=5.0, base_ce=5.0, fraction=0.5) is None  # nothing was removed
    with pytest.raises(ValueError, match="fraction"):
        recovery_step(steps, ce, 9.0, 5.0, 0.0)


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _lora_edit(model):
    tunable = build_method("lora", model, None, None, TuneConfig(method="lora", budget=4, lora_rank=2))
    with torch.no_grad():
        for name, p in tunable.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)  # LoRA B starts at zero: give it a delta
    return tunable.model


def _scale_edit(model):
    comps = {"h.1.mlp.down_proj": (torch.randn(64, 4) / 8, torch.randn(4, 32) / 2)}
    wrapped = apply_component_scale(model, comps, ComponentScaleConfig(keys=["h.1.mlp.down_proj:1", "h.1.mlp.down_proj:3"]))
    wrapped.set_scales({"h.1.mlp.down_proj:1": -3.0, "h.1.mlp.down_proj:3": 0.5})
    return wrapped


@pytest.mark.parametrize("make_edit", [_scale_edit, _lora_edit], ids=["component_scale", "peft_lora"])
def test_dose_zero_is_the_base_and_dose_one_the_edit_exactly(make_edit):
    """SEMANTICS S2.4."""
    model = tiny_model()
    base = copy.deepcopy(model)
    weights = _base_weights(model)
    edit = make_edit(model)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        live = edit(ids).logits
    d = dosable(edit, weights)
    assert d.mergeable and d.base  # the edit changed some weights
    with torch.no_grad():
        d.set_dose(0.0)
        assert torch.equal(d.model(ids).logits, base(ids).logits)
        d.set_dose(1.0)
        at_one = d.model(ids).logits
        assert torch.allclose(at_one, live, atol=1e-5)  # the merged edit equals the live one (float rounding of the merge)
        for name, w in d.edited.items():
            assert torch.equal(dict(d.model.named_parameters())[name], w)  # lerp(·, ·, 1) is the merged weight, bit for bit
        d.set_dose(0.5)
        half = d.model(ids).logits
    assert not torch.allclose(half, at_one) and not torch.allclose(half, base(ids).logits)


def test_dose_of_a_scalar_edit_is_the_scalar_interpolated_toward_one():
    """SEMANTICS S2.4."""
    model = tiny_model()
    weights = _base_weights(model)
    edit = _scale_edit(model)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(6))
    edit.set_scales(dosed_scales(edit.scales(), 0.5))  # s -> 1 + (s - 1)/2: -3 -> -1, 0.5 -> 0.75
    assert edit.scales() == {"h.1.mlp.down_proj:1": -1.0, "h.1.mlp.down_proj:3": 0.75}
    with torch.no_grad():
        by_scalars = edit(ids).logits
    edit.set_scales({"h.1.mlp.down_proj:1": -3.0, "h.1.mlp.down_proj:3": 0.5})
    d = dosable(edit, weights)
    d.set_dose(0.5)
    with torch.no_grad():
        assert torch.allclose(d.model(ids).logits, by_scalars, atol=1e-5)


def test_doses_outside_the_range_are_refused():
    for bad in (-0.1, 1.6, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0.0, 1.5\]"):
            check_dose(bad)
    with pytest.raises(ValidationError, match="outside"):
        AttackConfig(doses=[0.0, 2.0])
    with pytest.raises(ValidationError, match="positive"):
        AttackConfig(lrs=[0.0])


def test_relearning_recovers_a_deliberately_removed_distribution():
    """SEMANTICS S8.1, SEMANTICS S8.3."""
    base = trained_base()
    weights = _base_weights(base)
    removed = copy.deepcopy(base)
    with torch.no_grad():  # "unlearn" by hand: scramble the unembedding rows of the learned tokens
        w = removed.get_output_embeddings().weight
        w[8:24] = w[8:24][torch.randperm(16, generator=torch.Generator().manual_seed(0))] * 3
    changed = {n: p.detach().clone() for n, p in removed.named_parameters() if not torch.equal(p, weights[n])}
    edit = DosableEdit(removed, True, {n: weights[n] for n in changed}, changed, {})
    evals = {"markov": markov_stream(512, seed=1).reshape(8, 64), "other": torch.randint(0, 8, (4, 64), generator=torch.Generator().manual_seed(2))}
    config = AttackConfig(tokens=[256], attackers=["full", "lora"], lrs=[3e-3], max_steps=40, eval_every=5, seq_len=64,
                          target="markov", reference="other", doses=[0.0, 1.0], quantisations=["int8", "int4"], lora_rank=4)
    attack_stream = markov_stream(2048, seed=3)
    result = attack_edit(edit, base, attack_stream, evals, config)
    assert result["removed"] > 1.0  # the scramble did remove the distribution
    for row in result["relearning"]:
        curve = row["curve"]["ce"]["markov"]
        # the reported step is the first evaluated step past half of the removed CE
        assert row["half_step"] == recovery_step(row["curve"]["steps"], curve, result["edited_ce"]["markov"], result["base_ce"]["markov"], 0.5)
        assert row["half_step"] is not None and row["half_step"] <= 40
        assert row["half_tokens"] == row["half_step"] * 256
        assert curve[-1] < result["edited_ce"]["markov"] - 0.5 * result["removed"]
    # the dose curve's ends are the base and the edit
    assert result["dose"][0]["ce"] == pytest.approx(result["base_ce"])
    assert result["dose"][1]["ce"] == pytest.approx(result["edited_ce"])
    # quantisation: both CEs reported, and a scheme coarse enough to matter changes them
    schemes = {q["scheme"]: q for q in result["quantisation"]}
    assert set(schemes) == {"int8", "int4"}
    for q in schemes.values():
        assert set(q["base_ce"]) == set(q["edited_ce"]) == {"markov", "other"}
        assert q["removed"] == pytest.approx(q["edited_ce"]["markov"] - q["base_ce"]["markov"])
    assert schemes["int4"]["base_ce"]["markov"] != result["base_ce"]["markov"]


def test_int8_quantises_the_linear_layers_but_not_the_unembedding():
    """SEMANTICS S8.3."""
    model = tiny_model()
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    q = quantised(model, "int8", AttackConfig())
    for path in ("h.0.attn.q_proj", "h.1.mlp.c_fc", "h.1.mlp.down_proj"):
        assert isinstance(q.get_submodule(path), DynamicInt8Linear)
    assert type(q.get_output_embeddings()) is torch.nn.Linear
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(7))
    r, rq = evaluate_ce(model, {"x": ids}), evaluate_ce(q, {"x": ids})
    assert abs(r.ce["x"] - rq.ce["x"]) < 0.05 and r.ce["x"] != rq.ce["x"]


def test_relearn_curve_reads_every_eval_every_steps_and_the_last():
    model = tiny_model()
    block = markov_stream(65, seed=4)
    config = AttackConfig(max_steps=7, eval_every=3, seq_len=32)
    c = relearn_curve(model, block, {"m": markov_stream(128, seed=5).reshape(2, 64)}, "full", 1e-3, config)
    assert c["steps"] == [0, 3, 6, 7] and len(c["ce"]["m"]) == 4 and len(c["train_loss"]) == 7
    assert c["ce"]["m"][-1] < c["ce"]["m"][0]  # it learns
    # the attacked model is a copy: the model given is untouched
    assert evaluate_ce(model, {"m": markov_stream(128, seed=5).reshape(2, 64)}).ce["m"] == pytest.approx(c["ce"]["m"][0])


def test_attacker_data_errors_name_the_problem():
    """SEMANTICS S8.2."""
    with pytest.raises(ValueError, match="attacker data 'tiny'.*budget of 100"):
        attacker_block(torch.arange(50), 100, 0, "tiny")
    stream = markov_stream(300, seed=8)
    with pytest.raises(ValueError, match="shares a 16-token span with evaluation"):
        check_disjoint(stream[100:140], {"evaluation": stream[:200].reshape(2, 100)})
    check_disjoint(stream[:40], {"evaluation": markov_stream(200, seed=9).reshape(2, 100)})  # disjoint text passes
    with pytest.raises(ValueError, match="shares a 5-token span with forget"):  # a short text is a span by itself
        check_disjoint(stream[:40], {"forget": stream[20:25]})


def test_a_ci_gated_edit_is_dosed_but_not_relearned():
    """SEMANTICS S2.3, SEMANTICS S2.4."""
    from comptune.decomposition import CIConfig, Decomposition

    model = tiny_model()
    base = copy.deepcopy(model)
    weights = _base_weights(model)
    torch.manual_seed(3)
    dec = Decomposition.create(model, {"h.1.mlp.down_proj": 8}, CIConfig(type="layerwise_mlp"))
    gated = apply_component_scale(model, dec, ComponentScaleConfig(keys=["h.1.mlp.down_proj:2"], ci_threshold=0.0))
    gated.set_scales({"h.1.mlp.down_proj:2": -4.0})
    d = dosable(gated, weights)
    assert not d.mergeable
    evals = {"t": markov_stream(128, seed=1).reshape(2, 64), "r": markov_stream(128, seed=2, tokens=range(30, 40)).reshape(2, 64)}
    result = attack_edit(d, base, markov_stream(500, seed=3), evals, AttackConfig(target="t", reference="r", doses=[0.0, 1.0]))
    assert result["relearning"] is None and "CI-gated" in result["not_attacked"]
    assert result["dose"][0]["ce"] == pytest.approx(result["base_ce"])
    with pytest.raises(ValueError, match="CI-gated"):
        d.plain_model()
