"""Is the removed skill really gone? Three attacks on a saved edit (`comptune attack`).

- **Relearning**: fine-tune the edited model on N target-language tokens it never saw (all weights
  with Adam, or a rank-r peft LoRA attacker), reading held-out target and reference CE every few
  steps; the same attack from the base model is the reference. Recovery is measured against the
  removed CE: an edit that raised target CE from `base` to `edited` is "half recovered" at the first
  evaluated step whose CE ≤ edited − ½ (edited − base) (`recovery_step`).
- **Quantisation**: the merged edited model with its linear layers in int8 (torch's dynamic
  quantisation, a real CPU kernel) and in 4-bit (group-wise round-to-nearest weight-only,
  simulated in float: torch has no 4-bit CPU matmul), beside the base model quantised the same way.
- **Dose**: the edit interpolated toward the identity, W(t) = lerp(W_base, W_edit, t), t ∈ [0, 1.5];
  for scalar edits this is exactly s(t) = 1 + t (s − 1), for LoRA the scaling times t, for IA3
  1 + t (l − 1), because each merges linearly. A CI-gated edit (which has no merged form) is dosed
  through its scalars; it cannot be relearned or quantised as a weight edit and is refused there.

Attacker text must be disjoint from the edit's forget text and from the evaluation text; the
default, `valid.de`, is the validation split (the edit trains on `forget.de`, a train-split set,
and evaluation reads `parallel.de`), and every attack checks that no 16-token window of its text
occurs in the evaluation blocks.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, cast

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from ..config import StrictConfig
from ..errors import NonFiniteError, UserError
from ..tuning.edits import check_dose, dosed_scales

OVERLAP_WINDOW = 16  # tokens: an attacker window this long found in the evaluation text is a leak
Attacker = Literal["full", "lora"]
Quantisation = Literal["int8", "int4"]


class AttackConfig(StrictConfig):
    """One attack battery on one edit. Defaults: the issue's N ∈ {16, 128, 1024}, both attackers."""

    tokens: list[int] = Field(default=[16, 128, 1024], min_length=1)  # attacker tokens N (each run sees these N every step)
    attackers: list[Attacker] = Field(default=["full", "lora"], min_length=1)
    lrs: list[float] = Field(default=[1e-4, 1e-3], min_length=1)  # Adam; the attacker keeps its best lr
    max_steps: int = Field(default=100, ge=1)
    eval_every: int = Field(default=10, ge=1)
    seq_len: int = Field(default=64, ge=2)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    seed: int = Field(default=0, ge=0)  # picks the attacker block and the LoRA attacker's init
    attack_data: str = "valid.de"
    target: str = "parallel.de"  # held-out set whose CE the edit raised
    reference: str = "general_en"  # held-out set whose CE it should keep
    eval_blocks: int = Field(default=8, ge=1)
    block_len: int = Field(default=128, ge=2)
    doses: list[float] = Field(default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5], min_length=1)
    quantisations: list[Quantisation] = ["int8", "int4"]
    int4_group: int = Field(default=32, ge=1)

    @field_validator("doses")
    @classmethod
    def _doses_in_range(cls, v: list[float]) -> list[float]:
        return [check_dose(t) for t in v]

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, v: list[float]) -> list[float]:
        if any(not (lr > 0) for lr in v):
            raise UserError(f"learning rates must be positive, got {v}")
        return v


# ---------------------------------------------------------------------------------------------
# the edit as a weight delta


@dataclass
class DosableEdit:
    """A loaded edit and how to put it at dose t. `model` is a plain HF model whose weights are
    set to lerp(base, edited, t) for a mergeable edit, or the live CI-gated ComponentScaleModel
    whose scalars are set to 1 + t (s − 1)."""

    model: nn.Module
    mergeable: bool
    base: dict[str, torch.Tensor]  # mergeable: weights of the base model (only those the edit changes)
    edited: dict[str, torch.Tensor]  # mergeable: the same weights with the edit merged in
    scales: dict[str, float]  # gated: the trained scalars

    def set_dose(self, t: float) -> None:
        check_dose(t)
        if not self.mergeable:
            self.model.set_scales(dosed_scales(self.scales, t))  # type: ignore[operator]  # a ComponentScaleModel
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, w0 in self.base.items():
                # lerp is exact at both ends: t = 0 gives the base weights, t = 1 the merged edit
                params[name].copy_(torch.lerp(w0, self.edited[name], t))

    def plain_model(self, t: float = 1.0) -> nn.Module:
        """A standalone copy of the model at dose t (mergeable edits only)."""
        if not self.mergeable:
            raise UserError("a CI-gated edit depends on the input and has no merged (plain) model: "
                             "relearning and quantisation attacks need an ungated edit")
        self.set_dose(t)
        out = copy.deepcopy(self.model)
        self.set_dose(1.0)
        return out


def dosable(edited: nn.Module, base_weights: dict[str, torch.Tensor]) -> DosableEdit:
    """Wrap an edit's wrapper (ComponentScaleModel or PeftModel, from `load_edit_adapter`) on a base
    model whose weights before the edit were `base_weights` (name → tensor of the plain model)."""
    from ..tuning.component_scale import ComponentScaleModel

    if isinstance(edited, ComponentScaleModel) and edited.scale_config.ci_threshold is not None:
        return DosableEdit(edited, False, {}, {}, edited.scales())
    merged = edited.merge_and_unload()  # type: ignore[operator]  # a PeftModel
    params = dict(merged.named_parameters())
    if set(params) != set(base_weights):
        raise UserError("the merged edit's weights do not match the base model's: the edit belongs to another model")
    changed = [n for n, p in params.items() if not torch.equal(p, base_weights[n])]
    base = {n: base_weights[n].detach().clone() for n in changed}
    merged_w = {n: params[n].detach().clone() for n in changed}
    return DosableEdit(merged.eval(), True, base, merged_w, {})


# ---------------------------------------------------------------------------------------------
# relearning


def recovery_step(steps: list[int], ce: list[float], edited_ce: float, base_ce: float, fraction: float) -> int | None:
    """The first evaluated step at which target CE has come back by `fraction` of what the edit
    removed: ce ≤ edited − fraction · (edited − base). None if it never does, or if the edit
    removed nothing (edited ≤ base)."""
    if not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    removed = edited_ce - base_ce
    if not removed > 0:
        return None
    threshold = edited_ce - fraction * removed
    for s, c in zip(steps, ce):
        if c <= threshold:
            return s
    return None


def attacker_block(stream: torch.Tensor, n_tokens: int, seed: int, name: str) -> torch.Tensor:
    """N + 1 contiguous attacker tokens (the first is context only), picked by seed like a tuning budget."""
    from ..tuning.train import take_budget

    try:
        block, _ = take_budget(stream, n_tokens, seed)
    except ValueError as e:
        raise UserError(f"attacker data {name!r}: {e}") from None
    return block


def check_disjoint(attack: torch.Tensor, others: dict[str, torch.Tensor], window: int = OVERLAP_WINDOW) -> None:
    """Refuse attacker text that shares a span with any of `others` (name → token ids [..., T]): a
    span of `window` tokens, or the whole of the shorter text when either is shorter than that."""
    a = attack.reshape(-1).tolist()
    spans: dict[int, set] = {}
    for name, blocks in others.items():
        for row in blocks.reshape(-1, blocks.shape[-1]).tolist():
            w = min(window, len(a), len(row))
            if w not in spans:
                spans[w] = {tuple(a[i : i + w]) for i in range(len(a) - w + 1)}
            if any(tuple(row[i : i + w]) in spans[w] for i in range(len(row) - w + 1)):
                raise UserError(f"the attacker data shares a {w}-token span with {name}: an attack must not train on text "
                                 "it is evaluated on or that the edit was trained on; choose other attacker data")


def _fresh_attacker(model: nn.Module, attacker: str, config: AttackConfig) -> tuple[nn.Module, list[nn.Parameter]]:
    net = copy.deepcopy(model)
    if attacker == "full":
        for p in net.parameters():
            p.requires_grad_(True)
        return net, list(net.parameters())
    from ..tuning import Selection, TuneConfig, build_method

    # the study's own LoRA method (every linear weight), rank and alpha of the attacker
    lora = TuneConfig(method="lora", budget=1, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
    with torch.random.fork_rng(devices=[]):  # seeded LoRA init without touching the caller's RNG
        torch.manual_seed(config.seed)
        tunable = build_method("lora", net, None, Selection(), lora)
    return tunable.model, tunable.parameters


def relearn_curve(model: nn.Module, block: torch.Tensor, eval_sets: dict[str, torch.Tensor], attacker: str, lr: float,
                  config: AttackConfig) -> dict:
    """Fine-tune a copy of `model` on `block` (full batch every step) and read CE on `eval_sets`
    at step 0 and every `eval_every` steps. Returns {"steps", "ce": {set: [...]}, "train_loss"}."""
    from ..model.outputs import model_logits
    from ..tuning.objective import next_token_ce
    from ..tuning.train import forget_sequences
    from .ce import evaluate_ce

    net, params = _fresh_attacker(model, attacker, config)
    device = next(net.parameters()).device
    ids, labels = (t.to(device) for t in forget_sequences(block, config.seq_len))
    opt = torch.optim.Adam(params, lr=lr)
    steps: list[int] = []
    ce: dict[str, list[float]] = {name: [] for name in eval_sets}
    losses: list[float] = []

    def read(step: int) -> None:
        r = evaluate_ce(net, eval_sets)
        steps.append(step)
        for name in eval_sets:
            ce[name].append(r.ce[name])

    read(0)
    net.train()
    for step in range(1, config.max_steps + 1):
        loss = next_token_ce(model_logits(net, ids), labels)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"the {attacker} attacker's loss became {loss.item()} at step {step} with lr {lr}: lower the attacker lrs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.max_steps:
            read(step)
    return {"steps": steps, "ce": ce, "train_loss": losses}


# ---------------------------------------------------------------------------------------------
# quantisation


def _quantisable(model: nn.Module) -> list[str]:
    """The nn.Linear layers a quantiser converts: all but the unembedding, which int8/int4 recipes
    (LLM.int8, GPTQ, AWQ) keep in full precision."""
    from ..decomposition.bases import linear_module_paths

    return [p for p in linear_module_paths(model) if isinstance(model.get_submodule(p), nn.Linear)]


def _int4_fake_quantised(model: nn.Module, group: int) -> nn.Module:
    """Every quantisable weight rounded to 4 bits, symmetric per group of `group` inputs (as
    weight-only int4 kernels store it), then used in float."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for path in _quantisable(net):
            w = cast(nn.Linear, net.get_submodule(path)).weight
            d_out, d_in = w.shape
            if d_in % group:
                raise UserError(f"int4 group {group} does not divide the input size {d_in} of {path}; choose another int4_group")
            g = w.reshape(d_out, d_in // group, group)
            scale = g.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 7  # symmetric: levels −7 … 7
            w.copy_((torch.round(g / scale).clamp(-8, 7) * scale).reshape(d_out, d_in))
    return net


def quantised(model: nn.Module, scheme: str, config: AttackConfig) -> nn.Module:
    if scheme == "int4":
        return _int4_fake_quantised(model, config.int4_group)
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch deprecates these kernels in favour of torchao; they are its own int8 CPU path today
        warnings.simplefilter("ignore")
        # torch's int8 dynamic kernels are CPU kernels: the quantised copy runs there
        return quantize_dynamic(copy.deepcopy(model).float().cpu(), set(_quantisable(model)), dtype=torch.qint8)


# ---------------------------------------------------------------------------------------------
# the battery


def attack_edit(edit: DosableEdit, base_model: nn.Module, attack_stream: torch.Tensor, eval_sets: dict[str, torch.Tensor],
                config: AttackConfig, *, exclude: dict[str, torch.Tensor] | None = None, base_curves: dict | None = None,
                progress: Callable[[str], None] | None = None) -> dict:
    """Dose curve, quantisation and relearning for one edit. `base_model` is the unedited model;
    `eval_sets` holds the target and reference blocks (config.target, config.reference) and may
    hold more; the attacker's text must share no span with them nor with `exclude` (e.g. the
    edit's own forget tokens). `base_curves` reuses the base model's relearning curves (they
    depend only on the base model, the attacker block and the config, so a study computes them
    once). Returns the JSON-ready result."""
    from .ce import evaluate_ce

    say = progress or (lambda _msg: None)
    t0 = time.time()
    blocks = {}  # taken and checked before any compute: a bad attacker set fails at once
    if edit.mergeable:
        for n in config.tokens:
            blocks[n] = attacker_block(attack_stream, n, config.seed, config.attack_data)
            check_disjoint(blocks[n], {**{f"evaluation set {k}": v for k, v in eval_sets.items()}, **(exclude or {})})
    base_ce = evaluate_ce(base_model, eval_sets).ce
    edit.set_dose(1.0)
    edited_ce = evaluate_ce(edit.model, eval_sets).ce
    out: dict = {"base_ce": base_ce, "edited_ce": edited_ce,
                 "removed": edited_ce[config.target] - base_ce[config.target],
                 "damage": edited_ce[config.reference] - base_ce[config.reference]}

    say("dose curve")
    dose = []
    for t in config.doses:
        edit.set_dose(t)
        dose.append({"t": t, "ce": evaluate_ce(edit.model, eval_sets).ce})
    edit.set_dose(1.0)
    out["dose"] = dose

    if not edit.mergeable:
        out["quantisation"] = out["relearning"] = None
        out["not_attacked"] = "CI-gated edit: no merged weights to quantise or fine-tune"
        out["seconds"] = round(time.time() - t0, 1)
        return out

    plain = edit.plain_model(1.0)
    out["quantisation"] = []
    for scheme in config.quantisations:
        say(f"quantisation {scheme}")
        qb, qe = evaluate_ce(quantised(base_model, scheme, config), eval_sets).ce, evaluate_ce(quantised(plain, scheme, config), eval_sets).ce
        out["quantisation"].append({"scheme": scheme, "base_ce": qb, "edited_ce": qe,
                                    "removed": qe[config.target] - qb[config.target],
                                    "removed_unquantised": out["removed"]})

    relearning = []
    base_curves = {} if base_curves is None else base_curves
    for n in config.tokens:
        block = blocks[n]
        for attacker in config.attackers:
            runs = []
            for lr in config.lrs:
                say(f"relearning: {attacker} attacker, {n} tokens, lr {lr:g}")
                edit_curve = relearn_curve(plain, block, eval_sets, attacker, lr, config)
                key = f"{attacker}/{n}/{lr:g}"
                if key not in base_curves:
                    base_curves[key] = relearn_curve(base_model, block, eval_sets, attacker, lr, config)
                runs.append(_recovery_row(edit_curve, base_curves[key], out, config, attacker, n, lr))
            # the attacker keeps its strongest lr: fastest half recovery, then lowest final target CE
            best = min(runs, key=lambda r: (r["half_step"] if r["half_step"] is not None else math.inf, r["final_target_ce"]))
            relearning.append({**{k: v for k, v in best.items() if k not in ("curve", "base_curve")},
                               "curve": best["curve"], "base_curve": best["base_curve"],
                               "all_lrs": [{k: v for k, v in r.items() if k not in ("curve", "base_curve")} for r in runs]})
    out["relearning"] = relearning
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _recovery_row(curve: dict, base_curve: dict, head: dict, config: AttackConfig, attacker: str, n: int, lr: float) -> dict:
    tgt, ref = config.target, config.reference
    edited, base = head["edited_ce"][tgt], head["base_ce"][tgt]
    half = recovery_step(curve["steps"], curve["ce"][tgt], edited, base, 0.5)
    ninety = recovery_step(curve["steps"], curve["ce"][tgt], edited, base, 0.9)
    return {
        "attacker": attacker, "tokens": n, "lr": lr,
        "half_step": half, "ninety_step": ninety,
        "half_tokens": None if half is None else half * n, "ninety_tokens": None if ninety is None else ninety * n,
        "final_target_ce": curve["ce"][tgt][-1],
        "min_gap": min(curve["ce"][tgt]) - base,  # the deepest recovery along the attack
        # what is still removed after the attack: against the untouched base, and against the base attacked the same way
        "final_gap": curve["ce"][tgt][-1] - base,
        "final_gap_vs_attacked_base": curve["ce"][tgt][-1] - base_curve["ce"][tgt][-1],
        "max_reference_damage": max(c - head["base_ce"][ref] for c in curve["ce"][ref]),
        "curve": curve, "base_curve": base_curve,
    }


def summary_table(result: dict, config: AttackConfig) -> str:
    """The battery's result as text: dose, quantisation and relearning rows."""
    tgt, ref = config.target, config.reference
    lines = [f"edit: {tgt} {result['base_ce'][tgt]:.3f} -> {result['edited_ce'][tgt]:.3f} (removed {result['removed']:+.3f} nats), "
             f"{ref} damage {result['damage']:+.3f}"]
    lines.append("dose t: " + "  ".join(f"{d['t']:g}: {d['ce'][tgt] - result['base_ce'][tgt]:+.2f}/{d['ce'][ref] - result['base_ce'][ref]:+.3f}"
                                        for d in result["dose"]) + f"   ({tgt} gain / {ref} damage)")
    for q in result.get("quantisation") or []:
        lines.append(f"{q['scheme']}: removed {q['removed']:+.3f} nats (unquantised {q['removed_unquantised']:+.3f}); "
                     f"base {tgt} {q['base_ce'][tgt]:.3f}, edited {q['edited_ce'][tgt]:.3f}")
    if result.get("relearning"):
        lines.append(f"{'attacker':<8} {'N':>6} {'lr':>7} {'½ step':>7} {'90% step':>8} {'final gap':>9} {'vs attacked base':>16} {'max ' + ref:>14}")
        for r in result["relearning"]:
            fmt = lambda s: "never" if s is None else str(s)  # noqa: E731
            lines.append(f"{r['attacker']:<8} {r['tokens']:>6} {r['lr']:>7g} {fmt(r['half_step']):>7} {fmt(r['ninety_step']):>8} "
                         f"{r['final_gap']:>+9.3f} {r['final_gap_vs_attacked_base']:>+16.3f} {r['max_reference_damage']:>+14.3f}")
    if result.get("not_attacked"):
        lines.append(f"not attacked: {result['not_attacked']}")
    return "\n".join(lines)


def write_attack(out_dir: str | Path, result: dict, config: AttackConfig, inputs: dict) -> Path:
    """OUT/attack.json (config, seed, versions, inputs, result) and OUT/attack.png/.svg."""
    from .._io import versions, write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "attack.json"
    write_json_atomic(path, {"config": config.model_dump(mode="json"), "seed": config.seed, "inputs": inputs,
                             "result": result, "versions": versions()})
    plot_attack(result, config, out_dir / "attack")
    return path


def plot_attack(result: dict, config: AttackConfig, stem: Path) -> list[Path]:
    from .._figures import plt, save_figure

    tgt = config.target
    fig, (ax_r, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    base = result["base_ce"][tgt]
    for r in result.get("relearning") or []:
        line, = ax_r.plot(r["curve"]["steps"], r["curve"]["ce"][tgt], label=f"edit, {r['attacker']} N={r['tokens']} lr {r['lr']:g}")
        ax_r.plot(r["base_curve"]["steps"], r["base_curve"]["ce"][tgt], ls=":", color=line.get_color())
    ax_r.axhline(base, color="k", lw=0.8, label="base model, not attacked")
    ax_r.axhline(result["edited_ce"][tgt], color="k", lw=0.8, ls="--", label="edit, not attacked")
    ax_r.set(xlabel="attack step", ylabel=f"{tgt} CE (nats)", title="relearning (dotted: same attack on the base)")
    ax_r.legend(fontsize=6)
    ts = [d["t"] for d in result["dose"]]
    ax_d.plot(ts, [d["ce"][tgt] - base for d in result["dose"]], "o-", label=f"{tgt} gain")
    ax_d.plot(ts, [d["ce"][config.reference] - result["base_ce"][config.reference] for d in result["dose"]], "s-",
              label=f"{config.reference} damage")
    ax_d.axvline(1.0, color="k", lw=0.8, ls="--")
    ax_d.set(xlabel="dose t (0 = base, 1 = the edit)", ylabel="CE change (nats)", title="dose")
    ax_d.legend(fontsize=7)
    return save_figure(fig, stem)


def attack_single_edit(edit_dir: str | Path, config: AttackConfig, out_dir: str | Path, *, model_dir: str | Path | None = None,
                       decomposition_dir: str | Path | None = None, progress: Callable[[str], None] | None = None,
                       device=None) -> tuple[dict, Path]:
    """`comptune attack`: the battery on one saved edit, written to OUT (never into the edit's folder).
    For an edit saved by `comptune tune` (OUT/edit beside OUT/tune_result.json) the attacker text
    is also checked against the forget tokens the edit was trained on."""
    import json

    from ..corpus.bundle import bundled_decomposition_dir, bundled_model_dir
    from ..corpus.datasets import dataset_texts, sample_blocks
    from ..corpus.loading import token_stream
    from ..model.loading import context_length, load_model_and_tokenizer
    from ..tuning.edits import is_ci_gated, load_edit_adapter

    edit_dir, out_dir = Path(edit_dir), Path(out_dir)
    if out_dir.resolve().is_relative_to(edit_dir.resolve()):
        raise UserError(f"--out {out_dir} lies inside the edit's folder {edit_dir}: an attack never writes there; choose another --out")
    gated = is_ci_gated(edit_dir)  # also: a clear error if edit_dir holds no edit, before any loading
    model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
    model, tokenizer = load_model_and_tokenizer(model_dir, device=device)
    model.eval()
    context = context_length(model)
    for field in ("block_len", "seq_len"):
        if context is not None and getattr(config, field) > context:
            raise UserError(f"{field} {getattr(config, field)} exceeds the model's context of {context} tokens; set {field} ≤ {context}")
    base_model = copy.deepcopy(model)
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    decomposition = None
    if gated:
        from ..decomposition import Decomposition

        decomposition_dir = Path(decomposition_dir) if decomposition_dir is not None else bundled_decomposition_dir()
        decomposition = Decomposition.load(decomposition_dir, model)
    edit = dosable(load_edit_adapter(edit_dir, model, decomposition), base_weights)

    eval_sets = {name: sample_blocks(name, tokenizer, config.block_len, config.eval_blocks) for name in (config.target, config.reference)}
    attack_stream = token_stream(tokenizer, dataset_texts(config.attack_data))
    exclude, forget_source = {}, None
    result_path = edit_dir.parent / "tune_result.json"
    if result_path.is_file():
        tuned = json.loads(result_path.read_text())
        forget_source = tuned["inputs"]["forget"]
        stream = token_stream(tokenizer, dataset_texts(forget_source))
        start, n = tuned["result"]["forget_offset"], tuned["result"]["forget_tokens"]
        exclude[f"the edit's forget tokens ({forget_source})"] = stream[start : start + n + 1].unsqueeze(0)
    result = attack_edit(edit, base_model, attack_stream, eval_sets, config, exclude=exclude, progress=progress)
    inputs = {"edit": str(edit_dir), "model": str(model_dir), "decomposition": str(decomposition_dir) if gated else None,
              "ci_gated": gated, "attack_data": config.attack_data, "checked_against_edit_forget_tokens": forget_source,
              "eval_blocks": {k: list(v.shape) for k, v in eval_sets.items()}}
    return result, write_attack(out_dir, result, config, inputs)
