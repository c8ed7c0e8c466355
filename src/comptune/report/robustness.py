"""The study's robustness section: every method's chosen edit at a small and a large budget, attacked.

`run_robustness` attacks (relearning, quantisation, dose: `evaluation.robustness`) the chosen run
of each method at each asked budget (first λ, smallest seed), with the study's own model,
decomposition, evaluation blocks and scoring sets; the attacker text is checked against that
run's forget tokens and the evaluation blocks. Results are cached per attack config in
`STUDY/robustness/<config hash>/`, one file per run, so an interrupted report resumes and a
different attack config never mixes with an old one. The base model's relearning curves are
computed once and shared by every edit.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from .._io import versions, write_json_atomic
from ..errors import UserError
from ..evaluation.robustness import AttackConfig
from ..study.rows import RunRow, with_current_names
from .summary import SweepResults

ROBUSTNESS_DIR = "robustness"
RUN_FIELDS = ("run_id", "name", "method", "budget", "seed", "lambda_retain", "lr", "lora_alpha", "edit")  # a record's `run`
MIN_REMOVED_TO_PLOT = 1.0  # nats of target CE an edit must remove for its recovery curve to be drawn


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _read_record(path: Path) -> dict:
    """One attacked run's record, its `run` in today's field names (`study.rows.with_current_names`)."""
    rec = _read(path)
    return {**rec, "run": with_current_names(rec["run"])}


def study_attack_config(res: SweepResults, overrides: dict | None = None) -> AttackConfig:
    """The attack config for a study: its target/reference sets and evaluation blocks, then `overrides`."""
    s, e = res.config.scoring, res.config.eval
    fields = {"target": s.forget_eval, "reference": s.retain_eval, "block_len": e.block_len, "eval_blocks": e.max_blocks,
              "seq_len": res.config.train.seq_len, **(overrides or {})}
    return AttackConfig.model_validate(fields)


def robustness_picks(res: SweepResults, budgets: list[int]) -> list[RunRow]:
    """Per method and asked budget, the chosen run (first λ, smallest seed) that saved an edit."""
    have = {r.budget for r in res.chosen_rows}
    missing = sorted(set(budgets) - have)
    if missing:
        raise UserError(f"the study in {res.directory} has no chosen runs at budget(s) {missing}; it has {sorted(have)}")
    lam = res.config.lambda_retain[0]
    picks = []
    for m in res.methods:
        for b in budgets:
            cands = [r for r in res.chosen_rows if r.name == m and r.budget == b and r.lambda_retain == lam
                     and r.edit and (res.directory / r.edit).is_dir()]
            if cands:
                picks.append(min(cands, key=lambda r: r.seed))
    return picks


def _config_dir(res: SweepResults, config: AttackConfig) -> Path:
    return res.directory / ROBUSTNESS_DIR / config.digest()[:12]


def cached_robustness(res: SweepResults) -> tuple[AttackConfig, list[dict]] | None:
    """The most recently written robustness results of this study for its current picks, if any (no compute)."""
    root = res.directory / ROBUSTNESS_DIR
    dirs = sorted((d for d in root.glob("*") if (d / "config.json").is_file()), key=lambda d: (d / "config.json").stat().st_mtime) if root.is_dir() else []
    if not dirs:
        return None
    d = dirs[-1]
    written = _read(d / "config.json")
    config = AttackConfig.model_validate(written["config"])
    # only the runs that are picks now: a grown study may have chosen another lr since
    current = {r.run_id for r in robustness_picks(res, written.get("budgets") or sorted({r.budget for r in res.chosen_rows}))}
    order = {m: i for i, m in enumerate(res.methods)}
    records = [rec for rec in map(_read_record, d.glob("run-*.json")) if rec["run"]["run_id"] in current]
    return config, sorted(records, key=lambda r: (order.get(r["run"]["name"], len(order)), r["run"]["budget"]))


def run_robustness(res: SweepResults, budgets: list[int], config: AttackConfig, log=print, device=None) -> list[dict]:
    """Attack each pick (cached per run); returns one record per pick: run fields + the attack result."""
    from ..corpus.datasets import dataset_texts, sample_blocks
    from ..corpus.loading import token_stream
    from ..evaluation.robustness import attack_edit, dosable
    from ..model.loading import load_model_and_tokenizer
    from ..tuning.edits import is_ci_gated, load_edit_adapter
    from ..tuning.train import take_budget

    picks = robustness_picks(res, budgets)
    out = _config_dir(res, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"config": config.model_dump(mode="json"), "budgets": budgets, "versions": versions()})
    todo = [r for r in picks if not (out / f"run-{r.run_id}.json").is_file()]
    log(f"robustness: {len(picks)} edits ({len(picks) - len(todo)} already attacked) in {out}")
    if todo:
        base, tokenizer = load_model_and_tokenizer(res.config.model_dir(), device=device)
        base.eval()
        weights = {n: p.detach().clone() for n, p in base.named_parameters()}
        decomposition = None
        if any(is_ci_gated(res.directory / str(r.edit)) for r in todo):
            from ..decomposition import Decomposition

            decomposition = Decomposition.load(res.config.decomposition_dir(), copy.deepcopy(base))
        eval_sets = {n: sample_blocks(n, tokenizer, config.block_len, config.eval_blocks) for n in (config.target, config.reference)}
        attack_stream = token_stream(tokenizer, dataset_texts(config.attack_data))
        forget_stream = token_stream(tokenizer, dataset_texts(res.config.forget))
        base_path = out / "base_curves.json"
        base_curves = _read(base_path)["curves"] if base_path.is_file() else {}
        for i, r in enumerate(todo, 1):
            log(f"robustness [{i}/{len(todo)}]: {r.name} at budget {r.budget} (run {r.run_id})")
            model = copy.deepcopy(base)
            edit = dosable(load_edit_adapter(res.directory / str(r.edit), model, decomposition), weights)
            forget_block, _ = take_budget(forget_stream, r.budget, r.seed)
            result = attack_edit(edit, base, attack_stream, eval_sets, config, exclude={"the run's forget tokens": forget_block.unsqueeze(0)},
                                 base_curves=base_curves)
            write_json_atomic(base_path, {"curves": base_curves, "config": config.model_dump(mode="json")})
            write_json_atomic(out / f"run-{r.run_id}.json", {
                "run": r.model_dump(include=set(RUN_FIELDS)),
                "result": result, "config": config.model_dump(mode="json"), "seed": config.seed, "versions": versions()})
    return [_read_record(out / f"run-{r.run_id}.json") for r in picks]


def robustness_table(records: list[dict], config: AttackConfig) -> list[dict]:
    """One row per attacked edit: what it removed, what int8/int4 and a half dose leave, and for each
    attacker, N and lr the step at which half of it is back and what is still removed at the end
    (against the base model attacked the same way)."""
    rows = []
    for rec in records:
        r, res = rec["run"], rec["result"]
        row = {"name": r["name"], "budget": r["budget"], "seed": r["seed"], "removed": res["removed"], "damage": res["damage"]}
        for q in res.get("quantisation") or []:
            row[f"{q['scheme']}_removed"] = q["removed"]
        half = [d for d in res["dose"] if d["t"] == 0.5]
        if half:
            row["half_dose_removed"] = half[0]["ce"][config.target] - res["base_ce"][config.target]
        for a in res.get("relearning") or []:
            for run in a["all_lrs"]:
                key = f"{a['attacker']}_{a['tokens']}_lr{run['lr']:g}"
                row[f"{key}_half_step"] = run["half_step"]
                row[f"{key}_final_gap"] = run["final_gap_vs_attacked_base"]
        rows.append(row)
    return rows


def robustness_markdown(rows: list[dict], config: AttackConfig, figure: str | None) -> list[str]:
    n_lo, n_hi = min(config.tokens), max(config.tokens)
    lr_lo, lr_hi = min(config.lrs), max(config.lrs)
    L = ["", "## Robustness of the chosen edits", ""]
    if figure:
        L += [f"![robustness]({figure})", ""]
    L += [f"Each method's chosen run (smallest seed) attacked with `comptune attack`'s battery: relearning on `{config.attack_data}` "
          f"(N ∈ {config.tokens} tokens never trained on, full fine-tuning and a rank-{config.lora_rank} LoRA attacker, Adam, "
          f"{config.max_steps} steps, read every {config.eval_every}); quantisation of the merged model; half dose (t = 0.5). "
          f"`removed`: `{config.target}` CE increase over the base model (nats), also after int8 / int4 and at half dose. "
          f"Attack cells: the step at which half of it is back, at lr {lr_lo:g} / {lr_hi:g} (`never`: not within "
          f"{config.max_steps}; the first read is step {config.eval_every}); `gap`: what the gentle (lr {lr_lo:g}) full attack at "
          f"N = {n_hi} leaves removed, against the base model attacked the same way.", "",
          f"| method | budget | removed | int8 | int4 | t = 0.5 | full N={n_lo} | full N={n_hi} | LoRA N={n_lo} | LoRA N={n_hi} | gap |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]

    def step(r: dict, attacker: str, n: int, lr: float) -> str:
        k = f"{attacker}_{n}_lr{lr:g}_half_step"
        return "–" if k not in r else ("never" if r[k] is None else str(r[k]))

    for r in rows:
        def cell(key: str) -> str:
            return "–" if key not in r or r[key] is None or (isinstance(r[key], float) and math.isnan(r[key])) else f"{r[key]:+.2f}"

        atts = [f"{step(r, a, n, lr_lo)} / {step(r, a, n, lr_hi)}" for a in ("full", "lora") for n in (n_lo, n_hi)]
        L.append(f"| {r['name']} | {r['budget']} | {r['removed']:+.2f} | {cell('int8_removed')} | {cell('int4_removed')} | "
                 f"{cell('half_dose_removed')} | " + " | ".join(atts) + f" | {cell(f'full_{n_hi}_lr{lr_lo:g}_final_gap')} |")
    return L


def plot_robustness(records: list[dict], config: AttackConfig, stem: Path) -> list[Path]:
    """Left: the fraction of the removed CE still removed along the full attack at the largest N,
    one line per edit; right: the removed CE against dose t."""
    from .._figures import plt, save_figure
    from .plots import method_colors

    methods = list(dict.fromkeys(rec["run"]["name"] for rec in records))
    colors = method_colors(methods)
    budgets = sorted({rec["run"]["budget"] for rec in records})
    styles = {b: ls for b, ls in zip(budgets, ["--", "-", ":", "-."])}
    fig, (ax_r, ax_d) = plt.subplots(1, 2, figsize=(12, 4.5))
    n_hi = max(config.tokens)
    tgt = config.target
    for rec in records:
        run, res = rec["run"], rec["result"]
        label = f"{run['name']} @{run['budget']}"
        base, removed = res["base_ce"][tgt], res["removed"]
        full = [a for a in res.get("relearning") or [] if a["attacker"] == "full" and a["tokens"] == n_hi]
        if full and removed >= MIN_REMOVED_TO_PLOT:  # a fraction of almost nothing says nothing
            c = full[0]["curve"]
            ax_r.plot(c["steps"], [(v - base) / removed for v in c["ce"][tgt]], ls=styles[run["budget"]], color=colors[run["name"]], label=label)
        ax_d.plot([d["t"] for d in res["dose"]], [d["ce"][tgt] - base for d in res["dose"]], ls=styles[run["budget"]],
                  color=colors[run["name"]], marker="o", ms=3, label=label)
    ax_r.axhline(0.5, color="k", lw=0.6, ls=":")
    ax_r.set_ylim(-0.2, 1.5)
    ax_r.set(xlabel="attack step (full fine-tuning)", ylabel="fraction of the removed CE still removed",
             title=f"relearning on {n_hi} {config.attack_data} tokens\n(full, the fastest lr; edits removing ≥ {MIN_REMOVED_TO_PLOT:g} nat)")
    ax_d.set(xlabel="dose t (0 = base, 1 = the edit)", ylabel=f"{tgt} CE increase (nats)", title="dose")
    ax_d.axvline(1.0, color="k", lw=0.6, ls=":")
    ax_d.legend(fontsize=6, ncol=2)
    return save_figure(fig, stem)
