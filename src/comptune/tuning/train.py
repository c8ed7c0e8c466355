"""Train any method on the unlearning objective until the EMA of the loss plateaus.

Forget data: exactly `budget` predicted tokens, a contiguous block of the forget stream chosen by
the seed (disjoint blocks for different seeds), cut into sequences of `seq_len` tokens whose first
token is context only. Retain data: fresh random windows of the retain stream every step
("unlimited"), with the original model's logits computed once per batch, adapters disabled.

A step costs what it must: for an edit confined to block ℓ and later, the frozen blocks before ℓ
run once for the fixed forget sequences (at the start) and once per retain batch (in the
unedited pass that gives the original logits); the edited passes replay their output. A CI-gated
edit's gates are likewise computed once for the forget sequences and once per retain batch, from
the decomposed modules' inputs captured in that unedited pass (no second clean forward).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict

from .._io import versions
from ..decomposition.losses import TargetDistribution
from ..errors import UserError
from ..model.loading import context_length
from ..model.prefix import decoder_blocks, first_edited_block, prefix_replayed, recording, select_output
from .config import SCALAR_METHODS, TuneConfig
from .methods import TunableModel, build_method
from .objective import tuning_loss


class TuneResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: TuneConfig
    method: str
    steps: int
    wall_time_s: float
    stopped_reason: str  # "plateau" | "max_steps"
    final_scalars: dict[str, float]  # learned s per key ({} for LoRA)
    final_loss: float
    final_forget_ce: float  # on the training forget tokens, nats
    final_retain_kl: float
    loss_history: list[float]  # total loss per step
    forget_tokens: int  # predicted forget tokens trained on (= budget)
    forget_offset: int  # where the forget block starts in the forget stream
    versions: dict[str, str]


# Divergence bounds: past either, training has left the region where the objective means anything
# (the bundled model's English CE is ~3.2 nats; the German unit needs |s| ≈ 32)
DIVERGED_RETAIN_KL = 3.0  # nats per retain position
DIVERGED_ABS_SCALE = 1e4  # |s| of any scalar (component, SVD and neuron scale)


class NonFiniteLossError(UserError):
    """Training diverged: the loss became NaN/inf, or the retain KL or a scalar passed its bound
    (DIVERGED_RETAIN_KL, DIVERGED_ABS_SCALE); the model holds the parameters of the last good step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def take_budget(forget_stream: torch.Tensor, budget: int, seed: int) -> tuple[torch.Tensor, int]:
    """A contiguous block of budget + 1 tokens (the first is context only) and its offset.

    The stream is cut into disjoint blocks of budget + 1 tokens; a fixed permutation of them is
    indexed by the seed, so different seeds get different, non-overlapping text."""
    if budget < 1:
        raise UserError(f"budget must be at least 1 forget token, got {budget}")
    n = forget_stream.numel()
    n_blocks = n // (budget + 1)
    if n_blocks == 0:
        raise UserError(
            f"a budget of {budget} forget tokens needs {budget + 1} contiguous tokens (one of context), but the "
            f"forget text has only {n} tokens: use a budget of at most {max(n - 1, 0)} or more forget text"
        )
    if not 0 <= seed < n_blocks:
        raise UserError(
            f"the forget text ({n} tokens) holds {n_blocks} disjoint blocks for budget {budget}, so seeds 0..{n_blocks - 1} "
            f"get different text; seed {seed} would reuse one"
        )
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(0))
    offset = int(order[seed]) * (budget + 1)
    return forget_stream[offset : offset + budget + 1].clone(), offset


def forget_sequences(block: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a block into [N, L] input_ids and labels (L = min(seq_len, len(block))); consecutive
    sequences overlap by one token so every token after the first is predicted exactly once.
    The last sequence is right-padded (causal attention: padding cannot affect earlier positions)
    with label −100."""
    step = seq_len - 1
    n_pred = block.numel() - 1
    L = min(seq_len, block.numel())
    starts = range(0, n_pred, step)
    ids = torch.zeros(len(starts), L, dtype=torch.long)
    labels = torch.full((len(starts), L), -100, dtype=torch.long)
    for i, s in enumerate(starts):
        chunk = block[s : s + seq_len]
        ids[i, : len(chunk)] = chunk
        labels[i, 1 : len(chunk)] = chunk[1:]  # the first token of each sequence is never a target
    return ids, labels


def _retain_batch(stream: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    L = min(seq_len, stream.numel())
    starts = torch.randint(0, stream.numel() - L + 1, (batch_size,), generator=gen)
    return torch.stack([stream[s : s + L] for s in starts.tolist()])  # [B, L]


class _FrozenPrefix:
    """The unedited computation an edited pass may reuse on the same input: the output of the
    blocks before the first edited one, and a CI-gated edit's gates."""

    def __init__(self, model: nn.Module, tunable: TunableModel, enabled: bool):
        self.net = tunable.model
        self.first = first_edited_block(model, tunable.edited_modules) if enabled else 0
        self.blocks = decoder_blocks(model)[1] if self.first else nn.ModuleList()
        self.gated = tunable.ci_gated_model  # a CI-gated edit gets its gates once per batch

    @contextmanager
    def unedited(self, ids: torch.Tensor) -> Iterator[dict]:
        """Around the unedited forward(s) of `ids`: yields a dict that holds, after the context,
        what the edited passes on `ids` reuse."""
        saved: dict = {}
        with torch.no_grad(), self.net.disable_adapter(), ExitStack() as stack:
            outputs = stack.enter_context(recording(self.blocks, [self.first - 1])) if self.first else {}
            ci_inputs = stack.enter_context(self.gated.capturing_ci_inputs()) if self.gated else {}
            yield saved
        if self.first:
            saved["prefix"] = outputs[self.first - 1]
        if self.gated:  # from the unedited forward just run; without one (nothing to cache), CI's own forward
            saved["gates"] = self.gated.gates_from_inputs(ci_inputs) if ci_inputs else self.gated.compute_gates(ids)

    def logits(self, ids: torch.Tensor, saved: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The edited model's logits on `ids` (rows `rows` of the input `saved` was recorded on)."""
        pick = (lambda x: x) if rows is None else (lambda x: select_output(x, rows))
        with ExitStack() as stack:
            if self.first:
                stack.enter_context(prefix_replayed(self.blocks, self.first, pick(saved["prefix"])))
            if self.gated:
                stack.enter_context(self.gated.gated({p: pick(g) for p, g in saved["gates"].items()}))
            return self.net(input_ids=ids).logits


def _divergence(loss: float, retain_kl: float, tunable: TunableModel, method: str) -> str:
    """What says training diverged ("" if nothing)."""
    if not math.isfinite(loss):
        return "the loss became non-finite"
    if retain_kl > DIVERGED_RETAIN_KL:
        return f"the retain KL passed {DIVERGED_RETAIN_KL:g} nats"
    if method in SCALAR_METHODS:
        largest = max(float(p.detach().abs().max()) for p in tunable.parameters)
        if largest > DIVERGED_ABS_SCALE:
            return f"a scalar reached |s| = {largest:.3g} > {DIVERGED_ABS_SCALE:g}"
    return ""


def tune(
    config: TuneConfig,
    model: nn.Module,
    forget_stream: torch.Tensor,
    retain_stream: torch.Tensor,
    decomposition=None,
    *,
    decomposition_dir=None,
    progress: bool = False,
    cache_prefix: bool = True,
    autocast: bool | None = None,
) -> tuple[TunableModel, TuneResult]:
    """Build `config.method` on `model` (in place) and train it; returns the trained method and the result.

    forget_stream / retain_stream: 1-D token-id tensors. When training diverges (a non-finite loss,
    or the retain KL or a scalar past its bound), it stops, the parameters of the last good step are
    restored and NonFiniteLossError is raised.
    `cache_prefix=False` runs every pass through the whole model (the same losses, slower).
    `autocast` runs the forwards in bf16 (None: on CUDA only); the losses, the KL and the learned
    parameters stay fp32. It is not part of the config: a run's id and result do not depend on where it ran.
    """
    n_ctx = context_length(model)
    if n_ctx is not None and config.seq_len > n_ctx:
        raise UserError(f"seq_len={config.seq_len} exceeds the model's context of {n_ctx} tokens; set seq_len ≤ {n_ctx}")
    if retain_stream.numel() < 2:
        raise UserError(f"the retain set is empty ({retain_stream.numel()} tokens): the KL term needs retain text to protect")
    block, offset = take_budget(forget_stream, config.budget, config.seed)
    forget_ids, forget_labels = forget_sequences(block, config.seq_len)

    gen = torch.Generator().manual_seed(config.seed)  # retain windows, forget minibatches
    with torch.random.fork_rng(devices=[]):  # the LoRA init draws from the global RNG: seed it without touching the caller's
        torch.manual_seed(config.seed)
        tunable = build_method(config.method, model, decomposition, config.selection, config, decomposition_dir=decomposition_dir)
    device = tunable.parameters[0].device
    forget_ids, forget_labels = forget_ids.to(device), forget_labels.to(device)
    retain_stream = retain_stream.to(device)
    opt = torch.optim.Adam(tunable.parameters, lr=config.lr)
    net = tunable.model
    net.eval()  # no dropout anywhere: the edit is the only thing that changes
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" if autocast is None else autocast)
    frozen = _FrozenPrefix(model, tunable, cache_prefix)
    with frozen.unedited(forget_ids) as forget_saved, bf16:
        if frozen.first:
            net(input_ids=forget_ids)

    losses: list[float] = []
    ema = best = math.inf
    since_best = 0
    stopped = "max_steps"
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc=f"{config.method} budget={config.budget} seed={config.seed}", leave=False)
    last_good: list[torch.Tensor] = []  # the parameters before the latest update
    for step in range(config.max_steps):
        if config.forget_batch_size is None or config.forget_batch_size >= len(forget_ids):
            pick = None
            f_ids, f_labels = forget_ids, forget_labels
        else:
            pick = torch.randperm(len(forget_ids), generator=gen)[: config.forget_batch_size].to(device)
            f_ids, f_labels = forget_ids[pick], forget_labels[pick]
        r_ids = _retain_batch(retain_stream, config.retain_batch_size, config.seq_len, gen)
        with frozen.unedited(r_ids) as retain_saved, bf16:
            orig = TargetDistribution.of(net(input_ids=r_ids).logits)  # of the unedited model's [B, L, V] logits

        with bf16:
            terms = tuning_loss(
                frozen.logits(f_ids, forget_saved, pick), f_labels, frozen.logits(r_ids, retain_saved), orig,
                lambda_retain=config.lambda_retain,
                l1_coef=config.l1,
                l1_penalty=tunable.l1_penalty() if tunable.l1_penalty is not None and config.l1 else None,
            )
        loss = float(terms.total.detach())
        diverged = _divergence(loss, float(terms.retain_kl), tunable, config.method)
        if diverged:
            # the current parameters are past the bound: go back to those of the previous step
            if step > 0:
                with torch.no_grad():
                    for p, good in zip(tunable.parameters, last_good):
                        p.copy_(good)
            values = ", ".join(f"{n} {float(v):.4g}" for n, v in (("forget CE", terms.forget_ce), ("retain KL", terms.retain_kl), ("L1", terms.l1)))
            restored = f"restored the parameters of step {step - 1}" if step > 0 else "the unedited model already gives it"
            raise NonFiniteLossError(
                f"training diverged at step {step}: {diverged} ({values}); {restored}; "
                f"lower the learning rate (lr={config.lr}) or check the inputs",
                step,
            )
        last_good = [p.detach().clone() for p in tunable.parameters]
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()

        losses.append(loss)
        ema = loss if step == 0 else config.ema_decay * ema + (1 - config.ema_decay) * loss
        if ema < best - config.min_delta:
            best, since_best = ema, 0
        else:
            since_best += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", forget_ce=f"{float(terms.forget_ce):.2f}", kl=f"{float(terms.retain_kl):.4f}")
        if since_best >= config.patience:
            stopped = "plateau"
            break
    if bar is not None:
        bar.close()

    result = TuneResult(
        config=config,
        method=config.method,
        steps=len(losses),
        wall_time_s=time.perf_counter() - t0,
        stopped_reason=stopped,
        final_scalars=tunable.scalars(),
        final_loss=losses[-1],
        final_forget_ce=float(terms.forget_ce),
        final_retain_kl=float(terms.retain_kl),
        loss_history=losses,
        forget_tokens=int((forget_labels != -100).sum()),
        forget_offset=offset,
        versions=versions(),
    )
    return tunable, result
