"""A saved edit, re-applied: a ComponentScale adapter folder or a peft (LoRA, IA3) adapter folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from .component_scale import ComponentScaleModel, load_adapter
from .methods import peft_quietly


def edited_lm(net: nn.Module) -> nn.Module:
    """The edited causal LM itself (has `.config` and `generate`): a ComponentScaleModel swaps its
    layers into the wrapped model in place; a PeftModel is one already."""
    return net.model if isinstance(net, ComponentScaleModel) else net


def load_edit(edit_dir: str | Path, base_model: nn.Module, decomposition=None) -> nn.Module:
    """Re-apply a saved edit to `base_model` (in place) and return the edited HF model (it has
    `generate`): the model with ComponentScale layers swapped in, or the PeftModel."""
    edit_dir = Path(edit_dir)
    cfg = edit_dir / "adapter_config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{edit_dir} holds no saved edit (no adapter_config.json)")
    if json.loads(cfg.read_text()).get("format") == "comptune-component-scale":
        return edited_lm(load_adapter(edit_dir, base_model, decomposition))
    from peft import PeftModel

    with peft_quietly():
        return PeftModel.from_pretrained(base_model, str(edit_dir)).eval()
