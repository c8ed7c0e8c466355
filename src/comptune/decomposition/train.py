"""Train a decomposition (VPD; SPD with the layerwise CI function and the adversary off).

One step (SPEC §4–§5, following the reference code):
1. clean target forward → pre-weight activations → CI (g_lower builds masks, g_upper for minimality);
2. 2 Adam ascent steps of the persistent adversary's sources, CI and components held fixed;
3. total = c_faith·faithfulness + c_stoch·KL(stochastic masks, subset routing)
   + c_adv·KL(adversarial masks, all routed) + c_min·minimality(p annealed);
4. the adversary's source gradient from that same graph is taken before the main backward and
   applied as a third ascent step after it; components' gradient norm is clipped; two AdamW
   optimisers (components, CI function) step on a cosine schedule.

Runs resume from `out_dir/checkpoint.safetensors` (one atomic file holding components, CI,
both optimisers, the adversary's sources and moments of every rank, RNG states and the step);
the files, checkpoints, logs and data-parallel plumbing are in `run_state.py`.
Under `torchrun` the same function trains data-parallel (DDP, gloo on CPU / NCCL on GPU): the
global batch is split across ranks, masks and adversaries are per rank, rank 0 writes.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.profiler import record_function
from tqdm.auto import tqdm

from .._io import append_jsonl, load_safetensors, save_safetensors_atomic, versions, write_json_atomic
from .._signals import StopRequested
from ..config import StrictConfig
from ..errors import NonFiniteError, UserError
from .bases import svd_components
from .ci import CIConfig
from .components import linear_layout_weight
from .decomposed import Decomposition
from .losses import (
    PersistentPGD,
    Reconstruction,
    TargetDistribution,
    anneal_p,
    faithfulness_loss,
    kl_target_to_masked,
    minimality_loss,
    route_sources,
    sample_stochastic_sources,
    sample_subset_routing,
    source_masked_logits,
)
from .report import quality_report
from .run_state import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EVAL_LOG_NAME,
    INIT_FROM_NAME,
    QUALITY_NAME,
    TRAIN_LOG_NAME,
    batch_indices,
    checkpoint_meta,
    dist_setup,
    gather,
    load_optimizer,
    load_trained_params,
    optimizer_tensors,
    prepare_logs,
    read_checkpoint,
)

# The paper's 24 matrices of the 4-layer model and their C (SPEC §1).
PAPER_PATTERNS = {
    "h.*.attn.q_proj": 512,
    "h.*.attn.k_proj": 512,
    "h.*.attn.v_proj": 1024,
    "h.*.attn.o_proj": 1024,
    "h.*.mlp.c_fc": 3072,
    "h.*.mlp.down_proj": 3584,
}

# Settings that do not change the run's arithmetic: a resumed run may change them.
BOOKKEEPING_FIELDS = {"eval_every", "eval_batch_size", "checkpoint_every", "log_every", "max_minutes"}


class DecomposeConfig(StrictConfig):
    """Defaults are the paper's 4-layer run (SPEC §5); `preset("small")` sizes it for the bundled model."""

    seed: int = 0
    patterns: dict[str, int] = Field(default_factory=lambda: dict(PAPER_PATTERNS))  # fnmatch -> C
    # fnmatch -> "svd" | "neurons": start those matrices' components from a basis instead of the
    # random init (see `basis_init`); matrices no pattern names start random (the paper's init)
    init: dict[str, Literal["svd", "neurons"]] = Field(default_factory=dict)
    ci: CIConfig = Field(default_factory=CIConfig)
    reconstruction: Literal["kl", "mse"] = "kl"  # kl: language models; mse: toy models with vector outputs
    # optimisation
    steps: int = Field(default=400_000, gt=0)
    batch_size: int = Field(default=64, gt=0)  # global: split across data-parallel ranks
    lr: float = Field(default=5e-5, gt=0)  # components
    ci_lr: float | None = Field(default=None, gt=0)  # CI function; None = lr
    lr_final_frac: float = Field(default=0.1, ge=0)  # cosine decay to this fraction
    grad_clip_components: float | None = Field(default=0.01, gt=0)  # on U, V only
    faithfulness_warmup_steps: int = Field(default=400, ge=0)
    faithfulness_warmup_lr: float = Field(default=1e-3, gt=0)
    # loss
    coeff_faithfulness: float = Field(default=1e7, ge=0)
    coeff_stochastic: float = Field(default=0.5, ge=0)
    coeff_adversarial: float = Field(default=0.5, ge=0)  # 0 turns the persistent adversary off (SPD)
    coeff_minimality: float = Field(default=2e-4, ge=0)
    p_start: float = Field(default=2.0, gt=0)
    p_end: float = Field(default=0.4, gt=0)
    minimality_beta: float = Field(default=0.5, ge=0)  # frequency term
    minimality_eps: float = Field(default=1e-12, ge=0)
    routing: Literal["uniform_k_subset", "all"] = "uniform_k_subset"  # of the stochastic term
    # persistent adversary
    ppgd_lr: float = Field(default=0.01, gt=0)
    ppgd_lr_final_frac: float = Field(default=1.0, ge=0)
    ppgd_warmup_frac: float = Field(default=0.025, ge=0, lt=1)
    ppgd_betas: tuple[float, float] = (0.5, 0.99)
    ppgd_eps: float = Field(default=1e-8, gt=0)
    ppgd_inner_steps: int = Field(default=2, ge=0)
    # evaluation and bookkeeping
    eval_every: int = Field(default=1000, gt=0)
    eval_batch_size: int = Field(default=8, gt=0)
    pgd_eval_steps: int = Field(default=20, ge=0)
    pgd_eval_step_size: float = Field(default=0.1, gt=0)
    checkpoint_every: int = Field(default=1000, gt=0)
    log_every: int = Field(default=10, gt=0)
    max_minutes: float | None = Field(default=None, gt=0)  # stop (checkpointed, resumable) after this wall time
    # bf16 autocast of the forwards (target, CI function, masked passes); Δ, faithfulness, the KL and
    # the optimiser stay fp32. "auto": on for CUDA, off elsewhere
    autocast: Literal["auto", "bf16", "off"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> "DecomposeConfig":
        if not self.patterns:
            raise UserError("patterns must name at least one module pattern with its C")
        bad = {k: v for k, v in self.patterns.items() if v <= 0}
        if bad:
            raise UserError(f"C must be positive for every pattern, got {bad}")
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> "DecomposeConfig":
        """Named starting points: "paper" (the defaults) and "small" (a ~4-layer d=128 model on 2 CPU cores)."""
        presets = {"paper": {}, "small": SMALL_PRESET}
        if name not in presets:
            raise UserError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls.model_validate({**presets[name], **overrides})


# Sized for the bundled model (4 layers, d_model 128, d_mlp 512): C ≈ 2–4× the matrix's smaller
# side, a CI transformer half the target's depth and twice its width, the SimpleStories run's
# lr (3e-4) and a batch that fits a 2-core CPU.
SMALL_PRESET = {
    "patterns": {"h.*.attn.q_proj": 256, "h.*.attn.k_proj": 256, "h.*.attn.v_proj": 256, "h.*.attn.o_proj": 256, "h.*.mlp.c_fc": 512, "h.*.mlp.down_proj": 512},
    "ci": {"type": "global_transformer", "d_model": 256, "n_blocks": 2, "n_heads": 4, "d_ff": 1024},
    "steps": 20_000,
    "batch_size": 8,
    "lr": 3e-4,
    "eval_every": 500,
    "checkpoint_every": 200,
}


def config_for_model(config: DecomposeConfig, target: torch.nn.Module) -> DecomposeConfig:
    """`config` with its module patterns (and `init` globs) in `target`'s module names: a preset
    written for the bundled model decomposes a GPT-2, GPT-NeoX/Pythia or Llama/Qwen model as it is
    (model.families); patterns that already match are kept."""
    from ..model.families import patterns_for_model, translate_globs

    patterns, family = patterns_for_model(target, config.patterns)
    if family is None:
        return config
    print(f"decompose: module patterns for the {family} family: {', '.join(f'{p} ({c})' for p, c in patterns.items())}", file=sys.stderr)
    return config.model_copy(update={"patterns": patterns, "init": translate_globs(config.init, family)})


def cosine_lr(step: int, total: int, start: float, final_frac: float, warmup_frac: float = 0.0) -> float:
    """Linear warm-up over warmup_frac·total steps, then half-cosine from start to start·final_frac."""
    warmup = int(warmup_frac * total)
    if step < warmup:
        return start * step / warmup
    progress = min(max((step - warmup) / max(total - warmup - 1, 1), 0.0), 1.0)
    final = start * final_frac
    return final + 0.5 * (start - final) * (1 + math.cos(math.pi * progress))


def decompose(
    target: torch.nn.Module,
    train_blocks: torch.Tensor,
    config: DecomposeConfig,
    out_dir: str | Path,
    resume: bool = True,
    eval_blocks: torch.Tensor | None = None,
    stop_at_step: int | None = None,
    init_from: str | Path | None = None,
    device: torch.device | str | None = None,
) -> Decomposition:
    """Decompose `target` on `train_blocks` ([N, T] token ids, or [N, ...] inputs for `mse` toys).

    Writes to `out_dir`: the config, `train_log.jsonl` (loss terms every log_every steps),
    `eval_log.jsonl` (quality figures every eval_every steps, if eval_blocks are given), the resumable
    checkpoint and, at the end (or when stopped), the decomposition itself and `quality.json`.
    `resume=True` continues from an existing checkpoint; `stop_at_step` ends the run early after
    checkpointing there (to split a run deterministically). `init_from` (a decomposition folder of
    this target with the same modules, C and CI function) starts a new run from its components and
    CI function instead of the faithfulness warm-up — to carry a long run across sessions through a
    committed decomposition; optimiser moments and the adversary's sources start afresh (the sources
    are per-position, batch-shaped and too large to ship). `device` defaults to CUDA when present
    (under torchrun, each process's LOCAL_RANK GPU). Returns the decomposition, with
    `provenance["completed"]` telling whether all `config.steps` were done.
    """
    out_dir = Path(out_dir)
    if train_blocks.shape[0] < config.batch_size:
        raise UserError(f"{train_blocks.shape[0]} training blocks are fewer than one batch (batch_size={config.batch_size}); give more data or a smaller batch")
    embeddings = target.get_input_embeddings() if hasattr(target, "get_input_embeddings") else None  # type: ignore[operator]
    if embeddings is not None and not train_blocks.is_floating_point() and int(train_blocks.max()) >= embeddings.num_embeddings:
        raise UserError(f"training blocks hold token id {int(train_blocks.max())} but the model has {embeddings.num_embeddings} embeddings: "
                         "the data was tokenized with another tokenizer")
    config = config_for_model(config, target)
    rank, world_size, device = dist_setup(device)
    if config.batch_size % world_size:
        raise UserError(f"batch_size={config.batch_size} must be divisible by the number of processes ({world_size})")
    ckpt_path = out_dir / CHECKPOINT_NAME
    resuming = ckpt_path.is_file()
    if resuming and not resume:
        raise UserError(f"{out_dir} already holds a checkpoint; resume it (--resume) or choose a new output folder")

    # identical initialisation on every rank
    torch.manual_seed(config.seed)
    target.to(device)
    decomposition = Decomposition.create(target, config.patterns, config.ci).to(device)
    tensors = None
    if resuming:
        tensors, meta = read_checkpoint(ckpt_path, config, world_size, BOOKKEEPING_FIELDS)
        load_trained_params(decomposition, tensors)
        step = meta["step"]
    elif init_from is not None:
        init_record = _init_from(decomposition, Path(init_from), target)
        step = 0
    else:
        basis_init(decomposition, config.init)
        if rank == 0 and config.faithfulness_warmup_steps:
            print(f"decompose: faithfulness warm-up, {config.faithfulness_warmup_steps} steps (components only, no model forward)", file=sys.stderr)
        _faithfulness_warmup(decomposition, config)
        step = 0

    trainer = VPDTrainer(decomposition, config, device, rank, world_size)
    if tensors is not None:
        trainer.load_state_tensors(tensors)
        del tensors
    if rank == 0:
        prepare_logs(out_dir, step, resuming)
        if not resuming:  # the run's origin survives resumes in its own file
            (out_dir / INIT_FROM_NAME).unlink(missing_ok=True)
            if init_from is not None:
                write_json_atomic(out_dir / INIT_FROM_NAME, init_record)
        write_json_atomic(out_dir / CONFIG_NAME, {"config": config.model_dump(mode="json"), "seed": config.seed,
            "world_size": world_size, "versions": versions()})

    def save_checkpoint() -> None:
        t = trainer.state_tensors()  # every rank takes part (the adversaries are gathered)
        if rank == 0:
            meta = {"step": step, "world_size": world_size, "config": config.model_dump(mode="json"), "versions": versions()}
            save_safetensors_atomic(t, ckpt_path, metadata={"state": json.dumps(meta)})

    eval_data = eval_blocks if config.reconstruction == "kl" else None  # the held-out evaluation measures KL
    t0, start_step = time.time(), step
    if rank == 0:
        print(f"decompose: steps {step}..{config.steps} of batch {config.batch_size}; the bar's estimate after its first "
              f"steps is the run's expected duration; stop any time (Ctrl-C) and resume with --resume", file=sys.stderr)
    bar = tqdm(total=config.steps, initial=step, desc="decompose", dynamic_ncols=True, disable=rank != 0)
    stopped = False
    with StopRequested() as stop:
        while step < config.steps:
            if eval_data is not None and step % config.eval_every == 0 and rank == 0:
                _log_eval(decomposition, eval_data, config, out_dir, step, bar)
            batch = train_blocks[batch_indices(step, train_blocks.shape[0], config.batch_size, config.seed, rank, world_size)].to(device)
            row = trainer.train_step(batch, step)
            step += 1
            if rank == 0 and (step % config.log_every == 0 or step == config.steps):
                append_jsonl(out_dir / TRAIN_LOG_NAME, {"step": step, **row})
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "faithfulness", "stochastic", "adversarial", "minimality")})
            bar.update(1)
            out_of_time = config.max_minutes is not None and (time.time() - t0) / 60 > config.max_minutes
            stop_now = stop.requested or out_of_time or step == stop_at_step
            if world_size > 1:  # every rank must stop at the same step (the checkpoint gathers from all)
                flag = torch.tensor(float(stop_now), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop_now = bool(flag.item())
            if step % config.checkpoint_every == 0 or stop_now or step == config.steps:
                save_checkpoint()
            if stop_now:
                stopped = step < config.steps
                break
    bar.close()

    completed = step >= config.steps
    decomposition.config = config.model_dump(mode="json")
    decomposition.provenance = {
        "method": "VPD" if config.coeff_adversarial > 0 else "SPD",
        **({"init_from": json.loads((out_dir / INIT_FROM_NAME).read_text())} if (out_dir / INIT_FROM_NAME).is_file() else {}),
        "steps_done": step, "completed": completed, "world_size": world_size, "seed": config.seed,
        "train_blocks_shape": list(train_blocks.shape), "wall_time_s_this_session": round(time.time() - t0, 1),
        "steps_this_session": step - start_step,
    }
    if rank == 0:
        decomposition.save(out_dir)
        if eval_data is not None and completed:
            report = _log_eval(decomposition, eval_data, config, out_dir, step, bar=None)
            write_json_atomic(out_dir / QUALITY_NAME, {"step": step, "report": report, "config": config.model_dump(mode="json"),
                "seed": config.seed, "versions": versions()})
    if stopped and rank == 0:
        print(f"decompose: stopped at step {step}/{config.steps}; checkpoint in {ckpt_path} (resume to continue)")
    return decomposition


def _init_from(decomposition: Decomposition, source_dir: Path, target: nn.Module) -> dict:
    """Copy components and CI function from a saved decomposition of the same target and shape."""
    from .decomposed import META_NAME

    source = Decomposition.load(source_dir, target)  # checks the target's weights fingerprint
    ours = {p: decomposition.C(p) for p in decomposition.module_paths}
    theirs = {p: source.C(p) for p in source.module_paths}
    if ours != theirs or source.ci_config.sizes() != decomposition.ci_config.sizes():
        meta = json.loads((source_dir / META_NAME).read_text())
        raise UserError(
            f"--init-from {source_dir} does not match this run: it decomposes {_describe(theirs)} with CI {source.ci_config.type} "
            f"(target fingerprint {meta['target']['fingerprint']}), this run's config asks for {_describe(ours)} with CI "
            f"{decomposition.ci_config.type}; use the config the source was made with (its decompose_config.json) or start afresh"
        )
    with torch.no_grad():
        for (name, p), (_, q) in zip(decomposition.named_parameters(), source.named_parameters()):
            p.copy_(q)
    return {"path": str(source_dir), "provenance": source.provenance}


def _describe(C: dict[str, int]) -> str:
    return ", ".join(f"{p} (C={c})" for p, c in sorted(C.items()))


@torch.no_grad()
def basis_init(decomposition: Decomposition, init: Mapping[str, str]) -> None:
    """Start the components of the matrices `init` names from a basis whose rank-1 terms sum to W:

    - "neurons": one component per unit of the matrix's larger side — the MLP hidden units of an
      up projection (reads row j of W, writes e_j) or a down projection (reads e_j, writes column j);
    - "svd": one component per singular direction (reads v_i, writes σ_i u_i).

    Components beyond the basis's size keep their random read vector and write nothing (U row 0),
    so the sum stays W exactly. This departs from the paper's random init on purpose: short runs
    barely move components from where they start (README), so a run can start from the units a
    user would otherwise edit and let training split or merge them.
    """
    import fnmatch

    unused = [pat for pat in init if not any(fnmatch.fnmatch(p, pat) for p in decomposition.module_paths)]
    if unused:
        raise UserError(f"init patterns {unused} match no decomposed module; decomposed: {', '.join(decomposition.module_paths)}")
    for path in decomposition.module_paths:
        kinds = {b for pat, b in init.items() if fnmatch.fnmatch(path, pat)}
        if not kinds:
            continue
        if len(kinds) > 1:
            raise UserError(f"init patterns give module {path} two bases {sorted(kinds)}; make them disjoint")
        basis = kinds.pop()
        comp = decomposition.get_components(path)
        W = linear_layout_weight(decomposition.target_module(path)).detach().to(comp.V.dtype)  # [d_out, d_in]
        d_out, d_in = W.shape
        if basis == "neurons":
            r = max(d_in, d_out)
            V, U = (torch.eye(d_in), W.T) if d_in >= d_out else (W.T, torch.eye(d_out))  # [d_in, r], [r, d_out]
        else:
            V, U = svd_components(decomposition.target, [path])[path]
            r = V.shape[1]
        if comp.C < r:
            raise UserError(f"init {basis!r} for {path} needs C ≥ {r} (one component per {'unit' if basis == 'neurons' else 'singular direction'}); "
                             f"it has C = {comp.C}")
        comp.V[:, :r] = V.to(comp.V)
        comp.U[:r] = U.to(comp.U)
        comp.U[r:] = 0


def _faithfulness_warmup(decomposition: Decomposition, config: DecomposeConfig) -> None:
    """AdamW on the Δ loss alone, so training starts from components that already sum to W."""
    params = decomposition.component_parameters()
    opt = _adamw(params, config.faithfulness_warmup_lr)
    for _ in range(config.faithfulness_warmup_steps):
        opt.zero_grad(set_to_none=True)
        faithfulness_loss(decomposition).backward()
        opt.step()


class VPDTrainer:
    """One rank's optimisation state (optimisers, adversary, mask RNG) and the training step."""

    def __init__(self, decomposition: Decomposition, config: DecomposeConfig, device: torch.device, rank: int = 0, world_size: int = 1):
        self.decomposition, self.config, self.device, self.rank, self.world_size = decomposition, config, device, rank, world_size
        use_bf16 = config.autocast == "bf16" or (config.autocast == "auto" and device.type == "cuda")
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.model: nn.Module = decomposition  # what the CI forward runs through: DDP averages gradients across ranks
        if world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(decomposition, device_ids=[device.index] if device.type == "cuda" else None)
        self.component_params = decomposition.component_parameters()
        self.opt_components = _adamw(self.component_params, config.lr)
        self.opt_ci = _adamw(decomposition.ci_fn.parameters(), config.ci_lr or config.lr)
        # ranks diverge from here: per-rank streams for masks and routing
        self.mask_rng = torch.Generator(device=device).manual_seed(config.seed * 7919 + 1 + rank)
        # the adversary's sources are shaped like the CI ([B, T] or [B], then C+1): made at the first step
        self.ppgd: PersistentPGD | None = None
        self._ppgd_resume_state: dict | None = None
        self.recon: Reconstruction = kl_target_to_masked if config.reconstruction == "kl" else _mse

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float | None]:
        """One optimisation step at `step` (which sets the schedules); returns the logged figures."""
        config, d, paths = self.config, self.decomposition, self.decomposition.module_paths
        lr = cosine_lr(step, config.steps, config.lr, config.lr_final_frac)
        for g in self.opt_components.param_groups:
            g["lr"] = lr
        for g in self.opt_ci.param_groups:
            g["lr"] = cosine_lr(step, config.steps, config.ci_lr or config.lr, config.lr_final_frac)
        ppgd_lr = cosine_lr(step, config.steps, config.ppgd_lr, config.ppgd_lr_final_frac, config.ppgd_warmup_frac)
        p = anneal_p(step, config.steps, config.p_start, config.p_end)

        with record_function("vpd/target+ci"), self.autocast():
            ci = self.model(batch)
        target_out = TargetDistribution.of(ci.target_logits) if config.reconstruction == "kl" else ci.target_logits.detach()
        terms = {"faithfulness": faithfulness_loss(d)}
        terms["minimality"] = minimality_loss(ci.upper, p, config.minimality_beta, config.minimality_eps, self.world_size)
        with record_function("vpd/stochastic"), self.autocast():
            sources = sample_stochastic_sources(ci.lower, self.mask_rng)
            if config.routing == "uniform_k_subset":
                sources = route_sources(sources, sample_subset_routing(paths, tuple(ci.lower[paths[0]].shape[:-1]), self.device, self.mask_rng))
            terms["stochastic"] = self.recon(source_masked_logits(d, batch, ci.lower, sources), target_out)
        if self.ppgd is None and config.coeff_adversarial > 0:
            self.ppgd = self._make_ppgd(ci.lower)
        if self.ppgd is not None:
            with record_function("vpd/adversary-ascent"), self.autocast():
                self.ppgd.ascend(d, batch, target_out, ci.lower, ppgd_lr, config.ppgd_inner_steps, self.recon)
            with record_function("vpd/adversarial"), self.autocast():
                terms["adversarial"] = self.ppgd.loss(d, batch, target_out, ci.lower, self.recon)
        total = (
            config.coeff_faithfulness * terms["faithfulness"]
            + config.coeff_minimality * terms["minimality"]
            + config.coeff_stochastic * terms["stochastic"]
            + (config.coeff_adversarial * terms["adversarial"] if self.ppgd is not None else 0.0)
        )
        if not torch.isfinite(total):
            bad = [k for k, v in terms.items() if not torch.isfinite(v)] or ["total"]
            raise NonFiniteError(f"the {', '.join(bad)} loss term went non-finite at step {step} "
                                     f"({ {k: v.item() for k, v in terms.items()} }); nothing of this step was saved: resume from the last "
                                     "checkpoint (--resume) with a lower lr")
        with record_function("vpd/backward"):
            self.opt_components.zero_grad(set_to_none=True)
            self.opt_ci.zero_grad(set_to_none=True)
            total.backward()
        with record_function("vpd/optimiser"):
            grad_norm = None
            if config.grad_clip_components is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.component_params, config.grad_clip_components).item()
            self.opt_components.step()
            self.opt_ci.step()
            if self.ppgd is not None:
                # the main backward reaches the sources through the adversarial term alone, so their
                # gradient of that term comes from it, without a second backward of the same graph
                grads = []
                for src in self.ppgd.leaves():
                    assert src.grad is not None  # the adversarial term routes every module through the sources
                    grads.append(src.grad / config.coeff_adversarial)
                self.ppgd.adam_ascent_step(grads, ppgd_lr)
        return {"loss": total.item(), **{k: v.item() for k, v in terms.items()}, "p": p, "lr": lr, "ppgd_lr": ppgd_lr, "grad_norm_components": grad_norm}

    def _make_ppgd(self, ci_lower) -> PersistentPGD:
        # its own generator, so making the sources never shifts the mask stream (a resumed run
        # makes them afresh and then loads the checkpointed ones)
        init_rng = torch.Generator(device=self.device).manual_seed(self.config.seed * 7919 + 2 + self.rank)
        d = self.decomposition
        batch_shape = tuple(ci_lower[d.module_paths[0]].shape[:-1])
        ppgd = PersistentPGD({p: d.C(p) for p in d.module_paths}, batch_shape, self.device, init_rng, self.config.ppgd_betas, self.config.ppgd_eps)
        if self._ppgd_resume_state:
            ppgd.load_state_tensors(self._ppgd_resume_state)
        return ppgd

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a resume needs; per-rank parts (adversary, RNG) gathered from every rank."""
        t = {f"params.{k}": p.detach() for k, p in self.decomposition.named_parameters() if p.requires_grad}
        t.update(optimizer_tensors(self.opt_components, "opt.components"))
        t.update(optimizer_tensors(self.opt_ci, "opt.ci"))
        per_rank = {"rng.masks": self.mask_rng.get_state(), "rng.torch": torch.get_rng_state()}
        if self.ppgd is not None:
            per_rank.update({f"ppgd.{k}": v for k, v in self.ppgd.state_tensors().items()})
        for name, value in per_rank.items():
            for r, v in enumerate(gather(value.to(self.device), self.world_size)):
                t[f"rank{r}.{name}"] = v
        return t

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Optimisers, this rank's RNG streams and adversary (parameters are loaded before DDP wraps them)."""
        load_optimizer(self.opt_components, tensors, "opt.components")
        load_optimizer(self.opt_ci, tensors, "opt.ci")
        self.mask_rng.set_state(tensors[f"rank{self.rank}.rng.masks"].cpu())
        torch.set_rng_state(tensors[f"rank{self.rank}.rng.torch"].cpu())
        prefix = f"rank{self.rank}.ppgd."
        self._ppgd_resume_state = {k.removeprefix(prefix): v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}


def _adamw(params, lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay; the fused kernel (CPU and CUDA) is ~6x faster than the default on CPU."""
    params = list(params)
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)


def _mse(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, ref.detach())


def snapshot(run_dir: str | Path, target: nn.Module, out_dir: str | Path) -> Decomposition:
    """Save the latest checkpoint of a decompose run (running, stopped or finished) as a plain
    decomposition that loads without training state — to inspect or edit with a run mid-way."""
    path = Path(run_dir) / CHECKPOINT_NAME
    meta = checkpoint_meta(path)
    config = DecomposeConfig.model_validate(meta["config"])
    decomposition = Decomposition.create(target, config.patterns, config.ci)
    load_trained_params(decomposition, load_safetensors(path))
    decomposition.config = config.model_dump(mode="json")
    decomposition.provenance = {"snapshot_of": str(run_dir), "step": meta["step"], "steps_planned": config.steps, "completed": meta["step"] >= config.steps}
    decomposition.save(out_dir)
    return decomposition


def _log_eval(decomposition: Decomposition, eval_blocks: torch.Tensor, config: DecomposeConfig, out_dir: Path, step: int, bar) -> dict:
    report = quality_report(decomposition, eval_blocks, batch_size=config.eval_batch_size, pgd_steps=config.pgd_eval_steps,
                            pgd_step_size=config.pgd_eval_step_size, seed=config.seed)
    append_jsonl(out_dir / EVAL_LOG_NAME, {"step": step, **report})
    msg = (f"step {step}: CE target {report['ce']['target']:.3f} unmasked {report['ce']['unmasked']:.3f} stochastic "
           f"{report['ce']['stochastic']:.3f} ci-masked {report['ce']['ci_masked']:.3f} L0 {report['l0']['total']:.1f} "
           f"alive {report['alive']['total']} PGD KL {report['pgd_kl']:.3f}")
    (bar.write if bar is not None else print)(msg)
    return report
