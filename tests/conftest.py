"""Fixtures shared by test files: tiny models with nn.Linear weights (the bundled architecture)
and with GPT-2's Conv1D weights, the module names each method edits in them, and sweep rows for
the rules that read them."""

from dataclasses import dataclass

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.study.rows import RunRow, RunScore

VOCAB = 64


@dataclass
class TinyLM:
    kind: str  # "linear" | "conv1d"
    make: callable  # () -> a fresh model, same weights every call
    attn: str  # an attention matrix
    mlp_in: str  # the MLP's input projection
    mlp_out: str  # the MLP's output projection (the neuron basis lives on it)
    d_mlp: int

    def ids(self, seed: int = 1, B: int = 2, T: int = 12) -> torch.Tensor:
        return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _linear_lm():
    torch.manual_seed(0)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=VOCAB, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)).eval()


def _conv1d_lm():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, n_inner=64)).eval()


TINY_LMS = {
    "linear": TinyLM("linear", _linear_lm, "h.1.attn.v_proj", "h.1.mlp.c_fc", "h.1.mlp.down_proj", 64),
    "conv1d": TinyLM("conv1d", _conv1d_lm, "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj", 64),
}


@pytest.fixture(params=list(TINY_LMS), ids=list(TINY_LMS))
def tiny_lm(request) -> TinyLM:
    """Each test using it runs on both weight layouts."""
    return TINY_LMS[request.param]


def run_row(name: str, budget: int, seed: int, *, lr: float = 0.1, lambda_retain: float = 1.0, alpha: float | None = None,
            status: str = "ok", **score: float | bool) -> RunRow:
    """A sweep row for tests of the rules that read rows: the score fields not given are 0 / False,
    and a run that is not "ok" has no score."""
    fields = dict(forget_ce=0.0, forget_increase=0.0, forget_at_chance=False, retain_damage=0.0, valid_forget_gain=0.0,
                  valid_damage=0.0, success=False) | score
    return RunRow(run_id=f"{name}-{budget}-{seed}-{lr}", name=name, method="component_scale", budget=budget, seed=seed, lr=lr,
                  lora_alpha=alpha, lambda_retain=lambda_retain, tune_config={}, status=status,
                  score=RunScore(**fields) if status == "ok" else None)
