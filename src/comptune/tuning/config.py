"""Typed configs of a tuning run: what to edit (`Selection`) and how to train it (`TuneConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import StrictConfig
from ..errors import UserError

Method = Literal["component_scale", "svd_scale", "neuron_scale", "lora", "lora_local"]
SCALAR_METHODS = ("component_scale", "svd_scale", "neuron_scale")


class Selection(StrictConfig):
    """What a method edits, as `<module path>:<index>` keys in that method's basis:
    - component_scale: decomposition subcomponents (`h.3.attn.v_proj:513`);
    - svd_scale: singular directions of the module's weight, 0 = largest singular value;
    - neuron_scale: hidden units of an MLP, keyed on its down projection (`h.3.mlp.down_proj:17`).
    `modules` instead selects every index of those modules (the "let L1 choose" variant).
    LoRA ignores the selection; localised LoRA takes its one module from it."""

    keys: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_of(self):
        if self.keys and self.modules:
            raise UserError("give either selection.keys or selection.modules, not both")
        return self


class TrainSettings(StrictConfig):
    """How a run trains, whatever it edits: its batches and when it stops (a sweep's `train:` block
    sets these for every run)."""

    # batches: forget text cut into sequences of seq_len tokens (first token context only);
    # retain windows of seq_len tokens drawn fresh every step
    seq_len: int = Field(default=128, ge=2)
    forget_batch_size: int | None = Field(default=None, ge=1)  # forget sequences per step; None = all
    retain_batch_size: int = Field(default=8, ge=1)
    # convergence: stop when the EMA of the loss has not improved by min_delta for `patience` steps
    # (the write-up: patience 300 within a ceiling of 3000)
    ema_decay: float = Field(default=0.99, ge=0, lt=1)
    min_delta: float = Field(default=1e-4, ge=0)
    patience: int = Field(default=300, ge=1)
    max_steps: int = Field(default=3000, ge=1)


class TuneConfig(TrainSettings):
    method: Method = "component_scale"
    selection: Selection = Field(default_factory=Selection)
    # forget budget: exactly this many predicted forget tokens (the study: 2 … 2048)
    budget: int = Field(ge=1)
    seed: int = Field(default=0, ge=0)  # picks the forget block, retain batches and LoRA init
    # optimisation (Adam, constant lr)
    lr: float = Field(default=0.01, gt=0, le=1e3)  # Adam moves each parameter by about lr per step
    lora_rank: int = Field(default=1, ge=1)  # "lora" only; localised LoRA is always rank 1
    lora_alpha: float = Field(default=16.0, gt=0)
    # objective
    lambda_retain: float = Field(default=1.0, ge=0)
    l1: float = Field(default=0.0, ge=0)  # coefficient on Σ|s − 1| (scalar methods)
    ci_threshold: float | None = Field(default=None, ge=0, lt=1)  # CI-gated scaling (component_scale)

    @model_validator(mode="after")
    def _method_options(self):
        if self.method in SCALAR_METHODS and not (self.selection.keys or self.selection.modules):
            raise UserError(f"method {self.method} needs selection.keys or selection.modules")
        if self.method == "lora_local" and len(self.selected_modules()) != 1:
            raise UserError("lora_local needs exactly one module: selection.modules = [path], or keys all in one module")
        if self.l1 and self.method not in SCALAR_METHODS:
            raise UserError(f"l1 penalises scalars (s − 1); method {self.method} has none")
        if self.ci_threshold is not None and self.method != "component_scale":
            raise UserError("ci_threshold (CI-gated scaling) needs the decomposition's CI: only for method component_scale")
        return self

    def selected_modules(self) -> list[str]:
        """The modules the selection touches (for localised LoRA: the one matrix to adapt)."""
        from ..decomposition.components import parse_component_key  # torch: not at import (the CLI's help reads this module)

        return self.selection.modules or sorted({parse_component_key(k)[0] for k in self.selection.keys})
