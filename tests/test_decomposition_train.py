"""Trainer: outputs, resume equivalence (split run and a real SIGTERM), config/checkpoint checks."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from comptune.decomposition import CIConfig, Decomposition
from comptune.decomposition.train import DecomposeConfig, decompose
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

torch.set_num_threads(1)


def tiny_lm():
    torch.manual_seed(0)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32))


BLOCKS = torch.randint(0, 64, (24, 12), generator=torch.Generator().manual_seed(1))


def config(**overrides):
    base = dict(patterns={"h.*.attn.v_proj": 16, "h.1.mlp.*": 24}, ci={"d_model": 32, "n_blocks": 1, "n_heads": 2, "d_ff": 64},
                steps=8, batch_size=4, lr=1e-3, faithfulness_warmup_steps=5, log_every=1, checkpoint_every=100, eval_every=4, pgd_eval_steps=2)
    return DecomposeConfig(**{**base, **overrides})


def rows(out_dir, name="train_log.jsonl"):
    return [json.loads(line) for line in (out_dir / name).read_text().splitlines()]


def test_run_writes_decomposition_logs_and_quality(tmp_path):
    """SPEC V5.3 (p annealed), SPEC V6.1."""
    d = decompose(tiny_lm(), BLOCKS, config(), tmp_path, eval_blocks=BLOCKS[:4])
    assert [r["step"] for r in rows(tmp_path)] == list(range(1, 9))
    assert {"faithfulness", "stochastic", "adversarial", "minimality", "loss", "p", "lr"} <= set(rows(tmp_path)[0])
    assert [r["step"] for r in rows(tmp_path, "eval_log.jsonl")] == [0, 4, 8]
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert quality["config"]["steps"] == 8 and quality["seed"] == 0 and "torch" in quality["versions"]
    assert {"target", "unmasked", "stochastic", "ci_masked"} <= set(quality["report"]["ce"])
    loaded = Decomposition.load(tmp_path, tiny_lm())
    assert loaded.config["steps"] == 8 and loaded.provenance["completed"] and loaded.provenance["method"] == "VPD"
    for p in d.module_paths:
        assert torch.equal(loaded.get_components(p).U, d.get_components(p).U)
    # the p of the minimality term anneals linearly from p_start
    ps = [r["p"] for r in rows(tmp_path)]
    assert ps[0] == pytest.approx(2.0 - 1.6 * 0 / 8) and ps[-1] == pytest.approx(2.0 - 1.6 * 7 / 8)


def test_adversary_source_gradient_from_the_main_backward_equals_its_own_backward(monkeypatch):
    """SPEC V4.2, SPEC V5.6. The step takes the adversary's source gradient from the main backward (which reaches the
    sources through the adversarial term alone) instead of a second backward of that term: both
    give the same gradient (float32 rounding)."""
    from comptune.decomposition.losses import PersistentPGD
    from comptune.decomposition.train import VPDTrainer

    cfg = config(coeff_adversarial=0.7)
    trainer = VPDTrainer(Decomposition.create(tiny_lm(), cfg.patterns, cfg.ci), cfg, torch.device("cpu"))
    expected, applied = [], []
    loss, ascent = PersistentPGD.loss, PersistentPGD.adam_ascent_step

    def spy_loss(self, decomposition, input_ids, target, ci_lower, recon=None):
        out = loss(self, decomposition, input_ids, target, ci_lower, recon)
        if any(g.requires_grad for g in ci_lower.values()):  # the step's adversarial term (the ascent holds CI fixed)
            expected.append(torch.autograd.grad(out, self.leaves(), retain_graph=True))
        return out

    monkeypatch.setattr(PersistentPGD, "loss", spy_loss)
    monkeypatch.setattr(PersistentPGD, "adam_ascent_step", lambda self, grads, lr: applied.append(list(grads)) or ascent(self, grads, lr))
    for step in range(3):
        trainer.train_step(BLOCKS[:4], step)
    assert len(expected) == 3 and len(applied) == 3 * (1 + cfg.ppgd_inner_steps)
    for want, got in zip(expected, applied[cfg.ppgd_inner_steps :: 1 + cfg.ppgd_inner_steps]):
        for w, g in zip(want, got):
            assert w.abs().max() > 0 and torch.allclose(g, w, rtol=1e-5, atol=1e-9)


def _straightforward_logits(d, ids, masks, delta_masks, routing=None):
    """The masked forward written out (SPEC V3.1/V3.2), independently of `Decomposition`'s hooks: Δ
    materialised, y = ((x V) ⊙ m) U + m_Δ Δx + b, unrouted positions keep the module's own output."""
    handles = []
    for p in d.module_paths:
        def hook(module, args, output, p=p):
            x, comps = args[0], d.get_components(p)
            y = ((x @ comps.V) * masks[p]) @ comps.U + delta_masks[p].unsqueeze(-1) * (x @ (d.target_weight(p) - comps.weight()).T)
            y = y if module.bias is None else y + module.bias
            return y if routing is None else torch.where(routing[p].unsqueeze(-1), y, output)
        handles.append(d.target_module(p).register_forward_hook(hook))
    try:
        return d.target(ids).logits
    finally:
        for h in handles:
            h.remove()


def test_the_step_gives_the_straightforward_losses_and_gradients(monkeypatch):
    """SPEC V5.6. One training step (fused mask coefficients, routing folded into the sources, the KL from one
    log-softmax) against the same step written out: textbook KL, masks m = g + (1 − g) r, Δ materialised,
    routing by `where`. Everything in fp64 except the KL, which both compute in float32 (as training
    does; a float32 KL of log-probabilities ≈ 4 carries ≈ 1e-6 absolute error): losses agree to 1e-5 relative
    or 1e-6 absolute, every component, CI and adversary-source gradient to 1e-5 relative to its largest entry."""
    from comptune.decomposition.losses import PersistentPGD, faithfulness_loss, minimality_loss, sample_subset_routing
    from comptune.decomposition.train import VPDTrainer

    torch.set_default_dtype(torch.float64)
    try:
        cfg = config(coeff_adversarial=0.7, grad_clip_components=None)
        d = Decomposition.create(tiny_lm(), cfg.patterns, cfg.ci)
        trainer = VPDTrainer(d, cfg, torch.device("cpu"))
        batch = BLOCKS[:4]
        trainer.train_step(batch, 0)  # makes the adversary and moves the sources
        adversarial_sources = []
        loss = PersistentPGD.loss

        def spy_loss(self, decomposition, input_ids, target, ci_lower, recon=None):
            if any(g.requires_grad for g in ci_lower.values()):  # the step's adversarial term
                adversarial_sources.append({p: (r.detach().clone(), rd.detach().clone()) for p, (r, rd) in self.sources.items()})
            return loss(self, decomposition, input_ids, target, ci_lower, recon)

        monkeypatch.setattr(PersistentPGD, "loss", spy_loss)
        applied, ascent = [], PersistentPGD.adam_ascent_step
        monkeypatch.setattr(PersistentPGD, "adam_ascent_step", lambda self, grads, lr: applied.append(list(grads)) or ascent(self, grads, lr))
        monkeypatch.setattr(trainer.opt_components, "step", lambda: None)  # keep the parameters the grads are of
        monkeypatch.setattr(trainer.opt_ci, "step", lambda: None)
        rng = trainer.mask_rng.get_state()
        row = trainer.train_step(batch, 1)
        params = [*d.component_parameters(), *d.ci_fn.parameters()]
        fused_grads = [p.grad.clone() for p in params]

        for p in params:
            p.grad = None
        ci = d.causal_importance(batch)
        log_p = torch.log_softmax(ci.target_logits.detach().float(), -1)

        def kl(logits):
            return (log_p.exp() * (log_p - torch.log_softmax(logits.float(), -1))).sum(-1).mean()

        gen = torch.Generator().set_state(rng)
        noise = {p: torch.rand((*g.shape[:-1], g.shape[-1] + 1), generator=gen) for p, g in ci.lower.items()}
        routing = sample_subset_routing(d.module_paths, tuple(batch.shape), "cpu", gen)
        masks = {p: g + (1 - g) * noise[p][..., :-1] for p, g in ci.lower.items()}
        stochastic = kl(_straightforward_logits(d, batch, masks, {p: r[..., -1] for p, r in noise.items()}, routing))
        (sources,) = adversarial_sources
        leaves = [t.requires_grad_(True) for pair in sources.values() for t in pair]
        masks = {p: g + (1 - g) * sources[p][0] for p, g in ci.lower.items()}
        adversarial = kl(_straightforward_logits(d, batch, masks, {p: sources[p][1][..., 0] for p in sources}))
        terms = {"faithfulness": faithfulness_loss(d), "minimality": minimality_loss(ci.upper, row["p"], cfg.minimality_beta, cfg.minimality_eps),
                 "stochastic": stochastic, "adversarial": adversarial}
        total = (cfg.coeff_faithfulness * terms["faithfulness"] + cfg.coeff_minimality * terms["minimality"]
                 + cfg.coeff_stochastic * stochastic + cfg.coeff_adversarial * adversarial)
        total.backward()
        for name, value in terms.items():
            assert row[name] == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
        for source, fused in zip(leaves, applied[-1]):  # the third ascent: the adversarial term's source gradient
            assert torch.allclose(fused, source.grad / cfg.coeff_adversarial, rtol=1e-5, atol=1e-5 * source.grad.abs().max().item() / cfg.coeff_adversarial)
        for p, fused in zip(params, fused_grads):
            assert p.grad.abs().max() > 0
            assert torch.allclose(fused, p.grad, rtol=1e-5, atol=1e-5 * p.grad.abs().max().item())
    finally:
        torch.set_default_dtype(torch.float32)


def test_stop_and_resume_continues_the_same_run(tmp_path):
    """SPEC V5.6."""
    full = decompose(tiny_lm(), BLOCKS, config(), tmp_path / "full")
    first = decompose(tiny_lm(), BLOCKS, config(), tmp_path / "split", stop_at_step=3)
    assert not first.provenance["completed"] and first.provenance["steps_done"] == 3
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        decompose(tiny_lm(), BLOCKS, config(), tmp_path / "split", resume=False)
    with pytest.raises(ValueError, match="different config.*lr"):
        decompose(tiny_lm(), BLOCKS, config(lr=2e-3), tmp_path / "split")
    resumed = decompose(tiny_lm(), BLOCKS, config(log_every=1, checkpoint_every=50), tmp_path / "split")  # bookkeeping may change
    assert resumed.provenance["completed"]
    assert rows(tmp_path / "full") == rows(tmp_path / "split")  # bit-for-bit
    for p in full.module_paths:
        assert torch.equal(full.get_components(p).V, resumed.get_components(p).V)
    for (k, a), (_, b) in zip(full.ci_fn.state_dict().items(), resumed.ci_fn.state_dict().items()):
        assert torch.equal(a, b), k


def _same_rows(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-6), (ra["step"], k)
    return True


WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_decomposition_train import BLOCKS, config, tiny_lm
    from comptune.decomposition.train import decompose
    decompose(tiny_lm(), BLOCKS, config(steps=400), sys.argv[1])
    """
)


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    """SPEC V5.6."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__)))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    stopped_at = Decomposition.load(out, tiny_lm()).provenance["steps_done"]
    assert 5 <= stopped_at < 400
    long = config(steps=400)
    resumed = decompose(tiny_lm(), BLOCKS, long, out, stop_at_step=stopped_at + 10)
    reference = decompose(tiny_lm(), BLOCKS, long, tmp_path / "reference", stop_at_step=stopped_at + 10)
    _same_rows(rows(tmp_path / "reference"), rows(out))
    for p in reference.module_paths:
        assert torch.equal(reference.get_components(p).U, resumed.get_components(p).U)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        decompose(tiny_lm(), BLOCKS[:3], config(), tmp_path / "a")
    with pytest.raises(ValueError, match="token id 64 but the model has 64 embeddings"):
        decompose(tiny_lm(), BLOCKS.clone().index_fill_(1, torch.tensor([0]), 64), config(), tmp_path / "ids")
    with pytest.raises(ValueError, match="matches no module"):
        decompose(tiny_lm(), BLOCKS, config(patterns={"h.*.attn.w_proj": 4}), tmp_path / "b")
    with pytest.raises(ValueError, match="extra"):
        DecomposeConfig(stepz=3)
    # a pickle under the checkpoint's name is refused, never unpickled
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a valid safetensors file|not a decompose checkpoint"):
        decompose(tiny_lm(), BLOCKS, config(), tmp_path / "c")


def test_init_from_continues_the_source_exactly(tmp_path):
    """SEMANTICS S1.2. A run started --init-from a saved decomposition begins where the source ended: its step-0
    evaluation equals the source's final one (same eval blocks and seed), it skips the warm-up,
    records its origin, and refuses a source of another shape or model."""
    src = decompose(tiny_lm(), BLOCKS, config(), tmp_path / "src", eval_blocks=BLOCKS[:4])
    final = rows(tmp_path / "src", "eval_log.jsonl")[-1]
    cont = decompose(tiny_lm(), BLOCKS, config(steps=4, lr=5e-4), tmp_path / "cont", eval_blocks=BLOCKS[:4], init_from=tmp_path / "src")
    first = rows(tmp_path / "cont", "eval_log.jsonl")[0]
    assert first["step"] == 0 and final["step"] == 8
    for k in ("unmasked", "ci_masked", "stochastic"):
        assert first["ce"][k] == pytest.approx(final["ce"][k], abs=1e-6), k
    assert first["l0"]["total"] == pytest.approx(final["l0"]["total"], abs=1e-6)
    assert first["pgd_kl"] == pytest.approx(final["pgd_kl"], abs=1e-6)
    assert cont.provenance["init_from"]["path"] == str(tmp_path / "src") and cont.provenance["completed"]
    assert not torch.equal(cont.get_components("h.0.attn.v_proj").V, src.get_components("h.0.attn.v_proj").V)  # it trained on
    # a resumed init-from run keeps its origin
    split = decompose(tiny_lm(), BLOCKS, config(steps=4), tmp_path / "split", init_from=tmp_path / "src", stop_at_step=2)
    assert not split.provenance["completed"]
    assert decompose(tiny_lm(), BLOCKS, config(steps=4), tmp_path / "split").provenance["init_from"]["path"] == str(tmp_path / "src")

    with pytest.raises(ValueError, match=r"does not match this run: it decomposes .*C=16.* this run's config asks for .*C=8"):
        decompose(tiny_lm(), BLOCKS, config(patterns={"h.*.attn.v_proj": 8, "h.1.mlp.*": 24}), tmp_path / "c", init_from=tmp_path / "src")
    other = tiny_lm()
    with torch.no_grad():
        other.h[0].attn.v_proj.weight.add_(1.0)
    with pytest.raises(ValueError, match="fingerprint .* but this model's are"):
        decompose(other, BLOCKS, config(), tmp_path / "m", init_from=tmp_path / "src")


def test_non_finite_loss_names_the_term_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """SPEC V5.6."""
    import comptune.decomposition.train as train_mod

    real = train_mod.minimality_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(train_mod, "minimality_loss", poisoned)
    with pytest.raises(FloatingPointError, match="the minimality loss term went non-finite at step 3.*resume from the last checkpoint"):
        decompose(tiny_lm(), BLOCKS, config(checkpoint_every=2), tmp_path)
    monkeypatch.setattr(train_mod, "minimality_loss", real)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 2  # the last good checkpoint, untouched
    assert decompose(tiny_lm(), BLOCKS, config(checkpoint_every=2), tmp_path).provenance["completed"]


def test_basis_init_starts_from_units_that_sum_to_w(tmp_path):
    """SPEC V1.4, SEMANTICS S1.1."""
    from comptune.decomposition.train import basis_init

    model = tiny_lm()  # d_model 32, d_mlp 64
    d = Decomposition.create(model, {"h.0.mlp.down_proj": 64, "h.0.mlp.c_fc": 64, "h.0.attn.v_proj": 48}, ci=config().ci)
    basis_init(d, {"h.0.mlp.*": "neurons", "h.0.attn.v_proj": "svd"})
    for p in d.module_paths:
        torch.testing.assert_close(d.get_components(p).weight(), d.target_module(p).weight, atol=1e-5, rtol=1e-5)
    down, up = d.get_components("h.0.mlp.down_proj"), d.get_components("h.0.mlp.c_fc")
    W_down, W_up = model.h[0].mlp.down_proj.weight, model.h[0].mlp.c_fc.weight
    torch.testing.assert_close(down.V[:, 7], torch.nn.functional.one_hot(torch.tensor(7), 64).float())  # reads hidden unit 7
    torch.testing.assert_close(down.U[7], W_down[:, 7])  # writes its column
    torch.testing.assert_close(up.V[:, 7], W_up[7])  # computes hidden unit 7
    torch.testing.assert_close(up.U[7], torch.nn.functional.one_hot(torch.tensor(7), 64).float())
    v = d.get_components("h.0.attn.v_proj")
    assert torch.all(v.U[32:] == 0)  # beyond the 32 singular directions: components that write nothing
    with pytest.raises(ValueError, match="needs C ≥ 64"):
        basis_init(Decomposition.create(model, {"h.0.mlp.c_fc": 16}, ci=config().ci), {"h.0.mlp.c_fc": "neurons"})
    with pytest.raises(ValueError, match=r"init patterns \['h.9.\*'\] match no decomposed module"):
        basis_init(d, {"h.9.*": "svd"})
    # in a run: the config's init is applied before the warm-up, and the run trains from it
    run = decompose(tiny_lm(), BLOCKS, config(init={"h.1.mlp.*": "neurons"}, patterns={"h.1.mlp.*": 64}), tmp_path)
    assert run.provenance["completed"]


def test_initialisation_faithfulness_and_the_total_loss():
    """SPEC V1.4: V ~ N(0, 1/d_in), U ~ N(0, 1/C). SPEC V5.2: faithfulness is Σ‖Δ‖² / Σ numel(W).
    SPEC V5.4: the training loss is the coefficient-weighted sum of the four terms."""
    from comptune.decomposition.losses import faithfulness_loss
    from comptune.decomposition.train import VPDTrainer

    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=64, n_layer=1, d_model=128, n_head=2, d_mlp=512, n_ctx=32))
    dec = Decomposition.create(model, {"h.0.mlp.c_fc": 400}, CIConfig(type="layerwise_mlp"))
    comp = dec.get_components("h.0.mlp.c_fc")
    assert comp.V.std().item() == pytest.approx(128 ** -0.5, rel=0.02) and comp.U.std().item() == pytest.approx(400 ** -0.5, rel=0.02)

    cfg = config(coeff_faithfulness=3.0, coeff_stochastic=0.7, coeff_adversarial=0.3, coeff_minimality=0.01)
    dec = Decomposition.create(tiny_lm(), cfg.patterns, cfg.ci)
    by_hand = sum(dec.delta(p).pow(2).sum() for p in dec.module_paths) / sum(dec.delta(p).numel() for p in dec.module_paths)
    assert faithfulness_loss(dec).item() == pytest.approx(by_hand.item(), rel=1e-6)
    row = VPDTrainer(dec, cfg, torch.device("cpu")).train_step(BLOCKS[:4], 0)
    total = 3.0 * row["faithfulness"] + 0.7 * row["stochastic"] + 0.3 * row["adversarial"] + 0.01 * row["minimality"]
    assert row["loss"] == pytest.approx(total, rel=1e-5)


def test_bf16_autocast_step_stays_close_to_fp32_and_keeps_delta_exact():
    """Autocast ("bf16"; "auto" turns it on for CUDA only) runs the forwards in bf16 while Δ and
    faithfulness stay fp32: the same step's losses agree with fp32's to bf16 precision."""
    from comptune.decomposition.train import VPDTrainer

    rows = {}
    for mode in ("off", "bf16"):
        cfg = config(autocast=mode)
        torch.manual_seed(0)
        dec = Decomposition.create(tiny_lm(), cfg.patterns, cfg.ci)
        trainer = VPDTrainer(dec, cfg, torch.device("cpu"))
        assert trainer.autocast().fast_dtype == torch.bfloat16 and trainer.autocast()._enabled == (mode == "bf16")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert dec.delta(dec.module_paths[0]).dtype == torch.float32
        rows[mode] = trainer.train_step(BLOCKS[:4], 0)
    assert rows["bf16"]["faithfulness"] == pytest.approx(rows["off"]["faithfulness"], rel=1e-5)
    for term in ("stochastic", "adversarial", "minimality"):
        assert rows["bf16"][term] == pytest.approx(rows["off"][term], rel=0.05), term
    assert VPDTrainer(Decomposition.create(tiny_lm(), config().patterns, config().ci), config(), torch.device("cpu")).autocast()._enabled is False
