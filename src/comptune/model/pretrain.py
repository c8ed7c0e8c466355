"""Pretrain the bundled target model on a language mix, with atomic checkpoints and resume.

Training windows are drawn per step: each row of a batch picks a language with the mix
probabilities (so the mix is a share of *training tokens*), then a random window of that
language's token stream. English dominates; German is the strongest other language (≈ 7 %),
as in the reference study's model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from .._io import load_safetensors, save_safetensors_atomic, share_files, versions, write_json_atomic
from .._signals import StopRequested
from ..config import StrictConfig
from ..corpus.datasets import mix_windows
from ..errors import NonFiniteError, UserError
from .modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM


class PretrainConfig(StrictConfig):
    # model
    vocab_size: int = 8192
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    d_mlp: int = 512
    n_ctx: int = 256
    # data: share of training tokens per bundled language (train split)
    mix: dict[str, float] = Field(default_factory=lambda: {"en": 0.70, "de": 0.07, "fr": 0.05, "es": 0.05, "it": 0.05, "code": 0.08})
    # share of the tokenizer's training sample per language; None = `mix`. Equal shares keep
    # tokens/char alike across languages, so per-token CE compares languages fairly.
    tokenizer_mix: dict[str, float] | None = None
    tokenizer_sample_chars: int = 20_000_000
    # optimisation
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 6000
    max_minutes: float | None = None  # stop (and save) early after this wall time
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20

    @model_validator(mode="after")
    def _check(self):
        for name, weights in (("mix", self.mix), ("tokenizer_mix", self.tokenizer_mix)):
            if weights is not None and (not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
                raise UserError(f"{name} must hold non-negative weights with a positive sum, got {weights}")
        if self.tokenizer_mix is not None and not set(self.tokenizer_mix) <= set(self.mix):
            extra = sorted(set(self.tokenizer_mix) - set(self.mix))
            raise UserError(f"tokenizer_mix names {extra}, which are not in mix {sorted(self.mix)}; add them to mix or drop them")
        return self

    def lm_config(self) -> ComptuneLMConfig:
        return ComptuneLMConfig(
            vocab_size=self.vocab_size, n_layer=self.n_layer, d_model=self.d_model,
            n_head=self.n_head, d_mlp=self.d_mlp, n_ctx=self.n_ctx,
        )


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_batch(streams: dict[str, torch.Tensor], cfg: PretrainConfig, gen: torch.Generator) -> torch.Tensor:
    """[batch_size, n_ctx] windows; each row's language drawn with the mix probabilities."""
    return mix_windows(streams, cfg.mix, cfg.batch_size, cfg.n_ctx, gen)


def pretrain(cfg: PretrainConfig, out_dir: str | Path, streams: dict[str, torch.Tensor], tokenizer=None, *, resume: bool = True,
             device: torch.device | str | None = None) -> ComptuneLMForCausalLM:
    """Train (or resume) a ComptuneLM on token streams per language, on `device` (default: the CPU);
    save to `out_dir` (HF format).

    `out_dir/checkpoint.safetensors` + `checkpoint.json` hold everything needed to resume:
    model, optimiser moments, step, RNG state and the loss history.
    """
    out_dir = Path(out_dir)
    for lang, s in streams.items():  # missing languages and too-short streams: see mix_windows
        if int(s.max()) >= cfg.vocab_size:
            raise UserError(f"token stream {lang!r} holds id {int(s.max())} ≥ vocab_size={cfg.vocab_size}: tokenizer and model do not match")

    torch.manual_seed(cfg.seed)
    # PreTrainedModel.to is wrapped in functools.wraps, which mypy does not bind to the instance
    model = ComptuneLMForCausalLM(cfg.lm_config()).to(device or "cpu")  # type: ignore[arg-type]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, []

    ckpt_t, ckpt_meta = out_dir / "checkpoint.safetensors", out_dir / "checkpoint.json"
    if resume and ckpt_meta.is_file():
        import json

        meta = json.loads(ckpt_meta.read_text())
        # a wall-time limit is not part of the run's math; everything else must match
        saved, now = ({k: v for k, v in c.items() if k != "max_minutes"} for c in (meta["config"], cfg.model_dump(mode="json")))
        if saved != now:
            changed = sorted(k for k in now if saved.get(k) != now[k])
            raise UserError(f"checkpoint in {out_dir} was written with a different config ({', '.join(changed)}); use a new --out or the same config")
        tensors = load_safetensors(ckpt_t)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)  # copies onto device
        model.tie_weights()
        opt_state = opt.state_dict()
        for i, p in enumerate(decay + no_decay):
            opt_state["state"][i] = {
                "step": tensors[f"opt.{i}.step"], "exp_avg": tensors[f"opt.{i}.exp_avg"], "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"],
            }
        opt.load_state_dict(opt_state)
        gen.set_state(tensors["rng.data"])
        torch.set_rng_state(tensors["rng.torch"])
        step, history = meta["step"], meta["history"]

    def save_checkpoint():
        tensors = {f"model.{k}": v.cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        for i, p in enumerate(decay + no_decay):
            st = opt.state.get(p)
            if st:
                tensors.update({f"opt.{i}.step": st["step"].reshape(()).cpu(), f"opt.{i}.exp_avg": st["exp_avg"].cpu(),
                                f"opt.{i}.exp_avg_sq": st["exp_avg_sq"].cpu()})
        tensors["rng.data"] = gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        save_safetensors_atomic(tensors, ckpt_t)
        write_json_atomic(ckpt_meta, {"step": step, "history": history, "config": cfg.model_dump(mode="json"), "versions": versions()})

    model.train()
    t0, tokens_seen = time.time(), 0
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", dynamic_ncols=True)
    with StopRequested() as stop:
        while step < cfg.max_steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = sample_batch(streams, cfg, gen).to(model.device)  # [B, T]
            loss = model(batch, labels=batch).loss
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite training loss at step {step}; last good checkpoint is in {out_dir}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            tokens_seen += batch.numel()
            if step % cfg.log_every == 0:
                tok_s = tokens_seen / (time.time() - t0)
                history.append({"step": step, "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"], "tokens_per_s": round(tok_s)})
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:,.0f}")
            bar.update(1)
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes
            if step % cfg.checkpoint_every == 0 or stop.requested or out_of_time:
                save_checkpoint()
            if stop.requested or out_of_time:
                break
    bar.close()
    save_checkpoint()
    model.eval()
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    share_files(out_dir)
    write_json_atomic(out_dir / "pretrain_config.json", {"config": cfg.model_dump(mode="json"), "step": step, "versions": versions()})
    return model


def tokenizer_sample(texts: dict[str, list[str]], shares: dict[str, float], n_chars: int, seed: int) -> list[str]:
    """Whole documents drawn at random per language until each has its share of `n_chars`
    (a language runs short only if its text is shorter than its share)."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(shares.values())
    sample = []
    for lang, docs in texts.items():
        budget = n_chars * shares.get(lang, 0.0) / total
        for i in torch.randperm(len(docs), generator=gen).tolist():
            if budget <= 0:
                break
            sample.append(docs[i])
            budget -= len(docs[i])
    return sample


def prepare_data(cfg: PretrainConfig, out_dir: str | Path) -> tuple:
    """Train (or reload) the tokenizer on a `tokenizer_mix`-weighted sample of the bundled training text, and
    tokenize each language's training split into one stream; both are cached in `out_dir`."""
    from transformers import PreTrainedTokenizerFast

    from ..corpus.bundle import bundled_texts
    from ..corpus.loading import token_stream
    from ..tokenizer import train_tokenizer

    out_dir = Path(out_dir)
    tok_dir, streams_path = out_dir / "tokenizer", out_dir / "streams.safetensors"
    texts = {lang: bundled_texts(f"train.{lang}") for lang in cfg.mix}
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        sample = tokenizer_sample(texts, cfg.tokenizer_mix or cfg.mix, cfg.tokenizer_sample_chars, cfg.seed)
        tokenizer = train_tokenizer(sample, vocab_size=cfg.vocab_size)
        tokenizer.save_pretrained(tok_dir)
    if len(tokenizer) > cfg.vocab_size:
        raise UserError(f"tokenizer in {tok_dir} has {len(tokenizer)} tokens but vocab_size={cfg.vocab_size}")
    if streams_path.is_file():
        streams = load_safetensors(streams_path)
    else:
        streams = {lang: token_stream(tokenizer, docs) for lang, docs in texts.items()}
        save_safetensors_atomic(streams, streams_path)
    return tokenizer, streams
