"""`make_report`: the study's figures, tables and a markdown summary from a sweep's out directory.

Only the chosen runs (the (lr, alpha) picked per method, budget and lambda on validation data)
enter figures and tables, as in the write-up. Tables:
- minimum budget: the smallest budget at which a method reaches the forget set at chance with
  damage below the bound, for at least half of its seeds (at some lambda);
- budget curves: mean forget CE increase and retain damage per method and budget (first lambda);
- off-target: CE increase per evaluation set at the largest budget (mean and range over seeds);
- learned scalars of scalar methods: how many runs invert (s < 0) or amplify (s > 1);
- rollouts: greedy continuations, base vs each method's chosen edit at the largest budget, made
  by re-loading the saved edit.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from .._io import versions, write_json_atomic, write_text_atomic
from ..errors import UserError
from ..evaluation.rollouts import rollouts_markdown
from ..study.config import SweepConfig
from ..study.rows import RunRow, read_chosen, read_rows
from .plots import plot_budget_curves, plot_off_target, plot_scalars, plot_tradeoff

SCALAR_PLOT_MAX_KEYS = 32  # methods with more scalars per run (the L1-over-modules variant) are summarised, not plotted


@dataclass
class SweepResults:
    directory: Path
    config: SweepConfig
    rows: list[RunRow]  # every run, each with `chosen`
    chosen: dict  # chosen.json, groups named by `name`
    base: dict
    selection: dict

    @property
    def chosen_rows(self) -> list[RunRow]:
        return [r for r in self.rows if r.chosen and r.status == "ok"]

    @property
    def methods(self) -> list[str]:
        return [m.name for m in self.config.methods]


def load_results(results_dir: str | Path) -> SweepResults:
    d = Path(results_dir)
    if not (d / "sweep_config.yaml").is_file():
        raise FileNotFoundError(f"{d} is not a sweep directory (no sweep_config.yaml); run `comptune sweep CONFIG --out {d}` first")
    if not (d / "results.jsonl").is_file():
        name = yaml.safe_load((d / "sweep_config.yaml").read_text()).get("name")
        again = f"comptune demo{' --full' if name == 'full' else ''} --out {d}" if name in ("demo", "full") else f"comptune sweep CONFIG --out {d}"
        raise FileNotFoundError(f"the sweep in {d} has not finished (no results.jsonl); run `{again}` again to complete it (it resumes)")
    config = SweepConfig.model_validate(yaml.safe_load((d / "sweep_config.yaml").read_text()))
    rows = read_rows(d / "results.jsonl")
    if not rows:
        raise UserError(f"{d / 'results.jsonl'} holds no runs")
    return SweepResults(
        d, config, rows,
        read_chosen(json.loads((d / "chosen.json").read_text())),
        json.loads((d / "base_ce.json").read_text()),
        json.loads((d / "selection.json").read_text()),
    )


def at_least_half(k: int, n: int) -> bool:
    """The report's "most seeds" rule: k of n counts when k ≥ n / 2."""
    return 2 * k >= n


def min_budget_table(rows: list[RunRow], methods: list[str], budgets: list[int]) -> list[dict]:
    """Per method (entry `name`): the smallest budget at which ≥ half the seeds of some lambda succeed
    (`score.success`: forget set at chance and damage below the bound), with per-budget counts
    (for the lambda with the best success rate)."""
    out = []
    for m in methods:
        per_budget = []
        reached = None
        for b in budgets:
            by_lambda: dict[float, list[bool]] = {}
            for r in rows:
                if r.name == m and r.budget == b and r.score is not None:
                    by_lambda.setdefault(r.lambda_retain, []).append(r.score.success)
            if not by_lambda:
                continue
            lam, ok = max(by_lambda.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
            per_budget.append({"budget": b, "succeeded": sum(ok), "runs": len(ok), "lambda_retain": lam})
            if reached is None and at_least_half(sum(ok), len(ok)):
                reached = b
        out.append({"name": m, "min_budget": reached, "per_budget": per_budget})
    return out


def budget_curve_table(rows: list[RunRow], methods: list[str], budgets: list[int], lambda_retain: float) -> list[dict]:
    """Per method (entry `name`) and budget, over the seeds of `lambda_retain`: mean forget CE increase, mean
    retain damage, and how many seeds put the forget set at chance (whatever their damage)."""
    out = []
    for m in methods:
        per_budget = []
        for b in budgets:
            rs = [r.scored for r in rows if r.name == m and r.budget == b and r.lambda_retain == lambda_retain and r.status == "ok"]
            if not rs:
                continue
            n = len(rs)
            per_budget.append({
                "budget": b, "runs": n,
                "forget_increase": sum(r.forget_increase for r in rs) / n,
                "retain_damage": sum(r.retain_damage for r in rs) / n,
                "forget_at_chance": sum(r.forget_at_chance for r in rs),
            })
        out.append({"name": m, "lambda_retain": lambda_retain, "per_budget": per_budget})
    return out


def make_report(results_dir: str | Path, out_dir: str | Path | None = None, *, rollouts: bool = True,
                robustness_budgets: list[int] | None = None, robustness_config: dict | None = None, device=None, log=print) -> Path:
    """Figures (PNG + SVG), tables and `summary.md` for the sweep in `results_dir`; returns summary.md.

    `robustness_budgets` attacks each method's chosen edit at those budgets (`report.robustness`;
    `robustness_config` overrides AttackConfig fields); without it, robustness results already
    computed for this study are included as they are. `device`: where the rollouts and attacks
    run (default: the CPU)."""
    res = load_results(results_dir)
    out = Path(out_dir) if out_dir is not None else res.directory / "report"
    cfg, s = res.config, res.config.scoring
    rows = res.chosen_rows
    if not rows:
        raise UserError(f"no chosen run finished in {res.directory}: every setting diverged (see runs' `error`)")
    chance = res.base["chance"]
    chance_gap = chance - res.base["ce"][s.forget_eval]
    budgets = sorted({r.budget for r in rows})
    largest = budgets[-1]
    methods = [m for m in res.methods if any(r.name == m for r in rows)]

    figures = {
        "tradeoff": plot_tradeoff(rows, methods, budgets, chance_gap=chance_gap, max_damage=s.max_damage,
                                  forget_label=s.forget_eval, retain_label=s.retain_eval, stem=out / "tradeoff"),
        "off_target": plot_off_target(rows, methods, cfg.eval_datasets, budget=largest, stem=out / "off_target"),
    }
    curves = budget_curve_table(rows, methods, budgets, cfg.lambda_retain[0])
    if len(budgets) > 1:
        figures["budget_curves"] = plot_budget_curves(curves, methods, chance_gap=chance_gap, max_damage=s.max_damage,
                                                      forget_label=s.forget_eval, retain_label=s.retain_eval, stem=out / "budget_curves")
    scalar_methods = [m for m in methods if _is_plottable_scalar(cfg, rows, m)]
    if scalar_methods:
        figures["scalars"] = plot_scalars(rows, scalar_methods, budgets, stem=out / "scalars")
    log(f"report: figures {', '.join(figures)} → {out}")

    table = min_budget_table(rows, methods, budgets)
    rollout_rows = _rollouts(res, out, log, device) if rollouts else None
    robust_md = _robustness(res, out, figures, robustness_budgets, robustness_config, log, device)
    md = _summary_markdown(res, rows, table, curves, figures, scalar_methods, rollout_rows, chance, chance_gap, budgets, robust_md)
    path = out / "summary.md"
    write_text_atomic(path, md)
    write_json_atomic(out / "min_budget.json", {"rule": (min_budget_table.__doc__ or "").strip(), "table": table, "versions": versions()})
    write_json_atomic(out / "budget_curves.json", {"rule": (budget_curve_table.__doc__ or "").strip(), "table": curves, "versions": versions()})
    log(f"report: {path}")
    return path


def _is_plottable_scalar(cfg: SweepConfig, rows: list[RunRow], name: str) -> bool:
    sizes = [len(r.final_scalars) for r in rows if r.name == name]
    return bool(sizes) and 0 < max(sizes) <= SCALAR_PLOT_MAX_KEYS


# --------------------------------------------------------------------------- rollouts
def rollout_picks(res: SweepResults) -> dict[str, RunRow]:
    """Per method, the chosen run at its largest budget, first lambda, smallest seed, that saved an edit."""
    picks = {}
    for m in res.methods:
        cands = [r for r in res.chosen_rows if r.name == m and r.edit and (res.directory / r.edit).is_dir()]
        if cands:
            lam_order = {lam: i for i, lam in enumerate(res.config.lambda_retain)}
            picks[m] = min(cands, key=lambda r: (-r.budget, lam_order.get(r.lambda_retain, 0), r.seed))
    return picks


def _rollouts(res: SweepResults, out: Path, log, device=None) -> list[dict] | None:
    """Greedy continuations of the config's prompts by the base model and each picked edit."""
    from ..evaluation.rollouts import rollouts
    from ..model.loading import load_model_and_tokenizer
    from ..tuning.edits import is_ci_gated, load_edit

    picks = rollout_picks(res)
    if not picks:
        return None
    base, tokenizer = load_model_and_tokenizer(res.config.model_dir(), device=device)
    decomposition = None
    if any(is_ci_gated(res.directory / str(r.edit)) for r in picks.values()):
        from ..decomposition import Decomposition

        decomposition = Decomposition.load(res.config.decomposition_dir(), copy.deepcopy(base))
    models = {"base": base}
    for m, r in picks.items():
        models[m] = load_edit(res.directory / str(r.edit), copy.deepcopy(base), decomposition)
    ro = res.config.rollout
    log(f"report: rollouts of {len(models)} models on {len(ro.prompts)} prompts")
    rows = rollouts(models, tokenizer, list(ro.prompts.values()), max_new_tokens=ro.max_new_tokens)
    for lang, row in zip(ro.prompts, rows):
        row["lang"] = lang
    write_json_atomic(out / "rollouts.json", {
        "picked_runs": {m: r.model_dump(include={"run_id", "budget", "seed", "lambda_retain", "lr", "lora_alpha", "edit"}) for m, r in picks.items()},
        "max_new_tokens": ro.max_new_tokens, "decoding": "greedy", "rollouts": rows, "versions": versions(),
    })
    return rows


# --------------------------------------------------------------------------- robustness
def _robustness(res: SweepResults, out: Path, figures: dict, budgets: list[int] | None, overrides: dict | None, log,
                device=None) -> list[str]:
    """The robustness section's markdown lines (run now for `budgets`, else from the study's cache)."""
    from .robustness import cached_robustness, plot_robustness, robustness_markdown, robustness_table, run_robustness, study_attack_config

    if budgets:
        config = study_attack_config(res, overrides)
        records = run_robustness(res, budgets, config, log, device)
    else:
        cached = cached_robustness(res)
        if cached is None or not cached[1]:
            return []
        config, records = cached
    rows = robustness_table(records, config)
    figures["robustness"] = plot_robustness(records, config, out / "robustness")
    write_json_atomic(out / "robustness.json", {"config": config.model_dump(mode="json"), "table": rows, "versions": versions()})
    return robustness_markdown(rows, config, "robustness.png")


# --------------------------------------------------------------------------- markdown
def _summary_markdown(res, rows, table, curves, figures, scalar_methods, rollout_rows, chance, chance_gap, budgets, robust_md=()) -> str:
    cfg, s = res.config, res.config.scoring
    largest = budgets[-1]
    L = [f"# Unlearning study `{cfg.name}`", ""]
    L += [
        f"Generated by `comptune report {res.directory}` from {len(res.rows)} runs ({len(rows)} with the chosen learning rate).",
        "",
        f"- model: `{cfg.model}` (weights fingerprint `{res.base['model_fingerprint']}`), decomposition: `{cfg.decomposition}`",
        f"- forget text `{cfg.forget}`, retain text `{cfg.retain}`; budgets {cfg.budgets}; seeds {cfg.seeds}; λ {cfg.lambda_retain}",
        f"- chance ln|V| = {chance:.3f} nats (|V| = {res.base['vocab_size']}); base CE on `{s.forget_eval}` "
        f"{res.base['ce'][s.forget_eval]:.3f}, so \"at chance\" is an increase of {chance_gap:.3f} (within {s.chance_tolerance:g} nats)",
        f"- success = `{s.forget_eval}` at chance and `{s.retain_eval}` CE increase < {s.max_damage:g} nats",
        f"- learning rate (and LoRA alpha) chosen on `{s.forget_valid}` / `{s.retain_valid}` (base CE {_base(res, s.forget_valid)} / "
        f"{_base(res, s.retain_valid)}): {res.chosen['rule']}",
        "",
        "## Methods",
        "",
        "| method | tuning method | selection | lr grid | alpha grid |",
        "|---|---|---|---|---|",
    ]
    sel = res.selection["methods"]
    for m in cfg.methods:
        info = sel.get(m.name, {})
        chosen_sel = info.get("selection") or {}
        keys = chosen_sel.get("keys") or []  # a modules selection is named by its criterion already
        shown = ", ".join(f"`{k}`" for k in keys[:4]) + (f" … ({len(keys)})" if len(keys) > 4 else "")
        tuning = m.method + (f" r{m.lora_rank}" if m.method == "lora" else "")
        alphas = ", ".join(f"{a:g}" for a in m.alphas) if m.method in ("lora", "lora_local") else "–"
        L.append(f"| {m.name} | {tuning} | {info.get('criterion', '')}{': ' + shown if shown else ''} | {', '.join(f'{x:g}' for x in m.lrs)} | {alphas} |")

    L += ["", f"## Minimum budget for `{s.forget_eval}` at chance with < {s.max_damage:g} nats `{s.retain_eval}` damage", "",
          "At least half the seeds must succeed (at some λ). Counts: succeeded / runs per budget.", "",
          "| method | minimum budget | " + " | ".join(str(b) for b in budgets) + " |", "|---|---|" + "---|" * len(budgets)]
    for t in table:
        counts = {c["budget"]: f"{c['succeeded']}/{c['runs']}" for c in t["per_budget"]}
        cells = [counts.get(b, "–") for b in budgets]
        L.append(f"| {t['name']} | {t['min_budget'] if t['min_budget'] is not None else 'not reached'} | " + " | ".join(cells) + " |")

    L += ["", "## Forget gain and damage per budget", ""]
    if "budget_curves" in figures:
        L += ["![budget curves](budget_curves.png)", ""]
    L += [f"Mean over seeds (λ = {cfg.lambda_retain[0]:g}) of the `{s.forget_eval}` CE increase / the `{s.retain_eval}` CE increase, nats; "
          f"`†` = at least half the seeds put `{s.forget_eval}` at chance.", "",
          "| method | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for t in curves:
        by_budget = {c["budget"]: f"{c['forget_increase']:+.2f} / {c['retain_damage']:+.3f}" + (" †" if at_least_half(c["forget_at_chance"], c["runs"]) else "")
                     for c in t["per_budget"]}
        L.append(f"| {t['name']} | " + " | ".join(by_budget.get(b, "–") for b in budgets) + " |")

    L += ["", "## Chosen learning rates", "", "`*` = no setting kept validation damage under the bound (least damaging taken).", "",
          "| budget | " + " | ".join(res.methods) + " |", "|---|" + "---|" * len(res.methods)]
    choice = {(c["name"], c["budget"]): c for c in res.chosen["groups"] if c["lambda_retain"] == cfg.lambda_retain[0]}
    for b in budgets:
        cells = []
        for m in res.methods:
            c = choice.get((m, b))
            if c is None or c["lr"] is None:
                cells.append("–")
            else:
                cells.append(f"{c['lr']:g}" + (f" / {c['lora_alpha']:g}" if c["lora_alpha"] is not None else "") + ("" if c["feasible"] else " *"))
        L.append(f"| {b} | " + " | ".join(cells) + " |")
    if len(cfg.lambda_retain) > 1:
        L.append(f"\n(for λ = {cfg.lambda_retain[0]:g}; every λ's choice is in `chosen.json`)")

    L += ["", "## Forget vs retain per budget", "", "![tradeoff](tradeoff.png)", "",
          f"x: `{s.forget_eval}` CE increase, y: `{s.retain_eval}` CE increase (symlog), one point per chosen run; "
          "dotted: at chance; dashed: the damage bound. ([SVG](tradeoff.svg))"]

    L += ["", f"## Off-target CE increase at budget {largest}", "", "![off-target](off_target.png)", "",
          "Mean (min … max) over seeds, nats.", "", "| method | " + " | ".join(f"`{d}`" for d in cfg.eval_datasets) + " |",
          "|---|" + "---|" * len(cfg.eval_datasets)]
    for m in res.methods:
        mrows = [r for r in rows if r.name == m and r.budget == largest]
        if not mrows:
            continue
        cells = []
        for d in cfg.eval_datasets:
            v = [r.increase[d] for r in mrows]
            cells.append(f"{sum(v) / len(v):+.3f} ({min(v):+.2f} … {max(v):+.2f})")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L += ["", "Base model CE (nats/token): " + ", ".join(f"`{d}` {res.base['ce'][d]:.3f}" for d in cfg.eval_datasets)]

    if scalar_methods:
        L += ["", "## Learned scalars", "", "![scalars](scalars.png)", "",
              "The learned scalars of the chosen runs, counted per scalar: inverting (s < 0), suppressing (0 ≤ s ≤ 1), amplifying (s > 1).", "",
              "| method | budget | runs | scalars | inverting | suppressing | amplifying | median s |", "|---|---|---|---|---|---|---|---|"]
        for m in scalar_methods:
            for b in budgets:
                vals = sorted(v for r in rows if r.name == m and r.budget == b for v in r.final_scalars.values())
                if not vals:
                    continue
                n_runs = sum(1 for r in rows if r.name == m and r.budget == b)
                inv = sum(v < 0 for v in vals)
                amp = sum(v > 1 for v in vals)
                L.append(f"| {m} | {b} | {n_runs} | {len(vals)} | {inv} | {len(vals) - inv - amp} | {amp} | {statistics.median(vals):+.3g} |")

    if rollout_rows:
        L += ["", f"## Rollouts (greedy, {cfg.rollout.max_new_tokens} new tokens)", "",
              "Base model vs each method's chosen run at its largest budget (first λ, smallest seed), re-loaded from its saved edit.", "",
              rollouts_markdown(rollout_rows), ""]
    L += list(robust_md)

    L += ["", "## Config", "", "```yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(), "```", "",
          "## Versions", "", "| package | version |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in res.base["versions"].items()]
    return "\n".join(L) + "\n"


def _base(res, name: str) -> str:
    ce = res.base["ce"].get(name)
    return "n/a" if ce is None else f"{ce:.3f}"
