"""Typed config of an unlearning sweep: what to train on, which methods, which grid, how to score.

One YAML file describes a whole study (`configs/demo.yaml`, `configs/full.yaml`); unknown keys
are an error. `model: bundled` / `decomposition: bundled` mean the shipped model and decomposition.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictConfig
from ..errors import UserError, UserKeyError
from ..tuning.config import SCALAR_METHODS, Method, TrainSettings

BUNDLED = "bundled"
LORA_METHODS = ("lora", "lora_local")


class SelectSpec(StrictConfig):
    """How a method's selection is chosen, resolved once per sweep into explicit keys/modules.

    - `keys`: explicit keys in the method's basis (`h.3.attn.v_proj:513`).
    - `rank` + `top`: the top-k of a German-vs-English ranking in the method's basis:
      `difference` = mean on target − mean on reference (the study's criterion),
      `specificity` = mean on target − max over the protected datasets.
      Component basis: mean causal importance (comptune.inspection). Neuron and SVD bases have no
      CI, so they are ranked by mean write magnitude |v_iᵀx|·‖u_i‖ instead.
      `scan` = by measured effect: the top `candidates` units of every ranking (CI, attribution,
      write ratio; on the selection data) are each scaled by hand and bisected to the damage bound
      (`scoring.max_damage`) on the *validation* pair (`scoring.forget_valid` / `retain_valid`, never
      an evaluation set); the `top` with the largest forget gain within the bound are kept.
    - `modules` / `modules_of`: restrict to these modules, or to the module(s) of an earlier
      method's resolved selection (localised LoRA and SVD-scale on "the single key's matrix").
      Without `rank`, every index of those modules is selected (the "L1 chooses" variant).
    """

    keys: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    modules_of: str | None = None
    rank: Literal["difference", "specificity", "scan"] | None = None
    top: int | None = Field(default=None, ge=1)
    candidates: int = Field(default=8, ge=1)  # rank: scan only — candidates taken from the top of each ranking

    @model_validator(mode="after")
    def _consistent(self):
        if self.keys and (self.modules or self.modules_of or self.rank):
            raise UserError("select.keys is an explicit selection: do not combine it with modules, modules_of or rank")
        if self.modules and self.modules_of:
            raise UserError("give either select.modules or select.modules_of, not both")
        if (self.rank is None) != (self.top is None):
            raise UserError("select.rank and select.top go together (rank by a criterion, keep the top k)")
        if not (self.keys or self.modules or self.modules_of or self.rank):
            raise UserError("select needs keys, modules, modules_of, or rank + top")
        return self


class MethodSpec(StrictConfig):
    """One method of the comparison, with its own learning-rate (and LoRA alpha) grid."""

    name: str  # label in results and plots, e.g. "single", "top16", "lora_r1"
    method: Method
    select: SelectSpec | None = None
    lrs: list[float] = Field(min_length=1)
    alphas: list[float] = Field(default_factory=lambda: [16.0])  # LoRA scaling; lora / lora_local only
    lora_rank: int = Field(default=1, ge=1)  # "lora" only
    l1: float = Field(default=0.0, ge=0)  # coefficient on Σ|s − 1| (scalar methods)
    ci_threshold: float | None = Field(default=None, ge=0, lt=1)  # CI-gated scaling (component_scale)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise UserError(f"method name {v!r} must be letters, digits, '_', '-' or '.' (it names files and plot labels)")
        return v

    @field_validator("lrs", "alphas")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise UserError(f"learning rates and alphas must be > 0, got {v}")
        if len(set(v)) != len(v):
            raise UserError(f"grid values repeat: {v}")
        return v

    @model_validator(mode="after")
    def _method_options(self):
        if self.method in SCALAR_METHODS and self.select is None:
            raise UserError(f"method {self.name!r} ({self.method}) needs `select`: which scalars to learn")
        if self.method == "lora_local" and self.select is None:
            raise UserError(f"method {self.name!r} (lora_local) needs `select` naming its one matrix (e.g. modules_of: single)")
        if self.method == "lora" and self.select is not None:
            raise UserError(f"method {self.name!r}: global LoRA adapts every linear weight; remove `select`")
        if self.method not in LORA_METHODS and self.alphas != [16.0]:
            raise UserError(f"method {self.name!r}: alphas only apply to LoRA methods")
        if self.method != "lora" and self.lora_rank != 1:
            raise UserError(f"method {self.name!r}: lora_rank only applies to method lora (localised LoRA is rank 1)")
        return self


class EvalSettings(StrictConfig):
    block_len: int = Field(default=128, ge=2)
    max_blocks: int = Field(default=32, ge=1)  # per dataset (the first blocks of its text)
    batch_size: int = Field(default=16, ge=1)


class Scoring(StrictConfig):
    """What "forget removed" and "retain damaged" mean, on held-out and on validation data.

    - forget at chance: CE on `forget_eval` ≥ ln|V| − `chance_tolerance` (nats);
    - damage: CE increase on `retain_eval` over the base model; success needs damage < `max_damage`.
    Learning rate (and alpha) are chosen per (method, budget, lambda) on the validation pair only
    (see `study.sweep.choose_settings`); the held-out sets never influence the choice.
    """

    forget_eval: str = "parallel.de"
    retain_eval: str = "general_en"
    forget_valid: str = "valid.de"
    # validation English from general_en's own sources (man pages, fortunes): the whole of valid.en
    # is dominated by near-memorised text (9 of its first 16 blocks below 1 nat on the bundled model)
    retain_valid: str = "valid.general_en"
    chance_tolerance: float = Field(default=0.1, ge=0)
    max_damage: float = Field(default=0.10, gt=0)
    tie_tolerance: float = Field(default=0.01, ge=0)  # validation forget increases this close count as equal


class SelectionData(StrictConfig):
    """Datasets the rankings are computed on (training splits: never the evaluation sets)."""

    target: str = "train.de"
    reference: str = "train.en"
    protected: list[str] = Field(default_factory=lambda: ["train.en", "train.fr", "train.es", "train.it", "train.code"])
    block_len: int = Field(default=128, ge=2)
    max_blocks: int = Field(default=32, ge=1)
    show_top: int = Field(default=16, ge=1)  # ranking entries saved in selection.json and printed
    scan_blocks: int = Field(default=8, ge=1)  # rank: scan — blocks of each validation set the dose scan reads


class RolloutSettings(StrictConfig):
    """Greedy continuations of base vs edited models in the report (prompts in the corpus's domain)."""

    prompts: dict[str, str] = Field(default_factory=lambda: {
        "de": "Um das Paket zu installieren, müssen Sie",
        "en": "To install the package, you need to",
        "es": "Para instalar el paquete, es necesario",
        "it": "Per installare il pacchetto, è necessario",
    })
    max_new_tokens: int = Field(default=32, ge=1)


class Resources(StrictConfig):
    """What each run needs where runs are scheduled (`comptune sweep --ray`); results do not depend on it."""

    cpus_per_run: float = Field(default=1.0, gt=0)  # also the run's torch threads
    gpus_per_run: float = Field(default=0.0, ge=0)
    max_retries: int = Field(default=2, ge=0)  # a run that fails (its worker died, an error) is retried this often


class SweepConfig(StrictConfig):
    name: str = "sweep"
    model: str = BUNDLED  # HF model dir holding the tokenizer too, or "bundled"
    decomposition: str | None = BUNDLED  # decomposition dir, "bundled", or null (no component_scale)
    forget: str = "forget.de"
    retain: str = "retain.en"
    # held-out sets reported per run; include the forget/retain training text (figure 2 of the write-up)
    eval_datasets: list[str] = Field(default_factory=lambda: [
        "parallel.de", "parallel.en", "parallel.fr", "parallel.es", "parallel.it", "general_en", "code", "forget.de", "retain.en",
    ])
    scoring: Scoring = Field(default_factory=Scoring)
    selection_data: SelectionData = Field(default_factory=SelectionData)
    methods: list[MethodSpec] = Field(min_length=1)
    budgets: list[int] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    lambda_retain: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("budgets", "seeds")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v) or len(set(v)) != len(v):
            raise UserError(f"budgets and seeds must be distinct and non-negative, got {v}")
        return sorted(v)

    @field_validator("lambda_retain")
    @classmethod
    def _lambdas(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v) or len(set(v)) != len(v):
            raise UserError(f"lambda_retain values must be distinct and >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self):
        if 0 in self.budgets:
            raise UserError("a budget of 0 forget tokens trains on nothing; budgets start at 1")
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"method names repeat: {dup}")
        for i, m in enumerate(self.methods):
            ref = m.select.modules_of if m.select else None
            if ref is not None and ref not in names[:i]:
                raise UserError(f"method {m.name!r}: select.modules_of={ref!r} must name a method listed before it; have {names[:i]}")
        if self.decomposition is None:
            needs = [m.name for m in self.methods if m.method == "component_scale"]
            if needs:
                raise UserError(f"methods {needs} scale decomposition subcomponents: set `decomposition` (a directory or 'bundled')")
        s = self.scoring
        for name in (s.forget_eval, s.retain_eval):
            if name not in self.eval_datasets:
                raise UserError(f"scoring dataset {name!r} must be one of eval_datasets {self.eval_datasets}")
        for name in (s.forget_valid, s.retain_valid):
            if name in self.eval_datasets:
                raise UserError(f"validation dataset {name!r} is also an evaluation set: choose learning rates on data that is not evaluated")
        return self

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise UserKeyError(f"no method {name!r} in the sweep; methods: {[m.name for m in self.methods]}")

    def model_dir(self) -> Path:
        from ..corpus.bundle import bundled_model_dir

        return bundled_model_dir() if self.model == BUNDLED else Path(self.model)

    def decomposition_dir(self) -> Path | None:
        from ..corpus.bundle import bundled_decomposition_dir

        if self.decomposition is None:
            return None
        return bundled_decomposition_dir() if self.decomposition == BUNDLED else Path(self.decomposition)

    def n_runs(self) -> int:
        per_setting = len(self.budgets) * len(self.seeds) * len(self.lambda_retain)
        return sum(per_setting * len(m.lrs) * (len(m.alphas) if m.method in LORA_METHODS else 1) for m in self.methods)
