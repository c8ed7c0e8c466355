"""A saved edit, re-applied: a ComponentScale adapter folder or a peft (LoRA, IA3) adapter folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..errors import UserError
from .component_scale import ComponentScaleModel, load_adapter
from .methods import peft_quietly

DOSE_RANGE = (0.0, 1.5)  # 0 = the base model, 1 = the edit as trained, above 1 extrapolates past it


def check_dose(t: float) -> float:
    lo, hi = DOSE_RANGE
    if not lo <= t <= hi:  # also refuses NaN
        raise UserError(f"dose {t} is outside [{lo}, {hi}]: 0 is the base model, 1 the edit as trained, "
                         f"up to {hi} extrapolates past it")
    return t


def dosed_scales(scales: dict[str, float], t: float) -> dict[str, float]:
    """A scalar edit at dose t: each s interpolated toward the identity, 1 + t (s − 1)."""
    check_dose(t)
    return {k: 1.0 + t * (s - 1.0) for k, s in scales.items()}


def edited_lm(net: nn.Module) -> nn.Module:
    """The edited causal LM itself (has `.config` and `generate`): a ComponentScaleModel swaps its
    layers into the wrapped model in place; a PeftModel is one already."""
    return net.model if isinstance(net, ComponentScaleModel) else net


def edit_config(edit_dir: str | Path) -> dict:
    """The saved edit's adapter_config.json (comptune's or peft's)."""
    cfg = Path(edit_dir) / "adapter_config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{edit_dir} holds no saved edit (no adapter_config.json)")
    return json.loads(cfg.read_text())


def is_ci_gated(edit_dir: str | Path) -> bool:
    """Whether a saved edit is a CI-gated ComponentScale adapter (it needs the decomposition to run)."""
    meta = edit_config(edit_dir)
    return meta.get("format") == "comptune-component-scale" and (meta.get("config") or {}).get("ci_threshold") is not None


def load_edit_adapter(edit_dir: str | Path, base_model: nn.Module, decomposition=None) -> nn.Module:
    """Re-apply a saved edit to `base_model` (in place) and return its wrapper: the
    ComponentScaleModel or the PeftModel (both have `merge_and_unload`). `decomposition` is
    given to a CI-gated edit, which needs it; other edits carry their own vectors (an SVD-basis
    edit's keys do not even belong to it)."""
    if edit_config(edit_dir).get("format") == "comptune-component-scale":
        return load_adapter(edit_dir, base_model, decomposition if is_ci_gated(edit_dir) else None)
    _check_peft_target(Path(edit_dir), base_model)
    from peft import PeftModel

    with peft_quietly():
        return PeftModel.from_pretrained(base_model, str(edit_dir)).eval()


def _check_peft_target(edit_dir: Path, base_model: nn.Module) -> None:
    """A peft adapter saved by comptune records the weights it was trained on; refuse other ones."""
    from ..model.fingerprint import check_target
    from .methods import PEFT_TARGET_NAME

    record = edit_dir / PEFT_TARGET_NAME
    if record.is_file():  # a peft adapter made elsewhere has nothing recorded to check against
        check_target(base_model, json.loads(record.read_text())["target"], f"edit {edit_dir}", "; pass the model it was trained on")


def load_edit(edit_dir: str | Path, base_model: nn.Module, decomposition=None) -> nn.Module:
    """Re-apply a saved edit to `base_model` (in place) and return the edited HF model (it has
    `generate`): the model with ComponentScale layers swapped in, or the PeftModel."""
    return edited_lm(load_edit_adapter(edit_dir, base_model, decomposition))
