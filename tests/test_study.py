"""The unlearning sweep: end to end on a tiny model/decomposition/tokenizer, lr choice on
validation data, resuming after a kill, bad input."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from comptune.corpus.bundle import bundled_texts
from comptune.decomposition import CIConfig, Decomposition
from comptune.evaluation.ce import evaluate_ce
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.study.config import Scoring, SweepConfig
from comptune.study.rows import RunRow, read_chosen, row_json
from comptune.study.rows import read_rows as read_run_rows
from comptune.study.sweep import choose_settings, load_inputs, run_sweep
from comptune.tokenizer import train_tokenizer
from comptune.tuning.edits import load_edit
from conftest import run_row

torch.set_num_threads(1)

LANG_SETS = {"de": "train.de", "en": "train.en", "fr": "train.fr", "code": "train.code"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Text files, a tiny tokenizer + model saved as an HF dir, and a tiny decomposition of it."""
    root = tmp_path_factory.mktemp("assets")
    texts = {lang: "\n".join(bundled_texts(name)[:2])[:6000] for lang, name in LANG_SETS.items()}
    for lang, text in texts.items():
        half = len(text) // 2
        (root / f"{lang}_train.txt").write_text(text[:half])
        (root / f"{lang}_heldout.txt").write_text(text[half:])
    tokenizer = train_tokenizer(texts.values(), vocab_size=400)
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=len(tokenizer), n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)).eval()
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(1)
    decomposition = Decomposition.create(model, {"h.*.attn.v_proj": 6, "h.1.mlp.c_fc": 6}, ci=CIConfig(type="layerwise_mlp", hidden_dims=[4]))
    decomposition.save(root / "decomposition")
    return root


def sweep_config(root: Path, **overrides) -> SweepConfig:
    f = lambda name: str(root / f"{name}.txt")  # noqa: E731
    data = dict(
        name="tiny",
        model=str(root / "model"),
        decomposition=str(root / "decomposition"),
        forget=f("de_train"),
        retain=f("en_train"),
        eval_datasets=[f("de_heldout"), f("en_heldout"), f("fr_heldout"), f("code_heldout")],
        scoring=dict(forget_eval=f("de_heldout"), retain_eval=f("en_heldout"), forget_valid=f("de_train"), retain_valid=f("fr_train")),
        selection_data=dict(target=f("de_train"), reference=f("en_train"), protected=[f("en_train"), f("fr_train")], block_len=16, max_blocks=4, show_top=3),
        methods=[
            dict(name="single", method="component_scale", select=dict(rank="specificity", top=1), lrs=[0.01, 0.3]),
            dict(name="lora_r1", method="lora", lora_rank=1, lrs=[0.001, 0.03]),
        ],
        budgets=[4, 8],
        seeds=[0],
        train=dict(seq_len=16, retain_batch_size=2, patience=3, max_steps=4),
        eval=dict(block_len=16, max_blocks=3, batch_size=4),
        rollout=dict(prompts={"de": "Die Datei", "en": "The file"}, max_new_tokens=3),
    )
    data.update(overrides)
    return SweepConfig.model_validate(data)


@pytest.fixture(scope="module")
def finished(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    config = sweep_config(assets)
    run_sweep(config, out, log=lambda s: None)
    return config, out


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_after(n: int, seen: list):
    """An on_run_done hook recording run ids into `seen` and interrupting after the n-th (a killed driver)."""
    def hook(row):
        seen.append(row.run_id)
        if len(seen) == n:
            raise KeyboardInterrupt("killed")
    return hook


def assert_same_rows(out: Path, serial_out: Path) -> None:
    """The sweep in `out` finished the runs of the serial sweep in `serial_out`, with the same results and edits."""
    serial = {r["run_id"]: r for r in read_rows(serial_out / "results.jsonl")}
    rows = {r["run_id"]: r for r in read_rows(out / "results.jsonl")}
    assert rows.keys() == serial.keys() and len(read_rows(out / "runs.jsonl")) == len(serial)
    for rid, row in rows.items():
        assert row["steps"] == serial[rid]["steps"] and row["chosen"] == serial[rid]["chosen"]
        assert row["ce"] == pytest.approx(serial[rid]["ce"], abs=1e-4)
        assert row["final_scalars"] == pytest.approx(serial[rid]["final_scalars"], abs=1e-4)
        if row["chosen"]:
            assert sorted(p.name for p in (out / row["edit"]).iterdir()) == sorted(p.name for p in (serial_out / row["edit"]).iterdir())


def test_sweep_writes_one_row_per_run_and_chooses_on_validation(finished):
    """SEMANTICS S7.1."""
    config, out = finished
    for name in ("sweep_config.yaml", "selection.json", "base_ce.json", "runs.jsonl", "chosen.json", "results.jsonl"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == config.n_runs() == 2 * 2 * 2
    assert len({r["run_id"] for r in rows}) == len(rows)
    assert {(r["name"], r["budget"], r["lr"]) for r in rows} == {(m, b, lr) for m, lrs in (("single", (0.01, 0.3)), ("lora_r1", (0.001, 0.03)))
        for b in (4, 8) for lr in lrs}
    base = json.loads((out / "base_ce.json").read_text())
    for r in rows:
        assert r["status"] == "ok" and r["forget_tokens"] == r["budget"] and 1 <= r["steps"] <= 4
        assert set(r["ce"]) == set(config.eval_datasets) and set(r["valid_ce"]) == {config.scoring.forget_valid, config.scoring.retain_valid}
        for d, ce in r["ce"].items():
            assert r["increase"][d] == pytest.approx(ce - base["ce"][d])
        assert r["versions"]["torch"] == torch.__version__
        assert len(r["final_scalars"]) == (1 if r["name"] == "single" else 0)
        assert r["method"] == ("component_scale" if r["name"] == "single" else "lora")  # the tuning method, as TuneConfig names it
    # the single key is the top of the specificity ranking saved in selection.json
    sel = json.loads((out / "selection.json").read_text())["methods"]["single"]
    assert sel["selection"]["keys"] == [sel["ranking"][0][0]] and len(sel["ranking"]) == 3
    assert all(r["final_scalars"].keys() == set(sel["selection"]["keys"]) for r in rows if r["name"] == "single")

    # exactly one chosen lr per (method, budget), and it is what the rule gives on the validation scores
    chosen = [r for r in rows if r["chosen"]]
    assert sorted((r["name"], r["budget"]) for r in chosen) == sorted((m, b) for m in ("single", "lora_r1") for b in (4, 8))
    expected = {(c["name"], c["budget"]): c["lr"] for c in choose_settings([RunRow(**r) for r in rows], config.scoring)}
    assert all(expected[(r["name"], r["budget"])] == r["lr"] for r in chosen)
    groups = json.loads((out / "chosen.json").read_text())["groups"]
    assert {(g["name"], g["budget"]): g["lr"] for g in groups} == expected

    # only the chosen runs keep their edit, and re-applying it reproduces the run's evaluation
    assert sorted(p.name for p in (out / "edits").iterdir()) == sorted(r["run_id"] for r in chosen)
    inputs = load_inputs(config)
    for r in chosen:
        edited = load_edit(out / r["edit"], copy.deepcopy(inputs.model))
        ce = evaluate_ce(edited, {d: inputs.eval_blocks[d] for d in config.eval_datasets[:2]}, batch_size=4).ce
        for d, v in ce.items():
            assert v == pytest.approx(r["ce"][d], abs=1e-5)


def row(name, budget, seed, lr, gain, damage, *, status="ok", alpha=None, held_out_forget=0.0):
    return run_row(name, budget, seed, lr=lr, alpha=alpha, status=status, valid_forget_gain=gain, valid_damage=damage,
                   forget_increase=held_out_forget)


def test_a_row_reads_back_as_written_and_earlier_rows_read_in_todays_names(finished):
    """One typed row for the sweep and the report: what the sweep writes validates as `RunRow` and
    dumps back to the same JSON; rows and chosen.json of the committed study, written when the label
    was "method" and the tuning method "kind", read with both under today's names."""
    _, out = finished
    for r in read_rows(out / "results.jsonl"):
        assert row_json(RunRow.model_validate(r)) == r
    earlier = {"run_id": "x", "method": "single_ci_gated", "kind": "component_scale", "budget": 4, "seed": 0, "lambda_retain": 1.0,
               "lr": 0.1, "lora_alpha": None, "tune_config": {}, "status": "non_finite", "error": "nan", "steps": 3}
    assert (RunRow.model_validate(earlier).name, RunRow.model_validate(earlier).method) == ("single_ci_gated", "component_scale")
    with pytest.raises(ValueError, match="scroe"):
        RunRow.model_validate(earlier | {"scroe": {}})  # a misspelt field is refused, not dropped
    study = Path(__file__).resolve().parents[1] / "studies" / "study-v2"
    rows = read_run_rows(study / "results.jsonl")
    assert {r.name for r in rows} >= {"single", "single_ci_gated", "lora_r1"} and {r.method for r in rows} >= {"component_scale", "lora"}
    chosen_ids = {rid for g in read_chosen(json.loads((study / "chosen.json").read_text()))["groups"] for rid in g["run_ids"]}
    assert chosen_ids == {r.run_id for r in rows if r.chosen}


def test_choice_rule_uses_validation_scores_only():
    """SEMANTICS S7.1."""
    s = Scoring(max_damage=0.1, tie_tolerance=0.01)
    rows = [
        # best validation gain but too much validation damage, even though its held-out score is best
        row("m", 4, 0, 0.1, gain=5.0, damage=0.2, held_out_forget=9.0),
        row("m", 4, 1, 0.1, gain=5.0, damage=0.2, held_out_forget=9.0),
        # two feasible settings tied on gain (within tolerance): the less damaging one wins
        row("m", 4, 0, 0.03, gain=3.000, damage=0.05), row("m", 4, 1, 0.03, gain=3.004, damage=0.07),
        row("m", 4, 0, 0.01, gain=3.002, damage=0.02), row("m", 4, 1, 0.01, gain=3.002, damage=0.02),
        # a feasible setting clearly below the best gain
        row("m", 4, 0, 0.003, gain=1.0, damage=0.0), row("m", 4, 1, 0.003, gain=1.0, damage=0.0),
        # group 2: nothing feasible → least damaging; a setting that diverged on one seed is no candidate
        row("m", 8, 0, 0.1, gain=4.0, damage=0.5), row("m", 8, 1, 0.1, gain=4.0, damage=0.3),
        row("m", 8, 0, 0.01, gain=1.0, damage=0.2), row("m", 8, 1, 0.01, gain=1.0, damage=0.2),
        row("m", 8, 0, 0.003, gain=0.0, damage=0.0), row("m", 8, 1, 0.003, gain=0.0, damage=0.0, status="non_finite"),
    ]
    c4, c8 = choose_settings(rows, s)
    assert (c4["budget"], c4["lr"], c4["feasible"]) == (4, 0.01, True)
    assert sorted(c4["run_ids"]) == ["m-4-0-0.01", "m-4-1-0.01"]
    assert (c8["budget"], c8["lr"], c8["feasible"]) == (8, 0.01, False)


def test_killed_sweep_resumes_without_duplicates(assets, tmp_path):
    """SEMANTICS S7.1."""
    config = sweep_config(assets)
    out = tmp_path / "sweep"
    first = []
    logged = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, out, on_run_done=kill_after(3, first), log=logged.append)
    assert len(read_rows(out / "runs.jsonl")) == 3
    # the expected duration comes before the first run
    expected = next(i for i, line in enumerate(logged) if line.startswith("expected: at most "))
    assert expected < next(i for i, line in enumerate(logged) if line.startswith("[1/"))
    assert not (out / "results.jsonl").exists()
    # a writer killed mid-line leaves a partial trailing line; it is neither read nor kept
    with open(out / "runs.jsonl", "a") as f:
        f.write('{"run_id": "half-writ')

    second = []
    run_sweep(config, out, on_run_done=lambda r: second.append(r.run_id), log=lambda s: None)
    assert len(second) == config.n_runs() - 3 and not set(first) & set(second)
    runs = read_rows(out / "runs.jsonl")  # every line parses: the partial line was cut off
    assert len(runs) == config.n_runs() and len({r["run_id"] for r in runs}) == len(runs)
    assert [r["run_id"] for r in runs[:3]] == first
    assert len(read_rows(out / "results.jsonl")) == config.n_runs()

    # re-running a finished sweep runs nothing and changes no row
    third = []
    run_sweep(config, out, on_run_done=lambda r: third.append(r), log=lambda s: None)
    assert third == [] and read_rows(out / "runs.jsonl") == runs

    # the same directory with another config is refused: a changed grid, or fewer seeds
    with pytest.raises(ValueError, match="different config"):
        run_sweep(sweep_config(assets, train=dict(seq_len=16, retain_batch_size=2, patience=3, max_steps=5)), out, log=lambda s: None)
    with pytest.raises(ValueError, match="without removing any"):
        run_sweep(sweep_config(assets, seeds=[1]), out, log=lambda s: None)


def test_ctrl_c_stops_a_parallel_sweep_in_one_line_and_its_workers_with_it(assets, tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: exit 130, one line saying what was
    kept and the command that resumes, no traceback from the parent or the workers."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "tiny.yaml"
    # runs long enough (seconds each) that the sweep is still running when the signal comes
    config.write_text(yaml.safe_dump(sweep_config(assets, train=dict(seq_len=16, retain_batch_size=2, patience=10**5, max_steps=2000)).model_dump(mode="json")))
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from comptune.cli import main; sys.exit(main())", "sweep", str(config), "--out", str(out), "--workers", "2"]
    # SIGINT at its default in the child: a test run started in the background by a non-interactive
    # shell inherits it ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "runs.jsonl").exists() and (out / "runs.jsonl").read_text().strip()):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("comptune sweep: interrupted; every finished run is kept") and f"resume with: comptune sweep {config}" in last
    for _ in range(40):  # the workers (and multiprocessing's resource tracker) exit within moments
        left = subprocess.run(["pgrep", "-a", "-s", str(proc.pid)], capture_output=True, text=True).stdout.strip()
        if not left:
            break
        time.sleep(0.25)
    assert left == ""  # no worker left behind


def test_sweep_grows_with_more_seeds(finished, tmp_path):
    """SEMANTICS S7.2. Adding seeds to a finished sweep trains only the new runs; the old rows stay as they were."""
    config, results = finished
    out = tmp_path / "grown"
    shutil.copytree(results, out)
    old = read_rows(out / "runs.jsonl")
    grown = sweep_config(Path(config.model).parent, seeds=[0, 1])
    new = []

    def kill_after_one(row):
        new.append(row)
        if len(new) == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grown, out, on_run_done=kill_after_one, log=lambda s: None)
    assert not (out / "results.jsonl").exists() and not (out / "chosen.json").exists()  # unfinished again
    run_sweep(grown, out, on_run_done=new.append, log=lambda s: None)
    assert len(new) == grown.n_runs() - config.n_runs() and {r.seed for r in new} == {1}
    runs = read_rows(out / "runs.jsonl")
    assert runs[: len(old)] == old and len(runs) == grown.n_runs()
    chosen = json.loads((out / "chosen.json").read_text())["groups"]
    assert all(len(c["run_ids"]) == 2 for c in chosen)  # every choice averages both seeds now
    assert yaml.safe_load((out / "sweep_config.yaml").read_text())["seeds"] == [0, 1]


def test_parallel_workers_give_the_serial_rows(finished, tmp_path):
    config, serial_out = finished
    out = tmp_path / "parallel"
    run_sweep(config, out, workers=2, log=lambda s: None)
    assert_same_rows(out, serial_out)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_sweep(config, tmp_path / "none", workers=0, log=lambda s: None)


def test_bad_input_gives_clear_errors_and_no_files(assets, tmp_path):
    (assets / "empty.txt").write_text("  \n")
    cases = [
        (dict(retain=str(assets / "empty.txt")), "no non-empty text"),
        (dict(budgets=[4, 10**6]), "budget of 1000000 forget tokens"),
        (dict(seeds=list(range(5000))), "seed"),
        (dict(model=str(assets / "missing")), "does not exist"),
    ]
    for i, (overrides, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            run_sweep(sweep_config(assets, **overrides), out, log=lambda s: None)
        assert not out.exists()
    with pytest.raises(ValueError, match="extra"):
        sweep_config(assets, learning_rates=[0.1])
    with pytest.raises(ValueError, match="also an evaluation set"):
        sweep_config(assets, scoring=dict(forget_eval=str(assets / "de_heldout.txt"), retain_eval=str(assets / "en_heldout.txt"),
                                          forget_valid=str(assets / "de_heldout.txt")))
    with pytest.raises(ValueError, match="must name a method listed before it"):
        sweep_config(assets, methods=[dict(name="local", method="lora_local", select=dict(modules_of="single"), lrs=[0.01])])


def test_a_failed_start_leaves_nothing_that_refuses_its_fix(assets, tmp_path):
    """Setup that fails after the inputs load (here: the selection) removes what it wrote, so the
    corrected config runs in the same --out."""
    out = tmp_path / "out"
    single = dict(name="single", method="component_scale", lrs=[0.1])
    bad = sweep_config(assets, methods=[single | dict(select=dict(rank="specificity", top=1000))], budgets=[4])
    with pytest.raises(ValueError, match="top 1000"):
        run_sweep(bad, out, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
    fixed = sweep_config(assets, methods=[single | dict(select=dict(rank="specificity", top=1))], budgets=[4])
    run_sweep(fixed, out, log=lambda s: None)
    assert yaml.safe_load((out / "sweep_config.yaml").read_text())["methods"][0]["select"]["top"] == 1


def test_presets_load_and_agree():
    """`comptune demo` and `comptune demo --full` read configs/*.yaml; full is the write-up's protocol."""
    from comptune.demo import configs_dir, preset_config

    demo, full = preset_config(False), preset_config(True)
    assert full.budgets == [2, 4, 8, 16, 32, 64, 128, 512, 2048] and len(full.seeds) == 9
    assert (full.train.patience, full.train.max_steps) == (300, 3000)
    assert all(m.lrs == [0.003, 0.01, 0.03, 0.1] for m in full.methods)
    assert all(m.alphas == [16, 32] for m in full.methods if m.method in ("lora", "lora_local"))
    assert {m.name for m in demo.methods} <= {m.name for m in full.methods}
    # the study this machine runs (README figures) keeps every budget and method of the full one
    study = SweepConfig.from_file(configs_dir() / "study.yaml")
    assert study.budgets == full.budgets and [m.name for m in study.methods] == [m.name for m in full.methods]
    # every other shipped config parses as what it configures (unknown keys would be an error)
    from comptune.decomposition.train import DecomposeConfig
    from comptune.evaluation.robustness import AttackConfig
    from comptune.model.pretrain import PretrainConfig

    kinds = {"pretrain": PretrainConfig, "decompose": DecomposeConfig, "robustness": AttackConfig}
    for path in sorted((configs_dir()).glob("*.yaml")):
        kind = kinds.get(path.stem.split("-")[0])
        if kind is DecomposeConfig:  # a decompose config refines a preset
            from comptune.decomposition.cli import _load_config

            assert _load_config("small", path).steps > 0, path
        elif kind is not None:
            kind.from_file(path)
        elif path.name not in ("demo.yaml", "full.yaml"):
            assert SweepConfig.from_file(path).n_runs() > 0, path


def test_selection_in_every_basis(assets):
    """Component keys from the CI ranking; neuron and SVD units ranked by write magnitude; lora_local
    and SVD-scale restricted to the single key's matrix; every resolved selection trains."""
    from comptune.decomposition.bases import neuron_components
    from comptune.study.selection import resolve_selections, write_magnitudes
    from comptune.study.sweep import plan_runs
    from comptune.tuning import tune

    config = sweep_config(assets, methods=[
        dict(name="single", method="component_scale", select=dict(rank="specificity", top=1), lrs=[0.1]),
        dict(name="local", method="lora_local", select=dict(modules_of="single"), lrs=[0.01]),
        dict(name="svd", method="svd_scale", select=dict(modules_of="single", rank="difference", top=2), lrs=[0.1]),
        dict(name="neurons", method="neuron_scale", select=dict(rank="difference", top=3), lrs=[0.1]),
        dict(name="fixed", method="component_scale", select=dict(keys=["h.1.mlp.c_fc:2"]), lrs=[0.1]),
    ], budgets=[4])
    inputs = load_inputs(config)
    sel = resolve_selections(config, inputs.model, inputs.tokenizer, inputs.decomposition, log=lambda s: None)
    module = sel["single"]["selection"]["keys"][0].rpartition(":")[0]
    assert sel["local"]["selection"]["modules"] == [module]
    assert all(k.startswith(module + ":") for k in sel["svd"]["selection"]["keys"])
    assert all(k.rpartition(":")[0] in ("h.0.mlp.down_proj", "h.1.mlp.down_proj") for k in sel["neurons"]["selection"]["keys"])
    assert sel["fixed"]["selection"]["keys"] == ["h.1.mlp.c_fc:2"]
    for name in ("single", "svd", "neurons"):
        scores = [v for _, v in sel[name]["ranking"]]
        assert scores == sorted(scores, reverse=True)
        assert sel[name]["selection"]["keys"] == [k for k, _ in sel[name]["ranking"][: len(sel[name]["selection"]["keys"])]]

    # the neuron write magnitude is mean |h_j| · ‖W[:, j]‖ over every position
    blocks = inputs.eval_blocks[config.eval_datasets[0]]
    hidden = []
    hook = inputs.model.h[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: hidden.append(a[0].detach()))
    with torch.no_grad():
        inputs.model(input_ids=blocks)
    hook.remove()
    expected = hidden[0].abs().flatten(0, 1).mean(0) * inputs.model.h[1].mlp.down_proj.weight.norm(dim=0)
    got = write_magnitudes(inputs.model, neuron_components(inputs.model, ["h.1.mlp.down_proj"]), {"d": blocks}).values["h.1.mlp.down_proj"][0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)

    for spec in plan_runs(config, sel):
        _, result = tune(spec.tune_config, copy.deepcopy(inputs.model), inputs.forget_stream, inputs.retain_stream, inputs.decomposition)
        assert result.steps >= 1 and len(result.final_scalars) == {"single": 1, "local": 0, "svd": 2, "neurons": 3, "fixed": 1}[spec.name]


def test_selection_by_scan_on_validation_data(assets):
    """SEMANTICS S3.3. `rank: scan` keeps the candidates with the largest validation forget gain within the damage
    bound — the same figures an independent dose scan of those candidates gives; neuron_single and a
    CI-gated single key are configs of the existing methods."""
    from comptune.corpus.datasets import sample_blocks
    from comptune.decomposition.bases import neuron_components
    from comptune.inspection.scan import DoseScanner, dose_scan
    from comptune.study.selection import resolve_selections

    config = sweep_config(assets, methods=[
        dict(name="single", method="component_scale", select=dict(rank="scan", top=1, candidates=2), lrs=[0.1]),
        dict(name="single_ci_gated", method="component_scale", select=dict(modules_of="single", rank="scan", top=1, candidates=2),
             ci_threshold=0.1, lrs=[0.1]),
        dict(name="neuron_single", method="neuron_scale", select=dict(rank="scan", top=1, candidates=3), lrs=[0.1]),
    ], budgets=[4], selection_data=dict(target=str(assets / "de_train.txt"), reference=str(assets / "en_train.txt"),
                                        protected=[str(assets / "en_train.txt")], block_len=16, max_blocks=4, show_top=3, scan_blocks=3))
    inputs = load_inputs(config)
    sel = resolve_selections(config, inputs.model, inputs.tokenizer, inputs.decomposition, log=lambda s: None)
    sc = config.scoring
    valid = {n: sample_blocks(n, inputs.tokenizer, 16, 3) for n in (sc.forget_valid, sc.retain_valid)}
    for name in ("single", "neuron_single"):
        scanned = sel[name]["scan"]
        assert sel[name]["selection"]["keys"] == [scanned[0]["key"]]
        assert [r["best_gain"] for r in scanned] == sorted((r["best_gain"] for r in scanned), reverse=True)
        assert all(r["best_damage"] <= sc.max_damage for r in scanned)
    path = sel["neuron_single"]["selection"]["keys"][0].rpartition(":")[0]
    again = dose_scan(DoseScanner(inputs.model, neuron_components(inputs.model, [path]), valid), sel["neuron_single"]["selection"]["keys"],
                      target=sc.forget_valid, reference=sc.retain_valid, bound=sc.max_damage)
    assert again[0].best_gain == pytest.approx(sel["neuron_single"]["scan"][0]["best_gain"], abs=1e-6)
    gated_module = sel["single_ci_gated"]["selection"]["keys"][0].rpartition(":")[0]
    assert gated_module == sel["single"]["selection"]["keys"][0].rpartition(":")[0]

    with pytest.raises(ValueError, match="raise select.candidates"):
        resolve_selections(sweep_config(assets, methods=[dict(name="s", method="neuron_scale", select=dict(rank="scan", top=99, candidates=1), lrs=[0.1])]),
                           inputs.model, inputs.tokenizer, inputs.decomposition, log=lambda s: None)
    # the scan reads validation data; a validation set that is also evaluated is refused
    with pytest.raises(ValueError, match="is also an evaluation set"):
        sweep_config(assets, scoring=dict(forget_eval=str(assets / "de_heldout.txt"), retain_eval=str(assets / "en_heldout.txt"),
                                          forget_valid=str(assets / "de_heldout.txt"), retain_valid=str(assets / "fr_train.txt")))
