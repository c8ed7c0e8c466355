"""Held-out evaluation: cross-entropy per dataset and side-by-side rollouts."""

from ..model.loading import check_vocab
from .ce import DatasetCE, EvalResult, evaluate_ce, model_logits
from .rollouts import prompt_ids, rollouts, rollouts_markdown
from .run import EvalConfig, RolloutConfig, run_eval, run_rollouts

__all__ = [
    "DatasetCE", "EvalConfig", "EvalResult", "RolloutConfig", "check_vocab", "evaluate_ce", "model_logits", "prompt_ids",
    "rollouts", "rollouts_markdown", "run_eval", "run_rollouts",
]
