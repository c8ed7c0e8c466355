"""The unlearning sweep: methods × budgets × seeds × lambda × lr (× LoRA alpha), resumable.

Out directory layout:

    sweep_config.yaml   the config (a re-run with a different config in the same dir is refused)
    selection.json      each method's resolved selection and the rankings it came from
    base_ce.json        the base model's CE on every evaluation/validation set (computed once)
    runs.jsonl          one row per finished run (`study.rows.RunRow`), appended as one complete line (resume log)
    edits/<run_id>/     the saved edit of every chosen run (ComponentScale adapter or peft adapter)
    chosen.json         the (lr, alpha) chosen per (name, budget, lambda) on validation data
    results.jsonl       the final rows, each with `chosen`, written when the sweep is complete

Workers: `workers=N` runs N runs at a time in spawned processes with one torch thread each (the
parent keeps all bookkeeping and is the only writer of runs.jsonl). Runs are independent and
seeded, so the rows do not depend on N beyond float rounding across thread counts.

Resuming: a run's id is a hash of its full TuneConfig and the method entry's name; runs whose row is already
in runs.jsonl are skipped, a trailing partial line (killed writer) is cut off before appending.

Growing: a finished (or unfinished) sweep may be re-run with more `seeds` or `budgets` and no other
change; only the new runs train. Until they are done the sweep is unfinished again (results.jsonl
and chosen.json are removed; runs.jsonl keeps every row). Edits of runs that were not chosen are
deleted as groups complete, so if the extra seeds change a group's choice, the earlier seeds of the
new choice have rows but no saved edit.

Learning-rate choice (per method entry, budget and lambda; never on the evaluation sets): for every
(lr, alpha) average over seeds the *validation* forget gain min(CE, ln|V|) − CE_base on
`scoring.forget_valid` and the validation damage on `scoring.retain_valid`. Among settings whose
mean damage is below `scoring.max_damage`, keep those within `tie_tolerance` of the best forget
gain and take the least damaging (then the smaller lr). If no setting stays under the damage
bound, take the least damaging one (`feasible: false` in chosen.json).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import multiprocessing
import shutil
import signal
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import yaml

from .._io import append_jsonl, atomic_directory, versions, write_json_atomic, write_text_atomic
from ..corpus.datasets import sample_blocks
from ..errors import UserError
from ..model.loading import context_length
from ..tuning import NonFiniteLossError, Selection, TuneConfig, take_budget, tune
from ..tuning.edits import edited_lm
from .config import LORA_METHODS, SweepConfig
from .rows import RunRow, RunScore, read_rows, row_json
from .selection import resolve_selections

Log = Callable[[str], None]


@dataclass
class StudyInputs:
    """Everything a sweep reads, loaded and checked before any file is written."""

    model: nn.Module  # the pristine base model; every run edits a deep copy
    tokenizer: object
    decomposition: object | None
    forget_stream: torch.Tensor  # [N] token ids
    retain_stream: torch.Tensor  # [M] token ids
    eval_blocks: dict[str, torch.Tensor]  # name -> [n, block_len]; evaluation then validation sets
    vocab_size: int

    @property
    def chance(self) -> float:
        return math.log(self.vocab_size)


@dataclass
class RunSpec:
    run_id: str
    name: str  # MethodSpec.name
    tune_config: TuneConfig

    @property
    def group(self) -> tuple[str, int, float]:
        c = self.tune_config
        return (self.name, c.budget, c.lambda_retain)


def load_inputs(config: SweepConfig, device: torch.device | str | None = None) -> StudyInputs:
    """Load model, tokenizer, decomposition and token data; raise on anything the sweep cannot run with.
    The model (and the decomposition) go to `device` (default: the CPU); token data stays on the CPU."""
    from ..corpus.datasets import dataset_texts
    from ..corpus.loading import token_stream
    from ..model.loading import load_model_and_tokenizer

    model_dir = config.model_dir()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist (config `model`: {config.model})")
    model, tokenizer = load_model_and_tokenizer(model_dir, device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    decomposition = None
    if (ddir := config.decomposition_dir()) is not None:
        from ..decomposition import Decomposition

        if not ddir.is_dir():
            raise FileNotFoundError(f"decomposition directory {ddir} does not exist (config `decomposition`: {config.decomposition})")
        # the decomposition hooks its own copy of the target, so the base model every run copies stays hook-free
        decomposition = Decomposition.load(ddir, copy.deepcopy(model))

    n_ctx = context_length(model)
    lengths = {"train.seq_len": config.train.seq_len, "eval.block_len": config.eval.block_len,
               "selection_data.block_len": config.selection_data.block_len}
    for what, length in lengths.items():
        if n_ctx is not None and length > n_ctx:
            raise UserError(f"{what}={length} exceeds the model's context of {n_ctx} tokens; lower it")

    forget_stream = token_stream(tokenizer, dataset_texts(config.forget))
    retain_stream = token_stream(tokenizer, dataset_texts(config.retain))
    if retain_stream.numel() < 2:
        raise UserError(f"the retain set {config.retain!r} is empty ({retain_stream.numel()} tokens): the KL term needs retain text to protect")
    for budget in config.budgets:  # the largest seed needs the most disjoint blocks
        take_budget(forget_stream, budget, max(config.seeds))

    s, e = config.scoring, config.eval
    eval_blocks = {}
    for name in [*config.eval_datasets, s.forget_valid, s.retain_valid]:
        eval_blocks[name] = sample_blocks(name, tokenizer, e.block_len, e.max_blocks)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    return StudyInputs(model, tokenizer, decomposition, forget_stream, retain_stream, eval_blocks, vocab_size)


def plan_runs(config: SweepConfig, selections: dict[str, dict]) -> list[RunSpec]:
    """Every run of the sweep, grouped: budget, then method, then lambda; inside a group seed, lr, alpha."""
    runs = []
    for budget in config.budgets:
        for spec in config.methods:
            sel = selections[spec.name]["selection"]
            for lam in config.lambda_retain:
                for seed in config.seeds:
                    for lr in spec.lrs:
                        for alpha in spec.alphas if spec.method in LORA_METHODS else [None]:
                            cfg = tune_config(config, spec, sel, budget=budget, seed=seed, lr=lr, alpha=alpha, lambda_retain=lam)
                            runs.append(RunSpec(run_id(spec.name, cfg), spec.name, cfg))
    return runs


def tune_config(config: SweepConfig, spec, selection: dict | None, *, budget: int, seed: int, lr: float,
                alpha: float | None, lambda_retain: float, **train_overrides) -> TuneConfig:
    """The TuneConfig of one run of method `spec` (a MethodSpec) with its resolved `selection`."""
    lora = {"lora_rank": spec.lora_rank, "lora_alpha": alpha} if alpha is not None else {}
    return TuneConfig(
        method=spec.method,
        selection=Selection(**selection) if selection else Selection(),
        budget=budget, seed=seed, lr=lr, **lora,
        lambda_retain=lambda_retain, l1=spec.l1, ci_threshold=spec.ci_threshold,
        **(config.train.model_dump() | train_overrides),
    )


def run_id(name: str, cfg: TuneConfig) -> str:
    """Deterministic id of a run: same method entry name and TuneConfig → same id, across processes."""
    # the key is "method" for the name, as it was when the committed studies' ids were made
    blob = json.dumps({"method": name, "tune": cfg.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the sweep
def run_sweep(
    config: SweepConfig,
    out_dir: str | Path,
    *,
    inputs: StudyInputs | None = None,
    workers: int = 1,
    ray: str | bool = False,
    device: torch.device | str | None = None,
    on_run_done: Callable[[RunRow], None] | None = None,
    log: Log = print,
) -> Path:
    """Run (or resume) the sweep into `out_dir`; returns the path of results.jsonl.

    `workers`: runs at a time (see the module doc). `ray`: run each run as a Ray task instead, on
    a local Ray cluster (True) or the one at this address (`study.ray_backend`; a task with
    `resources.gpus_per_run` runs on its GPU). `device`: where local runs train (default: the CPU;
    results do not depend on it beyond float rounding). `on_run_done(row)` is called after each new
    row is written (progress hooks, tests)."""
    if ray:
        from .ray_backend import connect

        connect(None if ray is True else ray, num_cpus=workers if workers > 1 else None)  # before anything is written
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    if workers > 1 and inputs is not None and not ray:
        raise UserError("with workers > 1 every worker loads its inputs from the config; pass `inputs` only with workers=1")
    out_dir = Path(out_dir)
    grows = _check_out_dir(config, out_dir)
    inputs = inputs or load_inputs(config, device)  # raises on bad input before anything is written
    with _exclusive(out_dir):
        saved = out_dir / "sweep_config.yaml"
        fresh = not saved.exists()
        try:
            if fresh or grows:
                for stale in ("results.jsonl", "chosen.json"):  # a grown sweep is unfinished until its new runs are done
                    (out_dir / stale).unlink(missing_ok=True)
                write_text_atomic(saved, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
            base = _base_ce(config, inputs, out_dir, log)
            selections = _selections(config, inputs, out_dir, log)
        except BaseException:
            if fresh:  # a failed start leaves nothing behind that would refuse its corrected config
                for name in ("sweep_config.yaml", "base_ce.json", "selection.json"):
                    (out_dir / name).unlink(missing_ok=True)
            raise
        runs = plan_runs(config, selections)
        runs_path = out_dir / "runs.jsonl"
        _cut_partial_line(runs_path)
        done = {r.run_id for r in read_rows(runs_path)}
        todo = [r for r in runs if r.run_id not in done]
        log(f"sweep {config.name}: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run → {out_dir}")
        if todo:
            log(f"expected: at most {expected_minutes(todo, inputs, workers):.0f} min of training on {workers} worker{'s' * (workers > 1)} "
                "(every run at its step ceiling, step times measured here now; runs that plateau end sooner), plus each run's evaluation")
        groups: dict[tuple, list[str]] = defaultdict(list)
        for r in runs:
            groups[r.group].append(r.run_id)
        specs = {r.run_id: r for r in todo}
        t0 = time.perf_counter()
        for i, row in enumerate(_execute(config, todo, inputs, base, out_dir, workers, ray, log, device)):
            spec = specs[row.run_id]
            append_jsonl(runs_path, row_json(row))
            done.add(spec.run_id)
            elapsed = time.perf_counter() - t0
            log(f"[{len(done)}/{len(runs)}] {_describe(row, config)}  (eta {elapsed / (i + 1) * (len(todo) - i - 1) / 60:.1f} min)")
            if all(rid in done for rid in groups[spec.group]):
                _prune_edits(config, read_rows(runs_path), out_dir, [spec.group])
            if on_run_done is not None:
                on_run_done(row)
        return finalize(config, out_dir)


def expected_minutes(todo: list[RunSpec], inputs: StudyInputs, workers: int, probe_steps: int = 3) -> float:
    """An upper bound on the wall time of `todo`: per method, a few training steps of its first run
    are timed here (one thread, as each worker has), times every run's step ceiling, shared by the
    workers. Evaluation after each run is not counted."""
    per_step: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec in todo:
            if spec.name not in per_step:
                probe = spec.tune_config.model_copy(update={"max_steps": probe_steps, "patience": probe_steps})
                t0 = time.perf_counter()
                try:
                    tune(probe, copy.deepcopy(inputs.model), inputs.forget_stream, inputs.retain_stream, inputs.decomposition)
                except NonFiniteLossError:  # a diverging setting still timed its steps
                    pass
                per_step[spec.name] = (time.perf_counter() - t0) / probe_steps
    finally:
        torch.set_num_threads(threads)
    total_s = sum(per_step[s.name] * s.tune_config.max_steps for s in todo)
    return total_s / min(workers, len(todo)) / 60


def _execute(config: SweepConfig, todo: list[RunSpec], inputs: StudyInputs, base: dict, out_dir: Path, workers: int,
             ray: str | bool = False, log: Log = print, device=None) -> Iterator[RunRow]:
    """Rows of the runs in `todo` as they finish: here, in a pool of `workers` processes, or as Ray
    tasks whose edits come back as files that only this process writes."""
    if ray:
        from .ray_backend import ray_rows

        for row, files in ray_rows(config, todo, base, log=log):
            if files and row.edit:
                with atomic_directory(out_dir / row.edit) as tmp:
                    for name, data in files.items():
                        (tmp / name).write_bytes(data)
            yield row
        return
    if workers == 1 or len(todo) <= 1:
        for spec in todo:
            yield _run_one(config, spec, inputs, base, out_dir, progress=True)  # one run at a time: its own bar
        return
    # spawn, not fork: forking after torch has started its thread pools can deadlock the child
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(config, base, out_dir, device)) as pool:
        yield from pool.imap_unordered(_run_in_worker, todo)
        pool.close()  # let the workers exit on their own (leaving `with` alone terminates them)
        pool.join()


_worker_state: tuple[SweepConfig, StudyInputs, dict, Path] | None = None  # set in each pool process by _init_worker


def _init_worker(config: SweepConfig, base: dict, out_dir: Path, device=None) -> None:
    global _worker_state
    from transformers.utils import logging as hf_logging

    # Ctrl-C reaches the whole process group: the parent reports it, the workers stay quiet; and a
    # worker whose parent dies (even by SIGKILL) is terminated rather than left running
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _terminate_with_parent()

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per worker would interleave with the sweep's log
    torch.set_num_threads(1)  # N workers on N cores: more threads each would oversubscribe them
    # each worker loads its own inputs (deterministic from the config): a decomposition holds hooks
    # that do not pickle, and sending the model to every worker would cost as much as loading it
    _worker_state = (config, load_inputs(config, device), base, out_dir)


def _terminate_with_parent() -> None:
    """Linux: SIGTERM (default action: exit, no traceback) when the parent process dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still ends the workers
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_in_worker(spec: RunSpec) -> RunRow:
    assert _worker_state is not None, "a pool process runs _init_worker first"
    config, inputs, base, out_dir = _worker_state
    return _run_one(config, spec, inputs, base, out_dir)


def finalize(config: SweepConfig, out_dir: Path) -> Path:
    """Choose (lr, alpha) per group on validation data; write chosen.json and results.jsonl; keep
    only the chosen runs' edits."""
    rows = _unique(read_rows(out_dir / "runs.jsonl"))
    choices = choose_settings(rows, config.scoring)
    chosen_ids = {rid for c in choices for rid in c["run_ids"]}
    write_json_atomic(out_dir / "chosen.json", {"rule": _CHOICE_RULE, "scoring": config.scoring.model_dump(), "groups": choices, "versions": versions()})
    lines = "".join(json.dumps(row_json(r.model_copy(update={"chosen": r.run_id in chosen_ids}))) + "\n" for r in rows)
    write_text_atomic(out_dir / "results.jsonl", lines)
    _prune_edits(config, rows, out_dir, None)
    return out_dir / "results.jsonl"


_CHOICE_RULE = (
    "per (name, budget, lambda_retain): mean over seeds of the validation forget gain min(CE, ln|V|) - CE_base "
    "and of the validation retain damage; among settings with mean damage < max_damage, those within "
    "tie_tolerance of the best gain, the least damaging (then the smallest lr, alpha); if none is under "
    "max_damage, the least damaging setting (feasible = false)"
)


def choose_settings(rows: list[RunRow], scoring) -> list[dict]:
    """The (lr, alpha) chosen per (name, budget, lambda) from validation scores; see the module doc."""
    by_group: dict[tuple, dict[tuple, list[RunRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_group[r.group][(r.lr, r.lora_alpha)].append(r)
    out = []
    for (name, budget, lam), cands in sorted(by_group.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        scored = []
        for (lr, alpha), rs in cands.items():
            if any(r.status != "ok" for r in rs):
                continue  # a setting that diverged on some seed is not a candidate
            gain = sum(r.scored.valid_forget_gain for r in rs) / len(rs)
            damage = sum(r.scored.valid_damage for r in rs) / len(rs)
            scored.append({"lr": lr, "lora_alpha": alpha, "valid_forget_gain": gain, "valid_damage": damage, "run_ids": [r.run_id for r in rs]})
        if not scored:
            out.append({"name": name, "budget": budget, "lambda_retain": lam, "lr": None, "lora_alpha": None,
                "feasible": False, "run_ids": [], "candidates": []})
            continue
        feasible = [c for c in scored if c["valid_damage"] < scoring.max_damage]
        pool = feasible or scored
        if feasible:
            best_gain = max(c["valid_forget_gain"] for c in feasible)
            pool = [c for c in feasible if c["valid_forget_gain"] >= best_gain - scoring.tie_tolerance]
        pick = min(pool, key=lambda c: (c["valid_damage"], c["lr"], c["lora_alpha"] or 0.0))
        out.append({
            "name": name, "budget": budget, "lambda_retain": lam,
            "lr": pick["lr"], "lora_alpha": pick["lora_alpha"], "feasible": bool(feasible),
            "valid_forget_gain": pick["valid_forget_gain"], "valid_damage": pick["valid_damage"],
            "run_ids": pick["run_ids"],
            "candidates": [{k: v for k, v in c.items() if k != "run_ids"} for c in scored],
        })
    return out


# --------------------------------------------------------------------------- one run
def _run_one(config: SweepConfig, spec: RunSpec, inputs: StudyInputs, base: dict, out_dir: Path, progress: bool = False) -> RunRow:
    from ..evaluation.ce import evaluate_ce

    cfg = spec.tune_config
    what = dict(
        run_id=spec.run_id, name=spec.name, method=cfg.method, budget=cfg.budget, seed=cfg.seed,
        lambda_retain=cfg.lambda_retain, lr=cfg.lr, lora_alpha=cfg.lora_alpha if cfg.method in LORA_METHODS else None,
        tune_config=cfg.model_dump(mode="json"),
    )
    model = copy.deepcopy(inputs.model)  # a fresh base model: no state leaks between runs
    try:
        tunable, result = tune(cfg, model, inputs.forget_stream, inputs.retain_stream, inputs.decomposition,
                               decomposition_dir=config.decomposition_dir(), progress=progress)
    except NonFiniteLossError as e:
        return RunRow(**what, status="non_finite", error=str(e), steps=e.step, versions=versions())
    edit_dir = tunable.save(out_dir / "edits" / spec.run_id)

    t0 = time.perf_counter()
    ev = evaluate_ce(edited_lm(tunable.model), inputs.eval_blocks, batch_size=config.eval.batch_size)
    eval_time = time.perf_counter() - t0
    ce = _ce_dict(ev)
    increase = {d: ce[d] - base["ce"][d] for d in ce}
    s = config.scoring
    chance = inputs.chance
    at_chance = ce[s.forget_eval] >= chance - s.chance_tolerance
    score = RunScore(
        forget_ce=ce[s.forget_eval],
        forget_increase=increase[s.forget_eval],
        forget_at_chance=at_chance,
        retain_damage=increase[s.retain_eval],
        valid_forget_gain=min(ce[s.forget_valid], chance) - base["ce"][s.forget_valid],
        valid_damage=increase[s.retain_valid],
        success=at_chance and increase[s.retain_eval] < s.max_damage,
    )
    valid = (s.forget_valid, s.retain_valid)
    return RunRow(
        **what,
        status="ok",
        steps=result.steps, stopped_reason=result.stopped_reason,
        train_time_s=result.wall_time_s, eval_time_s=eval_time,
        final_loss=result.final_loss, final_forget_ce=result.final_forget_ce, final_retain_kl=result.final_retain_kl,
        final_scalars=result.final_scalars,
        loss_curve=_subsample(result.loss_history, 100),
        forget_offset=result.forget_offset, forget_tokens=result.forget_tokens,
        chance=chance,
        ce={d: v for d, v in ce.items() if d not in valid},
        increase={d: v for d, v in increase.items() if d not in valid},
        valid_ce={d: ce[d] for d in valid},
        score=score,
        edit=str(edit_dir.relative_to(out_dir)),
        versions=result.versions,
    )


def _ce_dict(ev) -> dict[str, float]:
    return {name: float(v) for name, v in ev.ce.items()}


def _subsample(values: list[float], n: int) -> list[tuple[int, float]]:
    """[[step, loss], ...] at ≤ n evenly spaced steps (the last one included): the row stays small."""
    if not values:
        return []
    stride = max(1, math.ceil(len(values) / n))
    steps = list(range(0, len(values), stride))
    if steps[-1] != len(values) - 1:
        steps.append(len(values) - 1)
    return [(i, values[i]) for i in steps]


# --------------------------------------------------------------------------- bookkeeping
GROWABLE = ("seeds", "budgets")  # config fields a sweep may extend in place (see "Growing")
EXECUTION_ONLY = ("resources",)  # config fields that change where runs go, not what they compute


def _check_out_dir(config: SweepConfig, out_dir: Path) -> bool:
    """Refuse an out dir holding another sweep; True if `config` grows the one it holds."""
    saved = out_dir / "sweep_config.yaml"
    if not saved.exists():
        return False
    previous = {k: v for k, v in yaml.safe_load(saved.read_text()).items() if k not in EXECUTION_ONLY}
    current = {k: v for k, v in config.model_dump(mode="json").items() if k not in EXECUTION_ONLY}
    if previous == current:
        return False
    diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if all(k in GROWABLE and set(previous[k]) <= set(current[k]) for k in diff):
        return True
    raise UserError(
        f"{out_dir} holds a sweep with a different config (differs in: {', '.join(diff)}); resume with the same "
        f"config, add {' or '.join(GROWABLE)} without removing any, or write to another --out directory"
    )


@contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """One sweep process per out dir: two writers would run the same runs twice."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another sweep is writing to {out_dir}; wait for it or use another --out") from None
        yield


def _cut_partial_line(path: Path) -> None:
    """Remove a trailing line without newline (a writer killed mid-line) so appends start clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)


def _unique(rows: list[RunRow]) -> list[RunRow]:
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.run_id not in seen:
            seen.add(r.run_id)
            out.append(r)
    return out


def _prune_edits(config: SweepConfig, rows: list[RunRow], out_dir: Path, groups: list[tuple] | None) -> None:
    """Delete the edits of runs that were not chosen in (complete) groups; keeps the out dir small."""
    rows = _unique(rows)
    if groups is not None:
        rows = [r for r in rows if r.group in groups]
    keep = {rid for c in choose_settings(rows, config.scoring) for rid in c["run_ids"]}
    for r in rows:
        if r.run_id not in keep and r.edit:
            shutil.rmtree(out_dir / r.edit, ignore_errors=True)


def _base_ce(config: SweepConfig, inputs: StudyInputs, out_dir: Path, log: Log) -> dict:
    """The base model's CE per dataset, cached; a changed model under a resumed sweep is refused."""
    from ..evaluation.ce import evaluate_ce
    from ..model.fingerprint import weights_fingerprint

    fingerprint = weights_fingerprint(inputs.model)
    path = out_dir / "base_ce.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["model_fingerprint"] != fingerprint:
            raise UserError(
                f"the model at {config.model_dir()} changed since this sweep started (weights fingerprint "
                f"{cached['model_fingerprint']} then, {fingerprint} now); start a new sweep in another --out directory"
            )
        return cached
    log(f"base model: evaluating {len(inputs.eval_blocks)} datasets")
    ev = evaluate_ce(inputs.model, inputs.eval_blocks, batch_size=config.eval.batch_size)
    base = {
        "model_fingerprint": fingerprint,
        "vocab_size": inputs.vocab_size,
        "chance": inputs.chance,
        "ce": _ce_dict(ev),
        "blocks": {d: list(b.shape) for d, b in inputs.eval_blocks.items()},
        "versions": versions(),
    }
    write_json_atomic(path, base)
    return base


def _selections(config: SweepConfig, inputs: StudyInputs, out_dir: Path, log: Log) -> dict[str, dict]:
    path = out_dir / "selection.json"
    if path.exists():
        return json.loads(path.read_text())["methods"]
    resolved = resolve_selections(config, inputs.model, inputs.tokenizer, inputs.decomposition, log=log)
    write_json_atomic(path, {"selection_data": config.selection_data.model_dump(), "methods": resolved, "versions": versions()})
    return resolved


def _describe(row: RunRow, config: SweepConfig) -> str:
    alpha = f" α={row.lora_alpha:g}" if row.lora_alpha is not None else ""
    head = f"{row.name} budget={row.budget} seed={row.seed} λ={row.lambda_retain:g} lr={row.lr:g}{alpha}"
    if row.score is None:
        return f"{head}: {row.status} ({row.error})"
    s, sc = config.scoring, row.score
    return (
        f"{head}: {row.steps} steps ({row.stopped_reason}, {row.train_time_s:.1f}s), "
        f"{s.forget_eval} {sc.forget_ce:.2f} nats ({sc.forget_increase:+.2f}), {s.retain_eval} {sc.retain_damage:+.3f}"
        f"{'  ✓' if sc.success else ''}"
    )
