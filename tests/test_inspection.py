"""Inspection: statistics, rankings, examples, PMI and write-vector effects."""

import pytest
import torch

from comptune.decomposition import CausalImportance, CIConfig, Decomposition
from comptune.inspection import component_stats, inspect_components, rank_by_difference, rank_by_specificity, write_vector_effects
from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM

FIRE_TOKEN, NEXT_TOKEN = 5, 7


class _CharTokenizer:
    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


@pytest.fixture(scope="module")
def decomposition():
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=50, n_layer=1, d_model=16, n_head=2, d_mlp=32, n_ctx=16)).eval()
    return Decomposition.create(model, {"h.*.attn.q_proj": 4, "h.*.attn.v_proj": 4, "h.*.mlp.c_fc": 6},
                                ci=CIConfig(type="layerwise_mlp", hidden_dims=[4]))


def _token_ci(decomposition):
    """A CI function we control: subcomponent 0 of v_proj fires exactly on FIRE_TOKEN (CI 0.9),
    subcomponent 1 everywhere (0.5), the rest never."""
    real = decomposition.causal_importance

    def fake(input_ids):
        ci = real(input_ids)
        lower = {p: torch.zeros_like(t) for p, t in ci.lower.items()}
        lower["h.0.attn.v_proj"][..., 0] = 0.9 * (input_ids == FIRE_TOKEN)
        lower["h.0.attn.v_proj"][..., 1] = 0.5
        return CausalImportance(lower=lower, upper=lower, pre_weight_acts=ci.pre_weight_acts)

    return fake


def _data():
    g = torch.Generator().manual_seed(0)
    german = torch.randint(10, 50, (4, 12), generator=g)
    german[:, 3] = FIRE_TOKEN
    german[:, 4] = NEXT_TOKEN
    english = torch.randint(10, 50, (4, 12), generator=g)
    italian = german.clone()
    return {"de": german, "en": english, "it": italian}


def test_stats_and_rankings(decomposition, monkeypatch):
    monkeypatch.setattr(decomposition, "causal_importance", _token_ci(decomposition))
    stats = component_stats(decomposition, _data(), threshold=0.1)
    prof = stats.profile("h.0.attn.v_proj:0")
    assert prof["de"]["mean_ci"] == pytest.approx(0.9 / 12) and prof["en"]["mean_ci"] == 0
    assert prof["de"]["firing_freq"] == pytest.approx(1 / 12)
    assert stats.profile("h.0.attn.v_proj:1")["en"]["firing_freq"] == 1.0
    assert rank_by_difference(stats, "de", "en", top=1)[0][0] == "h.0.attn.v_proj:0"
    # it fires on Italian as much as on German: the specificity criterion drops it to zero
    spec = dict(rank_by_specificity(stats, "de", ["en", "it"]))
    assert spec["h.0.attn.v_proj:0"] == pytest.approx(0.0)
    assert rank_by_difference(stats, "de", "en", modules=["h.0.mlp.c_fc"], top=1)[0][0].startswith("h.0.mlp.c_fc:")
    with pytest.raises(KeyError, match="not in these statistics"):
        rank_by_difference(stats, "fr", "en")


def test_examples_and_pmi(decomposition, monkeypatch):
    monkeypatch.setattr(decomposition, "causal_importance", _token_ci(decomposition))
    rep = inspect_components(decomposition, _CharTokenizer(), _data(), ["h.0.attn.v_proj:0"], n_examples=3, min_count=2)
    r = rep["h.0.attn.v_proj:0"]
    assert r["fires"] == {"de": 4, "it": 4}
    # examples per dataset, in the datasets' order: English shows none, German and Italian three each
    assert list(r["examples"]) == ["de", "en", "it"] and [len(v) for v in r["examples"].values()] == [3, 0, 3]
    assert all(f"⟦<{FIRE_TOKEN}>⟧" in ex["text"] and ex["ci"] == pytest.approx(0.9) for v in r["examples"].values() for ex in v)
    assert r["input_pmi"][0]["token"] == f"<{FIRE_TOKEN}>" and r["input_pmi"][0]["pmi"] > 0
    assert r["output_pmi"][0]["token"] == f"<{NEXT_TOKEN}>"


def test_pmi_ties_are_ranked_by_count():
    from collections import Counter

    from comptune.inspection.examples import _pmi

    fired = Counter({1: 5, 2: 2, 3: 3})  # every token seen only when firing: the same PMI for all
    rows = _pmi(fired, Counter(fired) + Counter({4: 90}), 100, _CharTokenizer(), top=3, min_count=1)
    assert [r["count"] for r in rows] == [5, 3, 2] and len({r["pmi"] for r in rows}) == 1


def test_bad_keys_name_the_valid_range(decomposition):
    with pytest.raises(ValueError, match=r"4 subcomponents, valid indices 0\.\.3"):
        inspect_components(decomposition, _CharTokenizer(), _data(), ["h.0.attn.v_proj:9"])
    with pytest.raises(ValueError, match=r"module 'h.0.attn.x_proj' is not in the decomposition; valid modules \(index range\):"
        r" h.0.attn.q_proj \(0..3\), h.0.attn.v_proj \(0..3\), h.0.mlp.c_fc \(0..5\)"):
        inspect_components(decomposition, _CharTokenizer(), _data(), ["h.0.attn.x_proj:0"])


def test_real_ci_statistics_are_in_range(decomposition):
    stats = component_stats(decomposition, {"de": _data()["de"]})
    for p in decomposition.module_paths:
        assert stats.mean_ci[p].shape == (1, decomposition.C(p))
        assert ((stats.mean_ci[p] >= 0) & (stats.mean_ci[p] <= 1)).all()


def test_write_vector_effects_follow_the_direct_path(decomposition):
    model = decomposition.target
    got = write_vector_effects(model, decomposition, "h.0.attn.v_proj:2", top=3)
    u = decomposition.get_components("h.0.attn.v_proj").U[2].detach()
    logits = model.lm_head.weight @ ((model.h[0].attn.o_proj.weight @ u) * model.ln_f.weight)
    assert [int(t["token"]) for t in got["promoted"]] == logits.topk(3).indices.tolist()
    assert [int(t["token"]) for t in got["suppressed"]] == (-logits).topk(3).indices.tolist()
    assert write_vector_effects(model, decomposition, "h.0.attn.q_proj:0") is None
