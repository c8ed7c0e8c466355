"""The study report: figures, tables and summary from a finished tiny sweep; the min-budget table."""

import json

import pytest
import torch
import yaml

from comptune.evaluation.rollouts import rollouts
from comptune.model.loading import load_model_and_tokenizer
from comptune.report import make_report, min_budget_table
from comptune.study.rows import RunRow
from comptune.study.sweep import run_sweep
from conftest import run_row
from test_study import assets, finished, sweep_config  # noqa: F401  (shared fixtures: tiny model, decomposition, sweep)

torch.set_num_threads(1)


def test_report_writes_figures_tables_and_summary(finished, tmp_path):  # noqa: F811
    config, results = finished
    out = tmp_path / "report"
    summary = make_report(results, out, log=lambda s: None)
    assert summary == out / "summary.md"
    for stem in ("tradeoff", "off_target", "scalars", "budget_curves"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{stem}.svg").read_text()
    text = summary.read_text()
    for section in ("## Methods", "## Minimum budget", "## Forget gain and damage per budget", "## Chosen learning rates",
        "## Off-target", "## Learned scalars", "## Rollouts", "## Config", "## Versions"):
        assert section in text, section
    assert "![tradeoff](tradeoff.png)" in text and "lora_r1" in text and "single" in text
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    # rollouts: base vs each method's chosen run at the largest budget, greedy, from the saved edit
    ro = json.loads((out / "rollouts.json").read_text())
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    by_id = {r["run_id"]: r for r in rows}
    assert set(ro["picked_runs"]) == {"single", "lora_r1"}
    for pick in ro["picked_runs"].values():
        r = by_id[pick["run_id"]]
        assert r["chosen"] and r["budget"] == max(config.budgets) and r["seed"] == min(config.seeds)
    assert [row["prompt"] for row in ro["rollouts"]] == list(config.rollout.prompts.values())
    base, tokenizer = load_model_and_tokenizer(config.model_dir())
    fresh = rollouts({"base": base}, tokenizer, list(config.rollout.prompts.values()), max_new_tokens=config.rollout.max_new_tokens)
    assert [row["continuations"]["base"] for row in ro["rollouts"]] == [row["continuations"]["base"] for row in fresh]

    # the min-budget table written beside agrees with the rows
    table = json.loads((out / "min_budget.json").read_text())["table"]
    assert table == min_budget_table([RunRow(**r) for r in rows if r["chosen"]], ["single", "lora_r1"], config.budgets)

    # the budget curves are the means of the chosen runs' scores
    curves = {t["name"]: t for t in json.loads((out / "budget_curves.json").read_text())["table"]}
    for m in ("single", "lora_r1"):
        for c in curves[m]["per_budget"]:
            rs = [r for r in rows if r["chosen"] and r["name"] == m and r["budget"] == c["budget"]]
            assert c["runs"] == len(rs) == len(config.seeds)
            assert c["forget_increase"] == pytest.approx(sum(r["score"]["forget_increase"] for r in rs) / len(rs))
            assert c["retain_damage"] == pytest.approx(sum(r["score"]["retain_damage"] for r in rs) / len(rs))


def run(name, budget, seed, success, lam=1.0, status="ok"):
    return run_row(name, budget, seed, lambda_retain=lam, status=status, forget_at_chance=success, success=success)


def test_min_budget_needs_half_the_seeds_at_some_lambda():
    rows = [
        # a: 1/3 seeds at budget 2, 2/3 at budget 4 → 4
        run("a", 2, 0, True), run("a", 2, 1, False), run("a", 2, 2, False),
        run("a", 4, 0, True), run("a", 4, 1, True), run("a", 4, 2, False),
        run("a", 8, 0, True), run("a", 8, 1, True), run("a", 8, 2, True),
        # b: fails at lambda 1 but succeeds for every seed at lambda 10 from budget 8; the failed run is not counted
        run("b", 2, 0, False), run("b", 2, 1, False),
        run("b", 8, 0, False), run("b", 8, 1, False), run("b", 8, 0, True, lam=10.0), run("b", 8, 1, True, lam=10.0),
        run("b", 8, 2, False, lam=10.0, status="non_finite"),
        # c: never
        run("c", 2, 0, False), run("c", 8, 0, False),
    ]
    table = {t["name"]: t for t in min_budget_table(rows, ["a", "b", "c", "d"], [2, 4, 8])}
    assert table["a"]["min_budget"] == 4
    assert table["a"]["per_budget"][0] == {"budget": 2, "succeeded": 1, "runs": 3, "lambda_retain": 1.0}
    assert table["b"]["min_budget"] == 8
    assert table["b"]["per_budget"] == [{"budget": 2, "succeeded": 0, "runs": 2, "lambda_retain": 1.0},
        {"budget": 8, "succeeded": 2, "runs": 2, "lambda_retain": 10.0}]
    assert table["c"]["min_budget"] is None
    assert table["d"] == {"name": "d", "min_budget": None, "per_budget": []}


def test_report_refuses_an_unfinished_sweep(assets, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="not a sweep directory"):
        make_report(tmp_path / "nothing", log=lambda s: None)
    out = tmp_path / "sweep"

    def kill(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_config(assets, methods=[dict(name="lora_r1", method="lora", lrs=[0.01])], budgets=[4]), out, on_run_done=kill, log=lambda s: None)
    with pytest.raises(FileNotFoundError, match=rf"has not finished .*run `comptune sweep CONFIG --out {out}` again"):
        make_report(out, log=lambda s: None)
    assert not (out / "report").exists()
    # a demo's folder names the command the user ran
    saved = yaml.safe_load((out / "sweep_config.yaml").read_text())
    (out / "sweep_config.yaml").write_text(yaml.safe_dump(saved | {"name": "demo"}))
    with pytest.raises(FileNotFoundError, match=rf"run `comptune demo --out {out}` again to complete it"):
        make_report(out, log=lambda s: None)


def test_report_robustness_section_attacks_each_chosen_edit_once(finished, tmp_path):  # noqa: F811
    from comptune.corpus.bundle import bundled_texts

    config, results = finished
    attack_text = tmp_path / "de_attack.txt"
    attack_text.write_text("\n".join(bundled_texts("valid.de")[:3])[:4000])  # German the edits never saw, nor the evaluation
    overrides = {"attack_data": str(attack_text), "tokens": [16], "attackers": ["full"], "lrs": [1e-3], "max_steps": 4, "eval_every": 2,
                 "quantisations": ["int8"], "doses": [0.0, 0.5, 1.0]}
    with pytest.raises(ValueError, match=r"no chosen runs at budget\(s\) \[5\]"):
        make_report(results, tmp_path / "bad", rollouts=False, robustness_budgets=[5], robustness_config=overrides, log=lambda s: None)
    summary = make_report(results, tmp_path / "r1", rollouts=False, robustness_budgets=[8], robustness_config=overrides, log=lambda s: None)
    text = summary.read_text()
    assert "## Robustness of the chosen edits" in text and "![robustness](robustness.png)" in text
    table = json.loads((tmp_path / "r1" / "robustness.json").read_text())["table"]
    assert {(r["name"], r["budget"]) for r in table} == {("single", 8), ("lora_r1", 8)}
    rows = {r["run_id"]: r for r in (json.loads(line) for line in (results / "results.jsonl").read_text().splitlines())}
    cached = sorted((results / "robustness").glob("*/run-*.json"))
    assert len(cached) == 2
    for path in cached:
        rec = json.loads(path.read_text())
        run = rows[rec["run"]["run_id"]]
        assert run["chosen"] and run["budget"] == 8 and run["seed"] == min(config.seeds)
        res = rec["result"]
        # the attack measured the same edit the sweep did: its held-out target CE increase, on the study's own blocks
        assert res["removed"] == pytest.approx(run["increase"][config.scoring.forget_eval], abs=1e-4)
        assert [d["t"] for d in res["dose"]] == [0.0, 0.5, 1.0] and res["relearning"][0]["curve"]["steps"] == [0, 2, 4]
    stamps = [p.stat().st_mtime_ns for p in cached]
    # without --robustness the cached results are shown again, and nothing is recomputed
    text2 = make_report(results, tmp_path / "r2", rollouts=False, log=lambda s: None).read_text()
    assert "## Robustness of the chosen edits" in text2
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    # a cached record of a run that is no longer a pick (a grown study chose another lr) is not shown
    from comptune.report.robustness import cached_robustness
    from comptune.report.summary import load_results

    stale = json.loads(cached[0].read_text())
    stale["run"]["run_id"] = "0" * 16
    (cached[0].parent / "run-stale.json").write_text(json.dumps(stale))
    try:
        _, records = cached_robustness(load_results(results))
        assert sorted(r["run"]["run_id"] for r in records) == sorted(json.loads(p.read_text())["run"]["run_id"] for p in cached)
    finally:
        (cached[0].parent / "run-stale.json").unlink()


def test_demo_builds_a_browser_for_its_study(finished, tmp_path):  # noqa: F811
    import shutil

    from comptune.browse.site import MARKER
    from comptune.demo import build_demo_site
    from comptune.report.summary import load_results, rollout_picks

    config, results = finished
    study = tmp_path / "study"
    shutil.copytree(results, study)
    site = build_demo_site(study, config, log=lambda s: None)
    assert site == study / "browse" / "index.html" and site.is_file()
    meta = json.loads((study / "browse" / MARKER).read_text())
    picks = rollout_picks(load_results(study))
    assert len(meta["config"]["edits"]) == len(picks) > 0
    assert len(list((study / "browse" / "data" / "edits").glob("*.js"))) == len(picks)
