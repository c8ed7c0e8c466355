"""Side by side: one VPD training step of comptune against one step of Goodfire's single-file torch reference.

What is timed, in one process, on the CPU, one torch thread by default, alternated round by round
(comptune step, reference step, baseline, comptune step, ...) after warm-up rounds:

- comptune: `VPDTrainer.train_step` (src/comptune/decomposition/train.py), the step `decompose` runs;
- reference: one iteration of the training loop of their `nano_param_decomp/run.py::decompose`. That
  loop body is inline in `decompose`, so rather than re-typing it (which would be benchmarking our
  copy of their code) their `decompose` itself runs in a worker thread and is paced one step at a
  time through its `train_loader`: the time between two `next(train_loader)` calls is one step of
  their code exactly as written (schedules, clean forward + CI transformer, PPGD warm-up, the four
  losses, the source-gradient extraction, backward, clipping, AdamW, PPGD step, eval/log checks);
- baseline: a plain forward + backward (into the weights) of the same target with a KL loss on the
  same batch, so each step is also reported as a multiple of ordinary training work.

Both sides decompose the same target (same shape, same weights: built once in their `LlamaSimpleMLP`
and copied into comptune's `ComptuneLMForCausalLM`; their logits are compared before timing), with the
same batch, C per matrix, CI function (their global shared transformer: same width, depth, heads, MLP
width) and PGD inner steps. comptune's `DecomposeConfig` is derived field by field from their `Config`
(see `FIELD_MAP`); the mapping and every difference between the two setups go into the results file.

Sizes: the bundled model's shape (vocab 8192, 4 layers, d_model 128, 4 heads, d_mlp 512), batch 8,
seq 128, and for C and the CI transformer comptune's "small" preset, the sizes comptune runs on that
model (C 256 for q/k/v/o, 512 for c_fc/down_proj; CI d 256 × 2 blocks, 4 heads, MLP 1024). Their
Config's own defaults (C 512–3584 for a d=768 target, CI 2048 × 8 blocks, batch 64, seq 512) are
sized for the paper's 67M target on GPUs and are not used; every other knob is their default.

Their code is imported at run time from a directory holding two files of their torch-era commit,
extracted from a bare mirror of their repository with:

    mkdir -p /tmp/goodfire && git --git-dir=/work/.mirror/RollingRo11+param-decomp/repo archive b675341 \\
        nano_param_decomp/run.py param_decomp_lab/experiments/lm/pretrain/models/llama_simple_mlp.py \\
        | tar -x -C /tmp/goodfire

Their code targets Python 3.13; here it runs under the project's venv with shims that change nothing
a step executes (all recorded in the results): `typing.override` backported from typing_extensions,
and stand-ins for modules their two files import but the benchmark never runs or cannot parse on
3.11: `wandb` (logging only, off), `param_decomp.base_config.BaseConfig` (a frozen, extra="forbid"
pydantic model, as theirs), `param_decomp_lab.distributed.log0` and `...pretrain.run_info` (W&B
loading). Their model file needs `jaxtyping` (pure Python): `.venv/bin/pip install jaxtyping`.

    .venv/bin/python benchmarks/bench_vs_goodfire.py --goodfire-src /tmp/goodfire [--threads 1] [--steps 20]
    .venv/bin/python benchmarks/bench_vs_goodfire.py --goodfire-src /tmp/goodfire --small   # smoke test, seconds

Writes benchmarks/results/decompose_vs_goodfire.json (config, seed, versions, their commit, both step
times, ratios, the logit check, the differences); `--small` writes to the temp directory unless --out
is given, so a smoke test never replaces the real figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results" / "decompose_vs_goodfire.json"
TARGET_RATIO = 0.6  # the issue's goal for comptune step time / reference step time

REFERENCE_COMMIT = "b675341d4ae25151394a26e57d3541c5e21f7b60"
RUN_PY = "nano_param_decomp/run.py"
MODEL_PY = "param_decomp_lab/experiments/lm/pretrain/models/llama_simple_mlp.py"
# sha256 of the two files at REFERENCE_COMMIT: a matching extract proves which commit was timed
# (a `git archive` extract carries no commit id of its own)
REFERENCE_SHA256 = {
    RUN_PY: "fadefd7df6f96f5f65c0547868b4fe34006bbeb7ff805ef1c18d96ddd4c24068",
    MODEL_PY: "0faf65235f7befff5572af8a8a74e6fcdeff67096282f48e1a12d558130ebd70",
}

SHAPES = {
    # the bundled model, with comptune's "small" preset C and CI transformer
    "bundled": {
        "model": dict(vocab_size=8192, n_layer=4, d_model=128, n_head=4, d_mlp=512),
        "batch": 8, "seq": 128,
        "C": {"attn.q_proj": 256, "attn.k_proj": 256, "attn.v_proj": 256, "attn.o_proj": 256, "mlp.c_fc": 512, "mlp.down_proj": 512},
        "ci": dict(ci_d_model=256, ci_n_blocks=2, ci_n_heads=4, ci_mlp_hidden=1024),
        "warmup": 3, "steps": 20,
    },
    # tiny: every code path, in seconds
    "small": {
        "model": dict(vocab_size=256, n_layer=2, d_model=32, n_head=2, d_mlp=64),
        "batch": 2, "seq": 16,
        "C": {"attn.q_proj": 16, "attn.k_proj": 16, "attn.v_proj": 16, "attn.o_proj": 16, "mlp.c_fc": 32, "mlp.down_proj": 32},
        "ci": dict(ci_d_model=32, ci_n_blocks=1, ci_n_heads=2, ci_mlp_hidden=64),
        "warmup": 1, "steps": 3,
    },
}

# Their Config field -> comptune DecomposeConfig field ("ci." = inside its CIConfig). Fields of theirs
# not listed are bookkeeping (eval/log frequencies, W&B) or handled separately (C, betas, seq_len).
FIELD_MAP = {
    "seed": "seed",
    "n_steps": "steps",
    "batch_size": "batch_size",
    "main_lr": "lr",  # their one AdamW covers components and CI; comptune's ci_lr=None means "= lr"
    "main_lr_final_frac": "lr_final_frac",
    "grad_clip_components": "grad_clip_components",
    "faithfulness_warmup_steps": "faithfulness_warmup_steps",
    "faithfulness_warmup_lr": "faithfulness_warmup_lr",
    "coeff_faith": "coeff_faithfulness",
    "coeff_imp": "coeff_minimality",
    "coeff_stoch": "coeff_stochastic",
    "coeff_ppgd": "coeff_adversarial",
    "p_start": "p_start",
    "p_end": "p_end",
    "imp_eps": "minimality_eps",
    "imp_beta": "minimality_beta",
    "ppgd_lr": "ppgd_lr",
    "ppgd_lr_final_frac": "ppgd_lr_final_frac",
    "ppgd_warmup_pct": "ppgd_warmup_frac",
    "ppgd_eps": "ppgd_eps",
    "ppgd_inner_steps": "ppgd_inner_steps",
    "pgd_eval_step_size": "pgd_eval_step_size",
    "pgd_eval_n_steps": "pgd_eval_steps",
    "leaky_alpha": "ci.leaky_alpha",
    "ci_d_model": "ci.d_model",
    "ci_n_blocks": "ci.n_blocks",
    "ci_n_heads": "ci.n_heads",
    "ci_mlp_hidden": "ci.d_ff",
    "ci_rope_base": "ci.rope_base",
}
NEVER = 10**9  # an eval / log interval no timed step reaches


# ----- their code: loading ------------------------------------------------------------------------


@dataclasses.dataclass
class Reference:
    run: types.ModuleType  # nano_param_decomp/run.py
    model_module: types.ModuleType  # llama_simple_mlp.py
    commit: str
    commit_source: str
    sha256: dict[str, str]
    shims: list[str]


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _reference_stubs() -> dict[str, types.ModuleType]:
    """Stand-ins for what their two files import but no step runs (or Python 3.11 cannot parse)."""
    from pydantic import BaseModel, ConfigDict

    class BaseConfig(BaseModel):  # theirs: the same model_config plus YAML/JSON file helpers
        model_config = ConfigDict(extra="forbid", frozen=True)

    class PretrainRunInfo:  # theirs loads a pretraining run from W&B; targets here are built, not loaded
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("PretrainRunInfo is stubbed in this benchmark")

    return {
        "wandb": _stub("wandb"),
        "param_decomp.base_config": _stub("param_decomp.base_config", BaseConfig=BaseConfig),
        "param_decomp_lab.distributed": _stub("param_decomp_lab.distributed", log0=lambda msg: None),
        "param_decomp_lab.experiments.lm.pretrain.run_info": _stub("param_decomp_lab.experiments.lm.pretrain.run_info", PretrainRunInfo=PretrainRunInfo),
    }


@contextlib.contextmanager
def _shimmed(stubs: dict[str, types.ModuleType]) -> Iterator[list[str]]:
    """Install the stubs and typing.override for the import only; sys.modules and typing are restored
    after, so nothing else in the process (transformers probes for wandb) ever sees a stub."""
    shims = [f"stub module {name}" for name in stubs]
    saved = {name: sys.modules.get(name) for name in stubs}
    added_override = not hasattr(typing, "override")
    if added_override:
        import typing_extensions

        typing.override = typing_extensions.override  # type: ignore[attr-defined]
        shims.append("typing.override = typing_extensions.override (their code targets Python 3.13)")
    sys.modules.update(stubs)
    try:
        yield shims
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
        if added_override:
            del typing.override  # type: ignore[attr-defined]


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def load_reference(src: Path, commit_flag: str) -> Reference:
    missing = [p for p in (RUN_PY, MODEL_PY) if not (src / p).is_file()]
    if missing:
        raise SystemExit(f"--goodfire-src {src} lacks {', '.join(missing)}; extract them as this file's docstring shows")
    if importlib.util.find_spec("jaxtyping") is None:  # their model file's annotations
        raise SystemExit("their model file imports jaxtyping: .venv/bin/pip install jaxtyping")
    with _shimmed(_reference_stubs()) as shims:
        run = _load_file("nano_param_decomp.run", src / RUN_PY)
        model_module = _load_file("param_decomp_lab.experiments.lm.pretrain.models.llama_simple_mlp", src / MODEL_PY)
    sha = {p: hashlib.sha256((src / p).read_bytes()).hexdigest() for p in (RUN_PY, MODEL_PY)}
    commit, how = _reference_commit(src, commit_flag, sha)
    return Reference(run, model_module, commit, how, sha, shims)


def _reference_commit(src: Path, commit_flag: str, sha: dict[str, str]) -> tuple[str, str]:
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        return head.stdout.strip(), "git rev-parse HEAD of --goodfire-src"
    if commit_flag == REFERENCE_COMMIT and sha != REFERENCE_SHA256:
        return "unknown", f"the files differ from {REFERENCE_COMMIT}'s; pass --goodfire-commit"
    if sha == REFERENCE_SHA256:
        return commit_flag, "--goodfire-commit, file contents verified against that commit"
    return commit_flag, "--goodfire-commit, as given (contents not verified)"


# ----- the target, built once in both classes -----------------------------------------------------


def module_C(shape: dict) -> dict[str, int]:
    """Every decomposed matrix's path and C; the same dict configures both sides."""
    return {f"h.{i}.{kind}": c for i in range(shape["model"]["n_layer"]) for kind, c in shape["C"].items()}


def build_targets(ref: Reference, shape: dict, seed: int) -> tuple[nn.Module, nn.Module]:
    """(their LlamaSimpleMLP, comptune's ComptuneLMForCausalLM) computing the same function.

    Their constructor draws its weights from its own generator (seed 42). Two changes make the logit
    check able to see a mismatch (no step's cost depends on weight values): the RMSNorm scales, which
    it leaves at 1, are drawn from `seed`, and q/k weights are scaled ×10, since at its std 0.02 every
    attention pattern is near uniform and a RoPE or masking difference would not show in the logits.
    Their model must be plain multi-head attention (n_key_value_heads = n_head), the one attention
    layout comptune's model has.
    """
    from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

    m = shape["model"]
    mm = ref.model_module
    theirs = mm.LlamaSimpleMLP(mm.LlamaSimpleMLPConfig(
        model_type="LlamaSimpleMLP", block_size=shape["seq"], n_ctx=shape["seq"], vocab_size=m["vocab_size"],
        n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["d_model"], n_intermediate=m["d_mlp"],
        n_key_value_heads=m["n_head"], use_grouped_query_attention=True, rotary_dim=m["d_model"] // m["n_head"],
    )).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith(("rms_1.weight", "rms_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
                p.mul_(10.0)
    # their forward returns (logits, loss); their decompose wants bare logits: patch the bound
    # forward as their pile_4L.py entry point does, keeping module paths intact
    original_forward = theirs.forward
    theirs.forward = types.MethodType(lambda _self, idx: original_forward(idx)[0], theirs)

    ours = ComptuneLMForCausalLM(ComptuneLMConfig(n_ctx=shape["seq"], **m)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same names: h.{i}.attn.q_proj, ..., tied wte/lm_head
    return theirs, ours


@torch.no_grad()
def logit_check(theirs: nn.Module, ours: nn.Module, batch: torch.Tensor, tol: float) -> dict:
    a, b = theirs(batch), ours(batch).logits
    diff = (a - b).abs().max().item()
    return {"max_abs_diff": diff, "max_abs_logit": a.abs().max().item(), "tolerance": tol, "ok": diff <= tol}


# ----- configs --------------------------------------------------------------------------------------


def reference_config(ref: Reference, shape: dict, seed: int):
    """Their Config: their defaults except the sizes (C, CI, batch, seq) and bookkeeping that no timed step may run."""
    return ref.run.Config(
        C_per_module=module_C(shape), batch_size=shape["batch"], seq_len=shape["seq"], seed=seed, **shape["ci"],
        faithfulness_warmup_steps=0,  # setup, not a step; both sides skip it
        eval_freq=NEVER, slow_eval_freq=NEVER, slow_eval_on_first_step=False, log_every=NEVER,  # step 0 still evaluates: a warm-up step
        pgd_eval_n_steps=1,  # that step-0 evaluation's PGD, kept short
        use_wandb=False,
    )


def comptune_config(ref_cfg):
    """comptune's DecomposeConfig carrying the same values, field by field (FIELD_MAP)."""
    from comptune.decomposition.train import DecomposeConfig

    raw: dict[str, Any] = {"ci": {"type": "global_transformer"}}
    for theirs, ours in FIELD_MAP.items():
        value = getattr(ref_cfg, theirs)
        if ours.startswith("ci."):
            raw["ci"][ours[3:]] = value
        else:
            raw[ours] = value
    raw.update(
        patterns=dict(ref_cfg.C_per_module),  # exact paths; fnmatch matches each to itself
        ppgd_betas=(ref_cfg.ppgd_beta1, ref_cfg.ppgd_beta2),
        ci_lr=None,
        routing="uniform_k_subset",  # theirs has no other stochastic routing
        reconstruction="kl",
        eval_every=NEVER, log_every=NEVER, checkpoint_every=NEVER,
    )
    config = DecomposeConfig.model_validate(raw)
    for theirs, ours in FIELD_MAP.items():  # the mapping really landed
        value = config
        for part in ours.split("."):
            value = getattr(value, part)
        assert value == getattr(ref_cfg, theirs), (theirs, ours)
    return config


def mapping_record(ref_cfg, config) -> list[dict]:
    rows = [{"reference": t, "comptune": o, "value": getattr(ref_cfg, t)} for t, o in FIELD_MAP.items()]
    rows += [
        {"reference": "C_per_module", "comptune": "patterns", "value": dict(ref_cfg.C_per_module)},
        {"reference": "(ppgd_beta1, ppgd_beta2)", "comptune": "ppgd_betas", "value": list(config.ppgd_betas)},
        {"reference": "seq_len (CI RoPE table, PPGD source shape)", "comptune": "the batch's length", "value": ref_cfg.seq_len},
        {"reference": "CI fn global_shared_transformer", "comptune": "ci.type global_transformer", "value": None},
        {"reference": "uniform-k-subset routing (fixed)", "comptune": "routing", "value": config.routing},
        {"reference": "one AdamW over components + CI at main_lr", "comptune": "two AdamW, ci_lr None (= lr)", "value": ref_cfg.main_lr},
    ]
    return rows


# ----- the three timed items -------------------------------------------------------------------------


class ReferenceRun:
    """Their `decompose` in a worker thread, run one training step per `step()` call.

    The thread blocks inside their `next(train_loader)` until `step()` releases it; the loader then
    yields the batch and, when `decompose` asks for the next one, records how long the step took.
    Only one thread computes at any time, so the two implementations never share the CPU.
    """

    def __init__(self, run: types.ModuleType, target: nn.Module, cfg, batch: torch.Tensor, threads: int):
        self._run, self._target, self._cfg, self._batch, self._threads = run, target, cfg, batch, threads
        self._go = threading.Semaphore(0)
        self._results: queue.Queue = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="goodfire-decompose", daemon=True)

    def _loader(self) -> Iterator[torch.Tensor]:
        self._go.acquire()
        while not self._stop:
            t0 = time.perf_counter()
            yield self._batch
            self._results.put(time.perf_counter() - t0)
            self._go.acquire()
        # returning raises StopIteration inside their loop: how close() ends the run

    def _main(self) -> None:
        torch.set_num_threads(self._threads)  # per OS thread: set it here too
        try:
            self._run.decompose(self._target, self._cfg, self._loader(), itertools.repeat(self._batch))
            self._results.put(RuntimeError("their decompose finished before the benchmark did"))
        except StopIteration:
            pass
        except BaseException as e:  # hand it to the main thread
            self._results.put(e)

    def start(self) -> None:
        self._thread.start()

    def step(self) -> float:
        self._go.release()
        result = self._results.get()
        if isinstance(result, BaseException):
            raise RuntimeError("their decompose failed") from result
        return result

    def close(self) -> None:
        self._stop = True
        self._go.release()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            print("warning: their decompose thread did not stop", file=sys.stderr)


def kl_baseline(target: nn.Module, batch: torch.Tensor) -> Callable[[], None]:
    """A plain forward + backward into the target's weights with KL(target ‖ model) on the batch."""
    model = copy.deepcopy(target).train(False)
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        ref_probs = F.softmax(model(batch).logits.float(), dim=-1)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        log_q = F.log_softmax(model(batch).logits.float(), dim=-1)
        F.kl_div(log_q, ref_probs, reduction="none").sum(-1).mean().backward()

    return step


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----- the run -----------------------------------------------------------------------------------------


def differences(name: str, shape: dict, ref: Reference, check: dict) -> list[str]:
    if name == "bundled":
        sizes = ("sizes: C per matrix and the CI transformer are comptune's 'small' preset for the bundled model; their Config "
                 "defaults (C 512–3584, CI 2048×8 blocks×16 heads×8192, batch 64, seq 512) are for the 67M paper target on GPUs")
    else:
        sizes = "sizes: the tiny --small shapes (a smoke test)"
    sizes += f"; batch {shape['batch']}, seq {shape['seq']}; identical on both sides"
    return [
        f"target: their LlamaSimpleMLP with use_grouped_query_attention=True and n_key_value_heads = n_head = {shape['model']['n_head']} "
        "(separate q/k/v projections, plain multi-head attention: comptune's model has no grouped KV heads), flash_attention "
        "(SDPA, causal), rotary_dim = head size, no biases, tied embeddings; otherwise the same computation as ComptuneLM "
        f"(logits agree to {check['max_abs_diff']:.2e}). Their RoPE tables are precomputed buffers, ComptuneLM computes them "
        "per forward; that cost is part of what is timed",
        "target weights: drawn by their constructor from its own generator (seed 42, not --seed); then RMSNorm scales set to "
        "1 + 0.1·N(0,1) from --seed (theirs start at 1) and q/k weights ×10 (peaked attention), so the logit check covers "
        "norms, RoPE and the causal mask",
        sizes,
        "components and CI function start from separately drawn random values on each side (their decompose initialises its "
        "own); no step's cost depends on these values",
        "faithfulness warm-up: 0 steps on both sides (it is setup, not a step; their default is 400, as comptune's)",
        "their step 0 runs their evaluation (step % eval_freq == 0, with a 1-step eval PGD) and logs; it is a warm-up step "
        "and never timed. No timed step evaluates or logs on either side",
        "their code runs in a worker thread of this process (paced through its train_loader); torch intra-op threads are "
        "set to --threads in both threads. Everything is fp32 on the CPU (their autocast is CUDA-only)",
        "their code targets Python 3.13 and runs here on " + sys.version.split()[0] + " with: " + "; ".join(ref.shims),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--goodfire-src", type=Path, required=True, help="directory holding their extracted files (see above)")
    ap.add_argument("--goodfire-commit", default=REFERENCE_COMMIT, help="the commit the files were extracted from (recorded)")
    ap.add_argument("--small", action="store_true", help="tiny shapes: a smoke test that runs in seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, help="untimed rounds first (default: 3; --small 1)")
    ap.add_argument("--steps", type=int, help="timed rounds (default: 20; --small 3)")
    ap.add_argument("--batch", type=int, help="override the batch size")
    ap.add_argument("--seq", type=int, help="override the sequence length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-tol", type=float, default=1e-4, help="largest |logit difference| accepted between the two targets")
    ap.add_argument("--out", type=Path, help=f"results file (default {RESULTS}; --small: the temp directory)")
    args = ap.parse_args()

    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU on both sides: their init_dist picks CUDA when it sees one
    torch.set_num_threads(args.threads)
    name = "small" if args.small else "bundled"
    shape = dict(SHAPES[name])
    shape.update({k: v for k, v in (("batch", args.batch), ("seq", args.seq)) if v})
    warmup = args.warmup if args.warmup is not None else shape["warmup"]
    steps = args.steps or shape["steps"]
    out = args.out or (Path(tempfile.gettempdir()) / "decompose_vs_goodfire_small.json" if args.small else RESULTS)

    from comptune._io import versions, write_json_atomic
    from comptune.decomposition.decomposed import Decomposition
    from comptune.decomposition.train import VPDTrainer

    ref = load_reference(args.goodfire_src.resolve(), args.goodfire_commit)
    batch = torch.randint(0, shape["model"]["vocab_size"], (shape["batch"], shape["seq"]), generator=torch.Generator().manual_seed(args.seed))
    theirs, ours = build_targets(ref, shape, args.seed)
    check = logit_check(theirs, ours, batch, args.logit_tol)
    print(f"logit check: max |their − our logits| = {check['max_abs_diff']:.2e} (max |logit| {check['max_abs_logit']:.2f}, tolerance {args.logit_tol:g})")
    if not check["ok"]:
        raise SystemExit("the two targets do not compute the same function; nothing timed")

    ref_cfg = reference_config(ref, shape, args.seed)
    config = comptune_config(ref_cfg)
    baseline = kl_baseline(ours, batch)  # its own copy, taken before the decomposition freezes and hooks `ours`
    torch.manual_seed(args.seed)
    trainer = VPDTrainer(Decomposition.create(ours, config.patterns, config.ci), config, torch.device("cpu"))
    reference = ReferenceRun(ref.run, theirs, ref_cfg, batch, args.threads)
    reference.start()

    times: dict[str, list[float]] = {"comptune": [], "reference": [], "kl_fwd_bwd": []}
    try:
        for i in range(warmup + steps):
            row = {
                "comptune": _timed(lambda: trainer.train_step(batch, i)),
                "reference": reference.step(),
                "kl_fwd_bwd": _timed(baseline),
            }
            if i >= warmup:
                for k, v in row.items():
                    times[k].append(v)
            print(f"{'warm-up' if i < warmup else 'round'} {i:3d}: " + "  ".join(f"{k} {v:.3f} s" for k, v in row.items()), flush=True)
    finally:
        reference.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["comptune"] / med["reference"]
    tokens = shape["batch"] * shape["seq"]
    results = {
        "comptune_step_s_median": med["comptune"],
        "reference_step_s_median": med["reference"],
        "kl_fwd_bwd_s_median": med["kl_fwd_bwd"],
        "ratio_comptune_over_reference": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "comptune_step_over_kl_fwd_bwd": med["comptune"] / med["kl_fwd_bwd"],
        "reference_step_over_kl_fwd_bwd": med["reference"] / med["kl_fwd_bwd"],
        "tokens_per_step": tokens,
        "comptune_tokens_per_s": tokens / med["comptune"],
        "reference_tokens_per_s": tokens / med["reference"],
        "all_s": times,
    }
    print(f"comptune  {med['comptune']:.3f} s/step ({results['comptune_step_over_kl_fwd_bwd']:.1f}× KL fwd+bwd)")
    print(f"reference {med['reference']:.3f} s/step ({results['reference_step_over_kl_fwd_bwd']:.1f}× KL fwd+bwd)")
    print(f"KL fwd+bwd {med['kl_fwd_bwd']:.3f} s;  comptune / reference = {ratio:.3f} (target ≤ {TARGET_RATIO})")

    write_json_atomic(out, {
        "benchmark": "one VPD training step: comptune VPDTrainer.train_step vs one iteration of Goodfire's nano_param_decomp "
                     "decompose loop, alternated in one process with a plain KL forward+backward of the target, same batch, CPU",
        "config": {
            "shape": name, "model": shape["model"], "batch": shape["batch"], "seq": shape["seq"], "C": module_C(shape),
            "threads": args.threads, "warmup_rounds": warmup, "timed_rounds": steps, "order_per_round": list(times),
            "reference_config": dataclasses.asdict(ref_cfg),
            "comptune_config": config.model_dump(mode="json"),
            "mapping": mapping_record(ref_cfg, config),
        },
        "seed": args.seed,
        "reference": {"code": "Goodfire param-decomp, torch-era nano_param_decomp", "commit": ref.commit, "commit_from": ref.commit_source,
                      "files_sha256": ref.sha256, "src": str(args.goodfire_src), "shims": ref.shims},
        "logit_check": check,
        "results": results,
        "differences": differences(name, shape, ref, check),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads},
        "versions": {**versions(), "jaxtyping": _version("jaxtyping")},
    })
    print(f"written to {out}")


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
