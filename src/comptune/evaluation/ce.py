"""Held-out cross-entropy per dataset, in nats per predicted token.

Definition (the case study's): a block of T tokens x_0 … x_{T-1} contributes the T−1 predictions
−ln p(x_t | x_0 … x_{t-1}) for t = 1 … T−1. The first token of every block has no context and is
never scored (with the project's tokenizer it is often the BOS separator). A dataset's CE is the
sum over all its blocks divided by N·(T−1). Softmax and the loss are computed in float32 whatever
the model's dtype; sums accumulate in float64.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .._io import versions, write_json_atomic
from ..errors import UserError
from ..model.loading import model_vocab_size
from ..model.outputs import model_logits


@dataclass
class DatasetCE:
    name: str
    ce: float  # mean nats per predicted token
    tokens: int  # predicted tokens, sequences × (block_len − 1)
    sequences: int
    block_len: int
    # entropy of the scored tokens' own unigram distribution: the best a model that ignores all
    # context could score on this very text (a context-free reference line, below chance)
    unigram_entropy: float = float("nan")
    # tokens per character of the whole dataset text (set when the text is known): CE × this is the
    # per-character CE, comparable across languages and tokenizers on content-matched text
    tokens_per_char: float | None = None

    @property
    def nats_per_char(self) -> float | None:
        return None if self.tokens_per_char is None else self.ce * self.tokens_per_char


@dataclass
class EvalResult:
    datasets: dict[str, DatasetCE]
    vocab_size: int  # the model's output dimension |V|
    seconds: float
    forward_tokens: int  # tokens fed through the model, sequences × block_len
    config: dict = field(default_factory=dict)

    @property
    def chance(self) -> float:
        """ln |V|: the CE of a uniform prediction."""
        return math.log(self.vocab_size)

    @property
    def ce(self) -> dict[str, float]:
        return {name: d.ce for name, d in self.datasets.items()}

    @property
    def tokens_per_s(self) -> float:
        """Throughput in forward tokens (every input token, scored or not) per second."""
        return self.forward_tokens / self.seconds if self.seconds > 0 else float("inf")

    def table(self) -> str:
        width = max(len("dataset"), *(len(n) for n in self.datasets))
        lines = [f"{'dataset':<{width}}  {'CE (nats/token)':>15}  {'unigram entropy':>15}  {'≈ nats/char':>11}  {'tokens':>10}"]
        for name, d in self.datasets.items():
            per_char = f"{d.nats_per_char:>11.4f}" if d.nats_per_char is not None else f"{'-':>11}"
            lines.append(f"{name:<{width}}  {d.ce:>15.4f}  {d.unigram_entropy:>15.4f}  {per_char}  {d.tokens:>10,}")
        lines.append(f"{'chance ln|V|':<{width}}  {self.chance:>15.4f}  {'|V| = ' + format(self.vocab_size, ','):>10}")
        lines.append(f"{self.forward_tokens:,} tokens in {self.seconds:.1f} s ({self.tokens_per_s:,.0f} tokens/s)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {
            "ce": self.ce,
            "datasets": {name: {**asdict(d), "nats_per_char": d.nats_per_char} for name, d in self.datasets.items()},
            "chance": self.chance,
            "vocab_size": self.vocab_size,
            "forward_tokens": self.forward_tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "config": self.config,
            "seed": None,  # evaluation is deterministic: fixed blocks, no sampling
            "versions": versions(),
        }

    def save_json(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path) -> EvalResult:
        data = json.loads(Path(path).read_text())
        return cls(
            datasets={name: DatasetCE(**{k: v for k, v in d.items() if k != "nats_per_char"}) for name, d in data["datasets"].items()},
            vocab_size=data["vocab_size"], seconds=data["seconds"], forward_tokens=data["forward_tokens"],
            config=data["config"],
        )


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Entropy in nats of the empirical unigram distribution of `tokens`."""
    counts = torch.bincount(tokens.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def _check_ids(name: str, blocks: torch.Tensor, vocab_size: int) -> None:
    lo, hi = int(blocks.min()), int(blocks.max())
    if lo < 0 or hi >= vocab_size:
        raise UserError(f"dataset {name!r} holds token ids in [{lo}, {hi}] but the model's vocabulary has {vocab_size} "
                         "entries; tokenize it with the model's own tokenizer")


def evaluate_ce(model, datasets: dict[str, torch.Tensor], *, batch_size: int = 16,
                device: str | torch.device | None = None, progress: bool = False) -> EvalResult:
    """Mean held-out CE of `model` on each dataset of token blocks (LongTensor [N, T], T ≥ 2).

    `device` defaults to the model's; if given, the model is moved there. The model is put in eval
    mode for the evaluation and its training flag restored afterwards.
    """
    if not datasets:
        raise UserError("no datasets to evaluate")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    known_vocab = model_vocab_size(model) if hasattr(model, "config") else None
    for name, blocks in datasets.items():
        if blocks.dim() != 2 or blocks.shape[0] < 1 or blocks.shape[1] < 2 or blocks.dtype != torch.long:
            raise UserError(f"dataset {name!r} must be a LongTensor [N >= 1, T >= 2] of token blocks, "
                             f"got {blocks.dtype} {tuple(blocks.shape)}")
        if known_vocab is not None:  # before any forward: an out-of-range id would fail inside the embedding
            _check_ids(name, blocks, known_vocab)
    params = next(model.parameters(), None)
    if device is not None:
        model.to(device)
    device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))

    was_training = model.training
    model.eval()
    rows: dict[str, DatasetCE] = {}
    vocab_size = None
    forward_tokens = 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(-(-len(b) // batch_size) for b in datasets.values()), desc="eval batches", unit="batch")
    try:
        with torch.inference_mode():
            for name, blocks in datasets.items():
                N, T = blocks.shape
                nll_sum = 0.0  # float64 accumulator
                for i in range(0, N, batch_size):
                    x = blocks[i : i + batch_size].to(device)  # (B, T)
                    logits = model_logits(model, x)  # (B, T, V)
                    V = logits.shape[-1]
                    if vocab_size is None:
                        vocab_size = V
                    if i == 0:
                        _check_ids(name, blocks, V)
                    # position t predicts token t+1, so x[:, 0] is never a target and the last position has
                    # none (ignored). Shifting the targets, not the logits, keeps the logits a view, no copy.
                    targets = torch.full_like(x, -100)  # (B, T)
                    targets[:, :-1] = x[:, 1:]
                    nll = F.cross_entropy(logits.reshape(-1, V).float(), targets.view(-1), ignore_index=-100, reduction="sum")
                    nll_sum += nll.item()
                    forward_tokens += x.numel()
                    if bar is not None:
                        bar.update(1)
                n_pred = N * (T - 1)
                rows[name] = DatasetCE(name=name, ce=nll_sum / n_pred, tokens=n_pred, sequences=N, block_len=T,
                                       unigram_entropy=unigram_entropy(blocks[:, 1:]))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    assert vocab_size is not None  # datasets is non-empty and every dataset has N >= 1, so a batch ran
    config = {"batch_size": batch_size, "device": str(device), "dtype": str(params.dtype) if params is not None else None}
    return EvalResult(datasets=rows, vocab_size=vocab_size, seconds=seconds, forward_tokens=forward_tokens, config=config)
