"""The shared objective, forget budgets and the trainer (convergence, non-finite loss, bad input)."""

import math

import pytest
import torch

from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tuning import (
    Components,
    NonFiniteLossError,
    Selection,
    TuneConfig,
    TuneResult,
    capped_forget_term,
    forget_sequences,
    next_token_ce,
    retain_kl,
    take_budget,
    tune,
    tuning_loss,
)

torch.set_num_threads(1)

V_SIZE = 64


def streams():
    """Learnable toy 'languages': retain text counts up through tokens 0..31, forget text steps by 3
    through 32..63 (with a little noise so neither is trivially certain)."""
    g = torch.Generator().manual_seed(4)

    def text(n, lo, step):
        t = (lo + (torch.arange(n) * step) % 32).clone()
        noise = torch.rand(n, generator=g) < 0.1
        t[noise] = torch.randint(lo, lo + 32, (int(noise.sum()),), generator=g)
        return t

    return text(600, 32, 3), text(2000, 0, 1)


@pytest.fixture(scope="module")
def trained_state():
    """A tiny model that has learned both toy languages (a few seconds of training)."""
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=V_SIZE, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32))
    forget, retain = streams()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        rows = [s[i : i + 16] for s in (forget, retain) for i in torch.randint(0, len(s) - 16, (4,), generator=g).tolist()]
        loss = model(input_ids=torch.stack(rows), labels=torch.stack(rows)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def make_model(trained_state):
    def make():
        model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=V_SIZE, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32))
        model.load_state_dict(trained_state)
        return model.eval()

    return make


def components(seed=1, C=8):
    """A stand-in decomposition of one matrix (the trainer only needs the selected V, U)."""
    g = torch.Generator().manual_seed(seed)
    return {"h.1.attn.v_proj": Components(torch.randn(32, C, generator=g) / 32**0.5, torch.randn(C, 32, generator=g) / C**0.5)}


# ---------------------------------------------------------------- objective
def test_capped_forget_term_has_zero_gradient_at_and_above_chance():
    """SEMANTICS S4.1."""
    labels = torch.tensor([[0, 1, 2, 3]])
    # uniform logits: CE is exactly ln|V| (at chance)
    at_chance = torch.zeros(1, 4, 10, requires_grad=True)
    term, ce = capped_forget_term(at_chance, labels)
    assert float(ce.detach()) == pytest.approx(math.log(10)) and float(term.detach()) == pytest.approx(-math.log(10))
    term.backward()
    assert torch.count_nonzero(at_chance.grad) == 0
    # confidently wrong: CE above chance, still no push
    wrong = torch.full((1, 4, 10), 0.0)
    wrong[..., 9] = 8.0
    wrong.requires_grad_(True)
    term, ce = capped_forget_term(wrong, labels)
    assert float(ce) > math.log(10) and float(term) == pytest.approx(-math.log(10))
    term.backward()
    assert torch.count_nonzero(wrong.grad) == 0
    # below chance the term pushes CE up
    right = torch.zeros(1, 4, 10)
    right[0, torch.arange(3), labels[0, 1:]] = 3.0
    right.requires_grad_(True)
    term, ce = capped_forget_term(right, labels)
    assert float(ce) < math.log(10)
    term.backward()
    assert right.grad.abs().sum() > 0


def test_ce_excludes_the_first_token_and_padding():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    changed = labels.clone()
    changed[:, 0] = (labels[:, 0] + 1) % 7  # the first token is never a target
    assert torch.equal(next_token_ce(logits, labels), next_token_ce(logits, changed))
    padded = labels.clone()
    padded[1, 3:] = -100
    manual = torch.cat([
        torch.nn.functional.cross_entropy(logits[0, :4], labels[0, 1:], reduction="none"),
        torch.nn.functional.cross_entropy(logits[1, :2], labels[1, 1:3], reduction="none"),
    ]).mean()
    assert torch.allclose(next_token_ce(logits, padded), manual)


def test_retain_kl_direction_and_zero():
    """SEMANTICS S4.1."""
    p = torch.randn(2, 3, 11)
    q = torch.randn(2, 3, 11)
    assert float(retain_kl(p, p)) == pytest.approx(0.0, abs=1e-6)
    ref = torch.nn.functional.kl_div(q.log_softmax(-1).reshape(-1, 11), p.log_softmax(-1).reshape(-1, 11), log_target=True, reduction="batchmean")
    assert torch.allclose(retain_kl(q, p), ref)  # KL(orig = p ‖ edited = q)


# ---------------------------------------------------------------- budgets
@pytest.mark.parametrize("budget", [2, 4, 8, 16, 31, 32, 100])
@pytest.mark.parametrize("seq_len", [5, 32])
def test_budget_takes_exactly_that_many_predicted_tokens(budget, seq_len):
    """SEMANTICS S4.2."""
    stream = torch.arange(1000)  # token value = position: shows which tokens were taken
    block, offset = take_budget(stream, budget, seed=3)
    assert torch.equal(block, torch.arange(offset, offset + budget + 1))
    ids, labels = forget_sequences(block, seq_len)
    targets = labels[labels != -100]
    assert targets.numel() == budget
    assert torch.equal(targets.sort().values, block[1:])  # every token after the context, once
    assert ids.shape[1] <= seq_len
    # every target's context is the real preceding text
    for i in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if labels[i, t] != -100:
                assert labels[i, t] == ids[i, t] and ids[i, t - 1] == labels[i, t] - 1


def test_seeds_take_disjoint_blocks_and_errors_say_how_much_text_there_is():
    """SEMANTICS S4.2."""
    stream = torch.arange(100)
    blocks = [set(take_budget(stream, 8, seed)[0].tolist()) for seed in range(11)]
    assert all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])
    assert take_budget(stream, 8, 2)[1] == take_budget(stream, 8, 2)[1]  # reproducible
    with pytest.raises(ValueError, match="only 100 tokens: use a budget of at most 99"):
        take_budget(stream, 100, 0)
    with pytest.raises(ValueError, match="seeds 0..10"):
        take_budget(stream, 8, 11)


# ---------------------------------------------------------------- trainer
def scale_config(**kw):
    base = dict(method="component_scale", selection=Selection(keys=["h.1.attn.v_proj:2"]), budget=16, lr=0.05, seq_len=16,
                retain_batch_size=2, patience=5, max_steps=40)
    return TuneConfig(**(base | kw))


def test_tune_raises_forget_ce_and_serialises(make_model):
    model = make_model()
    forget, retain = streams()
    tunable, result = tune(scale_config(max_steps=25, patience=1000, lr=0.3), model, forget, retain, components())
    assert result.steps == 25 and result.stopped_reason == "max_steps" and result.forget_tokens == 16
    assert len(result.loss_history) == 25
    with torch.no_grad():
        ids, labels = forget_sequences(take_budget(forget, 16, 0)[0], 16)
        before = next_token_ce(make_model()(input_ids=ids).logits, labels)
        after = next_token_ce(tunable.model(input_ids=ids).logits, labels)
    assert after > before + 0.1 and float(after) == pytest.approx(result.final_forget_ce, abs=0.3)
    assert set(result.final_scalars) == {"h.1.attn.v_proj:2"} and result.final_scalars["h.1.attn.v_proj:2"] != 1.0
    assert TuneResult.model_validate_json(result.model_dump_json()) == result
    again, result2 = tune(scale_config(max_steps=25, patience=1000, lr=0.3), make_model(), forget, retain, components())
    assert result2.final_scalars == result.final_scalars  # seeded: reproducible


def test_tune_stops_on_plateau(make_model):
    model = make_model()
    forget, retain = streams()
    # lr so small that the EMA never improves by min_delta: stop after `patience` steps
    _, result = tune(scale_config(lr=1e-9, min_delta=1e-3, patience=4), model, forget, retain, components())
    assert result.stopped_reason == "plateau" and result.steps == 5


def test_all_subcomponents_of_a_module_with_l1_and_forget_minibatches(make_model):
    forget, retain = streams()
    cfg = scale_config(selection=Selection(modules=["h.1.attn.v_proj"]), l1=0.5, budget=40, forget_batch_size=1, max_steps=6, patience=1000)
    tunable, result = tune(cfg, make_model(), forget, retain, components())
    assert sorted(result.final_scalars) == sorted(f"h.1.attn.v_proj:{c}" for c in range(8))
    assert result.forget_tokens == 40 and result.steps == 6
    assert float(tunable.l1_penalty().detach()) == pytest.approx(sum(abs(v - 1) for v in result.final_scalars.values()), rel=1e-5)


def test_tuning_loss_adds_its_terms():
    g = torch.Generator().manual_seed(0)
    f_logits, r_logits, orig = (torch.randn(2, 5, 9, generator=g) for _ in range(3))
    labels = torch.randint(0, 9, (2, 5), generator=g)
    l1 = torch.tensor(1.7)
    terms = tuning_loss(f_logits, labels, r_logits, orig, lambda_retain=3.0, l1_coef=0.2, l1_penalty=l1)
    expected = -torch.clamp(next_token_ce(f_logits, labels), max=math.log(9)) + 3.0 * retain_kl(r_logits, orig) + 0.2 * l1
    assert torch.allclose(terms.total, expected)


def test_lora_runs_through_the_same_trainer(make_model):
    forget, retain = streams()
    tunable, result = tune(TuneConfig(method="lora", budget=8, lr=0.01, seq_len=16, retain_batch_size=2, max_steps=3), make_model(), forget, retain)
    assert result.steps == 3 and result.final_scalars == {}
    assert len(tunable.parameters) == 24  # A and B on 12 matrices


def _gated_decomposition(model):
    from comptune.decomposition import CIConfig, Decomposition

    torch.manual_seed(3)
    return Decomposition.create(model, {"h.1.attn.v_proj": 8}, CIConfig(type="layerwise_mlp"))


@pytest.mark.parametrize("case", ["scalar", "scalar_minibatch", "ci_gated", "lora_local", "neuron"])
def test_prefix_cache_gives_the_plain_steps_losses_and_parameters(make_model, case):
    """The frozen blocks before the edit run once and are replayed: every step's loss and the
    trained parameters equal those of the plain step, where every pass runs the whole model."""
    forget, retain = streams()
    cfg = {
        "scalar": scale_config(max_steps=8, patience=1000),
        "scalar_minibatch": scale_config(budget=60, forget_batch_size=2, max_steps=8, patience=1000),
        "ci_gated": scale_config(ci_threshold=0.5, max_steps=8, patience=1000),
        "lora_local": TuneConfig(method="lora_local", selection=Selection(keys=["h.1.attn.v_proj:2"]), budget=16, lr=0.01, seq_len=16,
                                 retain_batch_size=2, max_steps=8, patience=1000),
        "neuron": TuneConfig(method="neuron_scale", selection=Selection(keys=["h.1.mlp.down_proj:7"]), budget=16, lr=0.05, seq_len=16,
                             retain_batch_size=2, max_steps=8, patience=1000),
    }[case]
    runs, block0_passes = [], []
    for cache in (True, False):
        model = make_model()
        decomposition = _gated_decomposition(model) if case == "ci_gated" else components()
        calls = []
        model.h[0].register_forward_hook(lambda *a: calls.append(1))
        runs.append(tune(cfg, model, forget, retain, decomposition, cache_prefix=cache))
        block0_passes.append(len(calls))
    (cached, cached_result), (plain, plain_result) = runs
    steps = cfg.max_steps
    # block 0 runs in the unedited passes only: the forget sequences once, each retain batch once.
    # A gated edit's CI reads the inputs captured in those passes; without the cache the forget
    # sequences have no unedited pass, so their gates take one CI forward of their own
    assert block0_passes == ([1 + steps, 1 + 3 * steps] if case == "ci_gated" else [1 + steps, 3 * steps])
    assert torch.allclose(torch.tensor(cached_result.loss_history), torch.tensor(plain_result.loss_history), rtol=1e-5, atol=1e-6)
    assert plain_result.loss_history[-1] != plain_result.loss_history[0]  # the parameters moved
    for a, b in zip(cached.parameters, plain.parameters):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gates_from_captured_inputs_equal_the_decompositions_own_ci(make_model):
    """A gated edit's gates from the module inputs of an unedited forward equal those of the
    decomposition's own clean forward (`compute_gates`)."""
    from comptune.tuning import apply_component_scale
    from comptune.tuning.component_scale import ComponentScaleConfig

    model = make_model()
    decomposition = _gated_decomposition(make_model())
    edited = apply_component_scale(model, decomposition, ComponentScaleConfig(keys=["h.1.attn.v_proj:2", "h.1.attn.v_proj:5"], ci_threshold=0.3))
    edited.set_scales({"h.1.attn.v_proj:2": -3.0, "h.1.attn.v_proj:5": 2.0})
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), edited.disable_adapter(), edited.capturing_ci_inputs() as captured:
        edited(input_ids=ids)
    assert set(captured) == set(decomposition.module_paths)
    fast, slow = edited.gates_from_inputs(captured), edited.compute_gates(ids)
    assert fast.keys() == slow.keys() and all(torch.equal(fast[p], slow[p]) for p in fast)
    assert 0 < float(fast["h.1.attn.v_proj"].mean()) < 1  # some positions gated, some not


def test_non_finite_loss_restores_the_last_good_step(make_model):
    forget, retain = streams()
    cfg = scale_config(max_steps=3, patience=1000)
    _, reference = tune(cfg, make_model(), forget, retain, components())  # parameters after step 2
    model = make_model()
    calls = {"n": 0}

    def poison(mod, args, out):
        # one unedited pass records the forget prefix, then each step runs block 1 three times
        # (orig retain, forget, retain): poison step 3's forget pass
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 1 + 3 * 3 + 2 else out

    model.h[1].register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"diverged at step 3: the loss became non-finite \(forget CE nan"
        r".*restored the parameters of step 2; lower the learning rate") as err:
        tune(scale_config(max_steps=10, patience=1000), model, forget, retain, components())
    assert err.value.step == 3
    restored = float(model.h[1].attn.v_proj.scale.detach()[0])
    # the restored value is the one the clean run used at step 2, i.e. before its last update
    clean = make_model()
    tunable, _ = tune(scale_config(max_steps=2, patience=1000), clean, forget, retain, components())
    assert restored == pytest.approx(tunable.scalars()["h.1.attn.v_proj:2"], abs=0)
    assert restored != reference.final_scalars["h.1.attn.v_proj:2"]


def test_divergence_stops_with_the_last_good_parameters_and_overflowing_lrs_are_refused(make_model):
    from comptune.tuning.train import DIVERGED_ABS_SCALE, DIVERGED_RETAIN_KL

    forget, retain = streams()
    model = make_model()
    with pytest.raises(NonFiniteLossError, match=r"training diverged at step \d+: (the retain KL passed|a scalar reached)"
        r".*restored the parameters of step") as err:
        tune(scale_config(lr=100, max_steps=50, patience=1000), model, forget, retain, components())
    k = err.value.step  # the parameters after k updates passed a bound; the model keeps those after k − 1
    kept = float(model.get_submodule("h.1.attn.v_proj").scale.detach()[0])
    if k == 1:
        assert kept == 1.0  # the first update already diverged: the unedited scalar is kept
    else:
        _, replay = tune(scale_config(lr=100, max_steps=k - 1, patience=1000), make_model(), forget, retain, components())
        assert replay.final_scalars["h.1.attn.v_proj:2"] == pytest.approx(kept, rel=1e-6)
        assert replay.final_retain_kl <= DIVERGED_RETAIN_KL and abs(kept) <= DIVERGED_ABS_SCALE
    with pytest.raises(ValueError, match="less than or equal to 1000"):
        scale_config(lr=1e300)


def test_tune_leaves_the_callers_global_rng_alone(make_model):
    forget, retain = streams()
    model = make_model()  # building a model draws from the global RNG; tuning it must not
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    tune(TuneConfig(method="lora", budget=8, lr=0.01, seq_len=16, retain_batch_size=2, max_steps=2), model, forget, retain)
    assert torch.equal(torch.rand(3), expected)


def test_bad_input_errors(make_model):
    forget, retain = streams()
    with pytest.raises(ValueError, match="retain set is empty"):
        tune(scale_config(), make_model(), forget, torch.zeros(0, dtype=torch.long), components())
    with pytest.raises(ValueError, match="forget text has only 600 tokens"):
        tune(scale_config(budget=2048), make_model(), forget, retain, components())


def test_bf16_autocast_tunes_like_fp32_to_bf16_precision(make_model):
    """`autocast=True` (what CUDA gets by default) runs the forwards in bf16; the learned scalars and
    losses stay fp32 and follow the fp32 run closely; off by default on the CPU."""
    forget, retain = streams()
    cfg = scale_config(max_steps=6, patience=1000)
    results = {}
    for mode in (None, True):
        tunable, result = tune(cfg, make_model(), forget, retain, components(), autocast=mode)
        assert all(p.dtype == torch.float32 for p in tunable.parameters)
        results[mode] = result
    plain, bf16 = results[None], results[True]
    assert plain.loss_history != bf16.loss_history  # bf16 did run (CPU default is fp32)
    assert torch.allclose(torch.tensor(bf16.loss_history), torch.tensor(plain.loss_history), rtol=0.03, atol=0.02)
    for k in plain.final_scalars:
        assert bf16.final_scalars[k] == pytest.approx(plain.final_scalars[k], abs=0.05)
