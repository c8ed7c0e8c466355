"""One run of a sweep, as the sweep writes it (runs.jsonl, results.jsonl) and the report reads it.

Field names say what tuning says: `name` is the sweep config's label of a method entry
(`MethodSpec.name`, e.g. "single_ci_gated"), `method` the tuning method it runs
(`TuneConfig.method`, e.g. "component_scale"). Rows written before this model called those two
"method" and "kind"; `RunRow` reads them too, so committed studies load unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from .._io import read_jsonl


class RunScore(BaseModel):
    """The scoring of one finished run (`ScoringConfig` names the datasets)."""

    model_config = ConfigDict(extra="forbid")

    forget_ce: float  # CE of the forget evaluation set after the edit, nats/token
    forget_increase: float  # ... minus the base model's
    forget_at_chance: bool  # forget_ce within chance_tolerance of ln|V|
    retain_damage: float  # CE increase of the retain evaluation set
    valid_forget_gain: float  # min(CE, ln|V|) − CE_base on the forget validation set (lr choice)
    valid_damage: float  # CE increase of the retain validation set (lr choice)
    success: bool  # at chance and retain_damage below the bound


class RunRow(BaseModel):
    """One run: what it was (config), how training went, and what the edit does on held-out data."""

    model_config = ConfigDict(extra="forbid")

    run_id: str  # hash of `name` and the full TuneConfig (`study.sweep.run_id`)
    name: str  # the sweep's label of the method entry
    method: str  # the tuning method
    budget: int
    seed: int
    lambda_retain: float
    lr: float
    lora_alpha: float | None  # LoRA methods only
    tune_config: dict[str, Any]
    status: Literal["ok", "non_finite"]
    error: str | None = None  # why a non_finite run stopped
    steps: int | None = None
    versions: dict[str, str] = {}
    # the rest exists for status "ok" only
    stopped_reason: str | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    final_loss: float | None = None
    final_forget_ce: float | None = None
    final_retain_kl: float | None = None
    final_scalars: dict[str, float] = {}  # learned s per key ({} for LoRA)
    loss_curve: list[tuple[int, float]] = []  # (step, total loss), subsampled
    forget_offset: int | None = None
    forget_tokens: int | None = None
    chance: float | None = None  # ln|V|
    ce: dict[str, float] = {}  # evaluation sets
    increase: dict[str, float] = {}  # ce minus the base model's
    valid_ce: dict[str, float] = {}  # the two validation sets
    score: RunScore | None = None
    edit: str | None = None  # the saved edit, relative to the sweep's folder (deleted unless chosen)
    chosen: bool = False  # results.jsonl: the (lr, alpha) validation chose for this run's group

    @model_validator(mode="before")
    @classmethod
    def _read_earlier_names(cls, data: Any) -> Any:
        return with_current_names(data) if isinstance(data, dict) else data

    @property
    def group(self) -> tuple[str, int, float]:
        """What the lr choice is made over: (name, budget, lambda_retain)."""
        return (self.name, self.budget, self.lambda_retain)

    @property
    def scored(self) -> RunScore:
        """The score of a finished run (status "ok"); a non-finite run has none."""
        if self.score is None:
            raise ValueError(f"run {self.run_id} ({self.name}) has no score: it stopped with status {self.status!r} ({self.error})")
        return self.score


def with_current_names(d: dict) -> dict:
    """A row, or a record naming a run (robustness records, chosen.json groups), in today's field names:
    earlier files held the label under "method" and the tuning method under "kind" (absent in groups)."""
    if "name" in d or "method" not in d:
        return d
    renamed = {k: v for k, v in d.items() if k not in ("method", "kind")} | {"name": d["method"]}
    return renamed | {"method": d["kind"]} if "kind" in d else renamed


def read_rows(path: str | Path) -> list[RunRow]:
    """The rows of a runs.jsonl / results.jsonl, in file order (earlier rows' names read too)."""
    return [RunRow.model_validate(r) for r in read_jsonl(path)]


def row_json(row: RunRow) -> dict:
    """A row as one JSON object (what runs.jsonl and results.jsonl hold)."""
    return row.model_dump(mode="json")


def read_chosen(chosen: dict) -> dict:
    """chosen.json with each group's label under `name`."""
    return {**chosen, "groups": [with_current_names(g) for g in chosen["groups"]]}
