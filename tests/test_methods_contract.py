"""One contract for every registered tuning method, on nn.Linear and Conv1D models (as peft tests
every tuner with one battery): a fresh edit is the base model; after a training step it is not;
`disable_adapter()` gives the base; save → load gives the same logits, and loading onto another
model is refused; merging equals the live edit where a merge exists; the learned scalars and the L1 penalty agree with the selection."""

import copy
import math
from typing import get_args

import pytest
import torch

from comptune.decomposition import CIConfig, Decomposition
from comptune.tuning import TuneConfig, build_method
from comptune.tuning.config import Method
from comptune.tuning.edits import load_edit
from comptune.tuning.methods import METHODS
from conftest import TINY_LMS

torch.set_num_threads(1)

# every method, and the CI-gated variant of component_scale, with the selection it takes
VARIANTS = {
    "component_scale": lambda lm: dict(method="component_scale", selection={"keys": [f"{lm.mlp_out}:1", f"{lm.attn}:3"]}),
    "component_scale_gated": lambda lm: dict(method="component_scale", selection={"keys": [f"{lm.mlp_out}:1", f"{lm.attn}:3"]}, ci_threshold=0.0),
    "svd_scale": lambda lm: dict(method="svd_scale", selection={"keys": [f"{lm.mlp_in}:0", f"{lm.attn}:2"]}),
    "neuron_scale": lambda lm: dict(method="neuron_scale", selection={"keys": [f"{lm.mlp_out}:5", f"{lm.mlp_out}:17"]}),
    "lora": lambda lm: dict(method="lora", lora_rank=2),
    "lora_local": lambda lm: dict(method="lora_local", selection={"keys": [f"{lm.mlp_in}:4"]}),
}


def test_the_battery_covers_every_registered_method():
    assert set(METHODS) == set(get_args(Method)) == {v(TINY_LMS["linear"])["method"] for v in VARIANTS.values()}


def _decomposition(model, lm):
    torch.manual_seed(3)
    return Decomposition.create(model, {lm.mlp_out: 8, lm.attn: 8}, CIConfig(type="layerwise_mlp"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_method_contract(variant, tiny_lm, tmp_path):
    lm = tiny_lm
    config = TuneConfig(budget=4, **VARIANTS[variant](lm))
    base = lm.make()
    model = lm.make()
    dec = _decomposition(model, lm) if config.method == "component_scale" else None
    if dec is not None:
        dec.save(tmp_path / "dec")
    tunable = build_method(config.method, model, dec, config.selection, config, decomposition_dir=tmp_path / "dec")
    ids = lm.ids()
    with torch.no_grad():
        base_logits = base(ids).logits
        assert torch.equal(tunable.model(input_ids=ids).logits, base_logits)  # a fresh edit is the base model, exactly

    # one real training step (so masked gradients, e.g. neuron_scale's unselected units, behave as in training)
    opt = torch.optim.Adam(tunable.parameters, lr=0.1)
    loss = (tunable.model(input_ids=ids).logits * torch.randn(ids.shape + (64,), generator=torch.Generator().manual_seed(4))).sum()
    loss.backward()
    opt.step()
    with torch.no_grad():
        live = tunable.model(input_ids=ids).logits
        assert not torch.allclose(live, base_logits, atol=1e-4)  # the step changed the edit
        with tunable.model.disable_adapter():
            assert torch.allclose(tunable.model(input_ids=ids).logits, base_logits, atol=1e-6)
        assert torch.equal(tunable.model(input_ids=ids).logits, live)  # and back

    # scalars and L1 agree with the selection
    scalars = tunable.scalars()
    if config.method in ("lora", "lora_local"):
        assert scalars == {} and tunable.l1_penalty is None
    else:
        assert sorted(scalars) == sorted(config.selection.keys)
        assert tunable.l1_penalty().item() == pytest.approx(sum(abs(s - 1) for s in scalars.values()), rel=1e-5)
        assert all(abs(s - 1) > 0.05 for s in scalars.values())  # each selected scalar learned

    # save -> load onto a fresh copy of the base model gives the same logits
    saved = tunable.save(tmp_path / "edit")
    fresh = lm.make()
    fresh_dec = Decomposition.load(tmp_path / "dec", fresh) if config.ci_threshold is not None else None
    with torch.no_grad():
        assert torch.allclose(load_edit(saved, fresh, fresh_dec)(input_ids=ids).logits, live, atol=1e-5)

    # ... and onto another model (different weights under the edit) is refused, naming why
    other = lm.make()
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.01)
    with pytest.raises(ValueError, match="belongs to another model"):
        load_edit(saved, other)

    # merging equals the live edit where a merge exists
    if config.ci_threshold is not None:
        with pytest.raises(ValueError, match="cannot be merged"):
            tunable.model.merge_and_unload()
    else:
        merged = copy.deepcopy(tunable.model).merge_and_unload()
        with torch.no_grad():
            assert torch.allclose(merged(input_ids=ids).logits, live, atol=1e-5)
    assert math.isfinite(loss.item())
