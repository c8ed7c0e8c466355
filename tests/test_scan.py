"""Dose scan: the cached fast path equals the real edit, bisection finds the bound, rankings, bad input."""

import math
import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from comptune.decomposition import CIConfig, Decomposition
from comptune.decomposition.bases import neuron_components, svd_components
from comptune.evaluation.ce import evaluate_ce
from comptune.inspection.scan import (
    DoseScanner,
    attribution_scores,
    candidate_rankings,
    dose_scan,
    pool_candidates,
)
from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tuning import ComponentScaleConfig, apply_component_scale

torch.set_num_threads(1)


def tiny_lm():
    torch.manual_seed(0)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=64, n_layer=3, d_model=32, n_head=2, d_mlp=64, n_ctx=32)).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=3, n_head=2)).eval()


def data():
    g = torch.Generator().manual_seed(3)
    return {"de": torch.randint(0, 64, (5, 12), generator=g), "en": torch.randint(0, 64, (6, 12), generator=g)}


def _edited_ce(make, basis, key, s, datasets):
    model = make()
    edit = apply_component_scale(model, basis, ComponentScaleConfig(keys=[key]))
    edit.set_scales({key: s})
    return evaluate_ce(model, datasets, batch_size=4).ce  # the wrapper edits `model` in place


@pytest.mark.parametrize("make,paths", [
    (tiny_lm, ["h.2.mlp.down_proj", "h.1.attn.q_proj", "h.0.mlp.c_fc"]),
    (tiny_gpt2, ["transformer.h.2.mlp.c_proj", "transformer.h.1.attn.c_attn"]),
], ids=["llama-style Linear", "gpt2 Conv1D"])
def test_cached_fast_path_equals_component_scale_and_full_evaluation(make, paths):
    """SEMANTICS S3.1."""
    model = make()
    basis = svd_components(model, paths)
    datasets = data()
    # batch 2 and 3 points per forward: batches and point chunks that do not divide evenly
    scanner = DoseScanner(model, basis, datasets, batch_size=2, points_per_forward=3)
    base = evaluate_ce(make(), datasets, batch_size=4).ce
    assert {n: float(v[0]) for n, v in scanner.base.items()} == pytest.approx(base, abs=1e-5)
    points = [(f"{p}:{i}", s) for p in paths for i, s in ((0, -3.0), (1, 0.0), (3, 5.0), (2, 1.0))]
    got = scanner.ce_at(points)
    for (key, s), ce in zip(points, got):
        assert ce == pytest.approx(_edited_ce(make, basis, key, s, datasets), abs=1e-5), (key, s)


def test_neuron_basis_scan_matches_scaling_the_hidden_unit():
    model = tiny_lm()
    basis = neuron_components(model, ["h.1.mlp.down_proj"])
    datasets = data()
    got = DoseScanner(model, basis, datasets, batch_size=4).ce_at([("h.1.mlp.down_proj:7", -2.0)])[0]
    ref = tiny_lm()
    with torch.no_grad():
        ref.h[1].mlp.down_proj.weight[:, 7] *= -2.0  # the unit's write column, scaled by s
    assert got == pytest.approx(evaluate_ce(ref, datasets).ce, abs=1e-5)


class _SyntheticScanner:
    """A scanner whose CEs are known functions of s: damage (s − 1)²/100 on both sides, gain
    2·|s − 1| below s = 1 and 0.5·|s − 1| above it."""

    def __init__(self):
        self.basis = {"m": svd_components(tiny_lm(), ["h.0.mlp.c_fc"])["h.0.mlp.c_fc"]}
        self.datasets = {"t": None, "r": None}
        self.base = {"t": torch.tensor([3.0]), "r": torch.tensor([2.0])}
        self.calls = []

    def ce_at(self, points, names=None):
        self.calls.append((len(points), tuple(names)))
        out = []
        for _, s in points:
            m = abs(s - 1)
            ce = {"t": 3.0 + (2 * m if s < 1 else 0.5 * m), "r": 2.0 + m * m / 100}
            out.append({n: ce[n] for n in names})
        return out


def test_bisection_finds_the_bound_on_a_monotone_curve():
    """SEMANTICS S3.2."""
    scanner = _SyntheticScanner()
    (r,) = dose_scan(scanner, ["m:0"], target="t", reference="r", bound=0.1, grid=(1, 2, 4, 8), bisect_steps=20)
    # damage 0.1 is reached at |s − 1| = sqrt(10): the inverted side wins, gain 2·sqrt(10)
    assert r.best_s == pytest.approx(1 - math.sqrt(10), rel=1e-4) and r.best_gain == pytest.approx(2 * math.sqrt(10), rel=1e-4)
    assert r.best_damage <= 0.1
    # every point beyond the bound was measured as such; bisection read the reference alone
    assert all(p.damage > 0.1 for p in r.curve if abs(p.s - 1) > math.sqrt(10))
    assert ("r",) in [names for _, names in scanner.calls] and scanner.calls[-1] == (2, ("t",))


def test_dose_scan_reports_the_best_point_within_the_bound():
    """SEMANTICS S3.2."""
    model = tiny_lm()
    paths = ["h.2.mlp.down_proj"]
    basis = svd_components(model, paths)
    scanner = DoseScanner(model, basis, data(), batch_size=3)
    keys = ["h.2.mlp.down_proj:0", "h.2.mlp.down_proj:5"]
    results = dose_scan(scanner, keys, target="de", reference="en", bound=0.05, grid=(0.5, 1, 2, 4, 8, 16), bisect_steps=4)
    assert [r.best_gain for r in results] == sorted((r.best_gain for r in results), reverse=True)
    for r in results:
        assert r.best_damage <= 0.05 and any(p.s == 1.0 and p.gain == 0 for p in r.curve)
        assert r.best_gain == max(p.gain for p in r.curve if p.gain is not None and p.damage <= 0.05)
        assert [p.s for p in r.curve] == sorted(p.s for p in r.curve)
        # each point is what the real edit gives
        for p in (r.curve[0], next(q for q in r.curve if q.s == r.best_s)):
            ce = _edited_ce(tiny_lm, basis, r.key, p.s, data())
            assert p.damage == pytest.approx(ce["en"] - float(scanner.base["en"][0]), abs=1e-5)
            if p.gain is not None:
                assert p.gain == pytest.approx(ce["de"] - float(scanner.base["de"][0]), abs=1e-5)
        # the side went out until it crossed the bound (or the grid ended) and bisected there
        beyond = [q for q in r.curve if q.s < 1 and q.damage > 0.05]
        if beyond:
            inside = [q for q in r.curve if q.s < 1 and q.damage <= 0.05]
            gap = min(q.s for q in inside) - max(q.s for q in beyond)
            assert gap > 0 and gap < 0.5 * max(abs(min(q.s for q in inside) - 1), 0.5)


def test_attribution_is_the_derivative_of_ce_in_s():
    model = tiny_lm()
    basis = svd_components(model, ["h.1.attn.o_proj"])
    datasets = data()
    attr = attribution_scores(model, basis, datasets, batch_size=4)
    g = attr["dce_ds"]["de"]["h.1.attn.o_proj"]
    i = int(g.abs().argmax())  # the largest effect, so a float32 central difference resolves it
    key, eps = f"h.1.attn.o_proj:{i}", 0.05
    hi = _edited_ce(tiny_lm, basis, key, 1 + eps, datasets)["de"]
    lo = _edited_ce(tiny_lm, basis, key, 1 - eps, datasets)["de"]
    assert float(g[i]) == pytest.approx((hi - lo) / (2 * eps), rel=2e-2)


def test_rankings_in_the_component_basis_and_the_pool():
    model = tiny_lm()
    d = Decomposition.create(model, {"h.2.mlp.down_proj": 8}, ci=CIConfig(type="layerwise_mlp", hidden_dims=[4]))
    rankings = candidate_rankings(model, {"h.2.mlp.down_proj": d.get_components("h.2.mlp.down_proj")}, data(),
                                  target="de", reference="en", protected=["en"], decomposition=d)
    assert set(rankings) == {"ci_difference", "ci_specificity", "attribution", "write_ratio"}
    for ranked in rankings.values():
        assert len(ranked) == 8 and [v for _, v in ranked] == sorted((v for _, v in ranked), reverse=True)
    pool = pool_candidates(rankings, top=2)
    assert len(set(pool)) == len(pool) and 2 <= len(pool) <= 8


def test_bad_input():
    model = tiny_lm()
    basis = svd_components(model, ["h.2.mlp.down_proj"])
    scanner = DoseScanner(model, basis, data())
    with pytest.raises(ValueError, match="bound must be > 0"):
        dose_scan(scanner, ["h.2.mlp.down_proj:0"], target="de", reference="en", bound=0)
    with pytest.raises(ValueError, match="unknown component key 'h.2.mlp.down_proj:999'"):
        dose_scan(scanner, ["h.2.mlp.down_proj:999"], target="de", reference="en")
    with pytest.raises(ValueError, match="dataset 'fr' is not among"):
        dose_scan(scanner, ["h.2.mlp.down_proj:0"], target="fr", reference="en")
    with pytest.raises(ValueError, match="must be a LongTensor"):
        DoseScanner(model, basis, {"de": torch.zeros(3, 1, dtype=torch.long)})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from comptune.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("scan_cli")
    de, en = "Die Kommission hat den Vorschlag geprüft. " * 60, "The committee has examined the proposal. " * 60
    tokenizer = train_tokenizer([de, en], vocab_size=300)
    torch.manual_seed(0)
    ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=300, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=64)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "de.txt").write_text(de)
    (root / "en.txt").write_text(en)
    return root


def test_inspect_scan_cli_in_the_neuron_basis_and_its_errors(model_dir, tmp_path, capsys):
    from comptune.cli import main

    de, en = str(model_dir / "de.txt"), str(model_dir / "en.txt")
    args = ["inspect", "--scan", "--basis", "neurons", "--model", str(model_dir / "model"), "--datasets", de, en, "--target", de,
            "--reference", en, "--block-len", "16", "--scan-blocks", "4", "--top-per-ranking", "2"]
    assert main([*args, "--out", str(tmp_path / "scan.json")]) == 0
    out = capsys.readouterr().out
    assert "Dose scan (neurons basis)" in out and "bar:" in out
    import json

    report = json.loads((tmp_path / "scan.json").read_text())
    assert report["config"]["modules"] == ["h.0.mlp.down_proj", "h.1.mlp.down_proj"] and set(report["rankings_top"]) == {"attribution", "write_ratio"}
    assert 2 <= len(report["candidates"]) <= 4 and (tmp_path / "scan.png").is_file() and (tmp_path / "scan.svg").is_file()
    for bad, message in (
        (["--bound", "0"], "--bound must be > 0"),
        (["--keys", "h.0.mlp.down_proj:9999"], "unknown component key 'h.0.mlp.down_proj:9999'"),
        (["--scan-blocks", "500"], "has only .* blocks of 16 tokens, the scan asks for 500"),
        (["--modules", "h.7.*"], "match none of the basis's modules"),
    ):
        assert main([*args, *bad]) == 2
        assert re.search(message, capsys.readouterr().err), message
