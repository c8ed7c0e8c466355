"""Held-out evaluation: cross-entropy per dataset and side-by-side rollouts."""

from .._lazy import lazy_exports

__all__ = [
    "DatasetCE", "EvalConfig", "EvalResult", "RolloutConfig", "check_vocab", "evaluate_ce", "model_logits",
    "prompt_ids", "rollouts", "rollouts_markdown", "run_eval", "run_rollouts",
]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "DatasetCE": ".ce",
    "EvalConfig": ".run",
    "EvalResult": ".ce",
    "RolloutConfig": ".run",
    "check_vocab": "..model.loading",
    "evaluate_ce": ".ce",
    "model_logits": "..model.outputs",
    "prompt_ids": ".rollouts",
    "rollouts": ".rollouts",
    "rollouts_markdown": ".rollouts",
    "run_eval": ".run",
    "run_rollouts": ".run",
})
