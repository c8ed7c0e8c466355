"""Record what Goodfire's own torch-era trainer writes and computes for two tiny decompositions.

Runs *their* trainer (`param_decomp.optimize.Trainer`, driven as their LM entry point
`param_decomp_lab/experiments/lm/run.py::_fresh_main` drives it) on the CPU for a few dozen steps,
Δ on, on a 2-layer random-init grouped-query-attention `LlamaSimpleMLP`, once per CI function type
their code has at that commit and comptune runs:

- `shared_mlp` (layerwise: one MLP per module, x -> C), and
- `global_shared_transformer` (the global CI transformer of the VPD paper).

(Their code also has layerwise `mlp` / `vector_mlp` and a `global_shared_mlp`; the first two import
and are checked against their math in tests/test_goodfire_import.py, the last has no comptune
counterpart.) Writes, under tests/fixtures/:

- `goodfire_run_target/`: the target as their pretraining writes a run (`final_config.yaml` +
  `model_config.yaml` by their `save_configs`, `checkpoints/model_step_1.pt` by their `save_model`),
  the weights of tests/fixtures/goodfire_gqa (made by their `LlamaSimpleMLP`, 4 query heads sharing
  2 key/value heads). The runs name it in `target.spec.run_path`, repo-relative as their `ModelPath`
  stores local paths, and their trainer loads it through their `build_target` / `PretrainRunInfo`.
- `goodfire_run_<ci type>/`: what their trainer writes for the run: `experiment_config.yaml` (their
  `init_pd_run`) and `model_<steps>.pth` (their `RunSink.checkpoint`: the `ComponentModel` state
  dict, `target_model.*`, `_components.*`, `ci_fn.*`). Their sink also writes `training_<steps>.pth`
  (optimizer and metric state, for resuming) and `metrics.jsonl`; neither is kept.
- `goodfire_run_<ci type>/reference.safetensors`: on fixed `input_ids` [3, 16], computed by their
  code from the saved files (reloaded through their `SavedLMRun.from_path(...).load_model()`):
  `target_logits`; per module `ci_lower.<path>`, `ci_upper.<path>`, `ci_pre_sigmoid.<path>`
  (`calc_causal_importances`), `inner_acts.<path>` (x·V on those inputs, their `get_all_component_acts`) and
  `pre_weight_acts.<path>` (the clean forward's module inputs); `unmasked_delta_logits` (every mask 1, Δ mask 1), `unmasked_logits`
  (every mask 1, no Δ), `ci_masked_logits` (mask = lower CI, no Δ, as their CIMaskedReconLoss),
  `random_masked_logits` under the recorded `random_mask.<path>` [3, 16, C] and
  `random_delta_mask.<path>` [3, 16] (every module routed), and `random_routed_logits` under the
  same masks plus the recorded uniform-k-subset routing `random_routing.<path>` (bool [3, 16]).
- `provenance.json` beside each: their commit, the sha256 of every file of theirs that ran, the
  shims, the config, torch version.

tests/test_goodfire_import.py imports each run through the CLI and the API and reproduces every
tensor with comptune's own `Decomposition`.

Their code is not part of this project. Extract the whole torch-era commit b675341 (their trainer
is a package, not one file) and install the two pure-Python packages it needs beyond ours:

    mkdir -p /tmp/goodfire && git --git-dir=<mirror of goodfire-ai/param-decomp> archive b675341 | tar -x -C /tmp/goodfire
    .venv/bin/pip install jaxtyping einops
    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_goodfire_decomposition_fixture.py --goodfire-src /tmp/goodfire

Their code targets Python 3.13; it runs here on the project's Python with shims that change nothing
a step computes (all listed in provenance.json): PEP 695 generic syntax (`def f[T](...)`,
`class C[T: B](...)`) rewritten at import into the equivalent `TypeVar`/`Generic` form,
`typing.override` from typing_extensions, and stand-ins for modules no step here uses or that this
Python cannot parse: `wandb`, `dotenv`, `fire`, their SLURM launcher `infra.ddp_launch` (a 3.12
f-string) and `infra.hf_http` (Hub retry settings). Their LM data loader streams a Hub data set,
which cannot be reached here: the trainer gets a `DataLoader` over fixed random token ids instead
(the one part of `_fresh_main` not called; every other call is theirs, in their order).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import re
import shutil
import sys
import tempfile
import types
import typing
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GQA = FIXTURES / "goodfire_gqa"  # the target weights, made by their LlamaSimpleMLP (scripts/make_goodfire_gqa_fixture.py)
TARGET_RUN = FIXTURES / "goodfire_run_target"
CI_TYPES = ("shared_mlp", "global_shared_transformer")
STEPS = 30
SEQ = 16
VOCAB = 64

# Their ss_llama_simple_mlp-2L.yaml (the 2-layer LlamaSimpleMLP decomposition), shrunk to this target
# and a CPU run: C per matrix, CI sizes, steps, batch, warm-up, lr and no bf16 / eval / W&B. The four
# training losses and their coefficients are theirs.
DECOMPOSITION_TARGETS = [
    {"module_pattern": "h.*.mlp.c_fc", "C": 12},
    {"module_pattern": "h.*.mlp.down_proj", "C": 10},
    {"module_pattern": "h.*.attn.q_proj", "C": 8},
    {"module_pattern": "h.*.attn.k_proj", "C": 6},  # GQA: k/v are [16, 32]
    {"module_pattern": "h.*.attn.v_proj", "C": 6},
    {"module_pattern": "h.*.attn.o_proj", "C": 8},
]
CI_CONFIGS = {
    "shared_mlp": {"mode": "layerwise", "fn_type": "shared_mlp", "hidden_dims": [16]},
    "global_shared_transformer": {
        "mode": "global", "fn_type": "global_shared_transformer", "hidden_dims": None,
        "simple_transformer_ci_cfg": {"d_model": 16, "n_blocks": 2, "mlp_hidden_dim": [24],
                                      "attn_config": {"n_heads": 2, "max_len": 64, "rope_base": 10000.0}},
    },
}


def experiment_config(ci_type: str, run_path: str) -> dict:
    lr = {"start_val": 3e-3, "warmup_pct": 0.0, "final_val_frac": 0.1, "fn_type": "cosine"}
    return {
        "pd": {
            "seed": 0, "n_mask_samples": 1, "ci_config": CI_CONFIGS[ci_type], "sampling": "continuous",
            "sigmoid_type": "leaky_hard", "decomposition_targets": DECOMPOSITION_TARGETS,
            "identity_decomposition_targets": None, "use_delta_component": True,
            "components_optimizer": {"lr_schedule": lr, "grad_clip_norm": 0.01},
            "ci_fn_optimizer": {"lr_schedule": lr},
            "steps": STEPS, "batch_size": 4,
            "faithfulness_warmup_steps": 10, "faithfulness_warmup_lr": 0.001, "faithfulness_warmup_weight_decay": 0.0,
            "loss_metrics": [
                {"type": "ImportanceMinimalityLoss", "coeff": 0.001, "pnorm": 2.0, "beta": 0.5, "p_anneal_start_frac": 0.0,
                 "p_anneal_final_p": 0.4, "p_anneal_end_frac": 1.0, "eps": 1.0e-12},
                {"type": "StochasticReconSubsetLoss", "coeff": 0.5, "routing": {"type": "uniform_k_subset"}},
                {"type": "PersistentPGDReconLoss", "coeff": 0.5,
                 "optimizer": {"type": "adam", "beta1": 0.5, "beta2": 0.99, "eps": 1.0e-08,
                               "lr_schedule": {"start_val": 0.01, "warmup_pct": 0.025, "final_val_frac": 1.0, "fn_type": "constant"}},
                 "scope": {"type": "per_batch_per_position"}, "use_sigmoid_parameterization": False, "n_warmup_steps": 2},
                {"type": "FaithfulnessLoss", "coeff": 10000000.0},
            ],
        },
        "cadence": {"train_log_every": 10},
        "eval": None,
        "target": {
            "spec": {"kind": "pretrained",
                     "model_class": "param_decomp_lab.experiments.lm.pretrain.models.llama_simple_mlp.LlamaSimpleMLP",
                     "run_path": run_path},
            "output_extract": 0,  # their LlamaSimpleMLP returns (logits, loss)
        },
        "data": {"tokenizer_name": "SimpleStories/test-SimpleStories-gpt2-1.25M", "max_seq_len": SEQ, "dataset_name": "SimpleStories/SimpleStories",
                 "column_name": "story", "train_split": "train", "eval_split": "test", "is_tokenized": False, "streaming": False},
        "runtime": {"autocast_bf16": False, "device": "cpu", "dp": None},
        "wandb": None,
    }


# ----- running their 3.13 package on this Python ---------------------------------------------------

_GENERIC_HEAD = re.compile(r"^(?P<indent>[ \t]*)(?P<kw>class|def)[ \t]+(?P<name>\w+)\[", re.M)


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


def rewrite_pep695(src: str) -> str:
    """`def f[T: B](...)` / `class C[T](Base)` (PEP 695, Python 3.12) as the TypeVar/Generic code it means.

    The type parameters become module-level TypeVar / ParamSpec / TypeVarTuple assignments on the
    line before, and a class gains `Generic[...]` as its last base. Nothing a call executes changes.
    """
    edits = []
    for m in _GENERIC_HEAD.finditer(src):
        i, depth = m.end(), 1
        while depth:
            depth += {"[": 1, "]": -1}.get(src[i], 0)
            i += 1
        names, defs = [], []
        for p in _split_top_level(src[m.end(): i - 1]):
            name, _, bound = p.partition(":")
            name = name.strip()
            kind = "ParamSpec" if name.startswith("**") else "TypeVarTuple" if name.startswith("*") else "TypeVar"
            name = name.lstrip("*")
            names.append(f"*{name}" if kind == "TypeVarTuple" else name)
            bound_arg = f", bound={' '.join(bound.split())}" if bound.strip() else ""
            defs.append(f'{name} = __import__("typing").{kind}("{name}"{bound_arg})')
        edits.append((m, i, names, defs))
    for m, end, names, defs in reversed(edits):
        rest = src[end:]
        if m["kw"] == "class":
            generic = f'__import__("typing").Generic[{", ".join(names)}]'
            if rest.startswith("("):
                close = rest.index(")")  # their generic classes' bases hold no parentheses
                bases = rest[1:close].strip()
                rest = "(" + (bases + ", " if bases else "") + generic + rest[close:]
            else:
                rest = f"({generic})" + rest
        src = src[: m.start()] + "".join(f"{m['indent']}{d}\n" for d in defs) + src[m.start(): m.end() - 1] + rest
    return src


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    rewritten: set[str] = set()

    def get_code(self, fullname):  # always from source: no bytecode cache of a rewritten file
        src = Path(self.path).read_text()
        try:
            return compile(src, self.path, "exec", dont_inherit=True)
        except SyntaxError:
            _RewritingLoader.rewritten.add(self.path)
            return compile(rewrite_pep695(src), self.path, "exec", dont_inherit=True)


class _TheirPackages(importlib.abc.MetaPathFinder):
    def __init__(self, src: Path):
        self.src = str(src)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ("param_decomp", "param_decomp_lab"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path if "." in name else [self.src])
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _RewritingLoader(spec.loader.name, spec.loader.path)
        return spec


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def install_their_packages(src: Path, out_dir: Path) -> list[str]:
    """Make `import param_decomp...` / `param_decomp_lab...` load their files; returns the shims used."""
    shims = ["PEP 695 generic syntax rewritten at import into TypeVar/ParamSpec + Generic (files listed in provenance)"]
    if not hasattr(typing, "override"):
        import typing_extensions

        typing.override = typing_extensions.override  # type: ignore[attr-defined]
        shims.append("typing.override = typing_extensions.override")

    # transformers and accelerate probe for wandb as they import (a stub has no __spec__): bring in
    # what their code uses from transformers before the stub exists
    from transformers import AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM, PreTrainedTokenizer  # noqa: F401
    from transformers.pytorch_utils import Conv1D  # noqa: F401

    class _Never:  # isinstance() checks against W&B types only
        pass

    wandb = _stub("wandb", run=None, Api=_Never, save=lambda *a, **k: None, log=lambda *a, **k: None, finish=lambda: None)
    wandb.plot = _stub("wandb.plot", CustomChart=_Never)
    wandb.errors = _stub("wandb.errors", CommError=type("CommError", (Exception,), {}))
    wandb.apis = _stub("wandb.apis")
    wandb.apis.public = _stub("wandb.apis.public", File=_Never, Run=_Never, Api=_Never)
    _stub("dotenv", load_dotenv=lambda *a, **k: None)
    _stub("fire", Fire=lambda *a, **k: None)
    _stub("param_decomp_lab.infra.ddp_launch", build_ddp_launch=None)
    _stub("param_decomp_lab.infra.hf_http", configure_hf_http_retries=lambda *a, **k: None)
    shims += ["stub module wandb (no W&B: the runs have `wandb: null`)", "stub modules dotenv, fire (CLI/.env only)",
              "stub module param_decomp_lab.infra.ddp_launch (SLURM launcher; a Python 3.12 f-string)",
              "stub module param_decomp_lab.infra.hf_http (Hub HTTP retries; this huggingface_hub lacks configure_http_backend)"]
    os.environ["PARAM_DECOMP_OUT_DIR"] = str(out_dir)  # where their init_pd_run puts runs/<run_id>/
    sys.meta_path.insert(0, _TheirPackages(src))
    import param_decomp_lab.infra.settings as settings

    settings.REPO_ROOT = ROOT  # before anything imports it: local model paths are stored relative to this project
    shims.append("param_decomp_lab.infra.settings.REPO_ROOT = this project's root (their ModelPath stores local paths "
                 "relative to it, so the runs name their target as tests/fixtures/goodfire_run_target/...)")
    return shims


# ----- the target, as their pretraining writes it ------------------------------------------------------


def write_target_run() -> str:
    """Their pretraining-run layout for the GQA fixture's weights; returns the run_path the runs name."""
    import yaml
    from param_decomp_lab.experiments.lm.pretrain import train as pretrain
    from param_decomp_lab.experiments.lm.pretrain.models.llama_simple_mlp import LlamaSimpleMLP, LlamaSimpleMLPConfig

    model_config = yaml.safe_load((GQA / "model_config.yaml").read_text())
    weights = torch.load(GQA / "checkpoints" / "model_step_1.pt", map_location="cpu", weights_only=True)
    model = LlamaSimpleMLP(LlamaSimpleMLPConfig(**model_config))
    model.load_state_dict(weights, strict=True)
    config = pretrain.Config(  # their pretrain Config for this model; training itself never ran (random init)
        wandb_project=None, seed=0, output_dir=TARGET_RUN.relative_to(ROOT), model=model.config.model_dump(), batch_size=4,
        num_iterations=1, learning_rate=3e-4, warmup_iters=0, learning_rate_decay_frac=0.1, weight_decay=0.1, grad_clip=1.0,
        val_loss_every=0, val_max_steps=0, sample_every=0, device="cpu", compile=False, dtype="float32", intermediate_checkpoints=False,
        data={"dataset_name": "SimpleStories/SimpleStories", "tokenizer_name": "SimpleStories/test-SimpleStories-gpt2-1.25M",
              "max_seq_len": SEQ + 1, "column_name": "story"},
    )
    if TARGET_RUN.exists():
        shutil.rmtree(TARGET_RUN)
    (TARGET_RUN / "checkpoints").mkdir(parents=True)
    pretrain.save_configs(TARGET_RUN, config_dict=config.model_dump(mode="json"), model_config_dict=config.model.model_dump(mode="json"))
    pretrain.save_model(TARGET_RUN / "checkpoints", model, step=1)
    return str((TARGET_RUN / "checkpoints" / "model_step_1.pt").relative_to(ROOT))


# ----- one decomposition run ---------------------------------------------------------------------------


def train_run(ci_type: str, run_path: str, out_dir: Path) -> Path:
    """Their `_fresh_main`, step by step, with a local token loader instead of their Hub data set."""
    from param_decomp.optimize import Trainer
    from param_decomp_lab.batch_and_loss_fns import recon_loss_kl
    from param_decomp_lab.distributed import get_device, init_distributed
    from param_decomp_lab.experiments.lm.run import LMExperimentConfig, build_target, make_run_batch
    from param_decomp_lab.experiments.utils import EXPERIMENT_CONFIG_FILENAME, init_pd_run
    from param_decomp_lab.seed import set_seed
    from torch.utils.data import DataLoader

    cfg = LMExperimentConfig.model_validate(experiment_config(ci_type, run_path))
    dist_state = init_distributed()
    assert dist_state is None
    set_seed(cfg.pd.seed)
    device = get_device()
    assert device == "cpu", device
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": device, "dp": None})})
    target_model = build_target(cfg.target)
    tokens = torch.randint(0, VOCAB, (64, SEQ), generator=torch.Generator().manual_seed(4))
    train_loader = DataLoader(tokens, batch_size=cfg.pd.batch_size, shuffle=False)
    sink = init_pd_run(cfg, group=None, tags=None, run_id=f"fixture-{ci_type}")
    try:
        trainer = Trainer(target_model=target_model, run_batch=make_run_batch(cfg.target), reconstruction_loss=recon_loss_kl,
                          pd_config=cfg.pd, runtime_config=cfg.runtime)
        trainer.run(train_loader, sink, cfg.cadence, None)
    finally:
        sink.finish()
    assert sink.out_dir is not None and (sink.out_dir / EXPERIMENT_CONFIG_FILENAME).is_file()
    return sink.out_dir


@torch.no_grad()
def reference_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Everything their code computes from the saved run on a fixed batch."""
    from param_decomp.masks import make_mask_infos, sample_uniform_k_subset_routing_masks
    from param_decomp_lab.component_model_io import get_all_component_acts
    from param_decomp_lab.experiments.lm.run import SavedLMRun

    model = SavedLMRun.from_path(run_dir).load_model()  # their reload path, on the files as committed
    model.eval()
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(5))
    paths = model.target_module_paths
    out: dict[str, torch.Tensor] = {"input_ids": ids, "target_logits": model(ids)}
    cached = model(ids, cache_type="input")
    assert torch.equal(cached.output, out["target_logits"])
    ci = model.calc_causal_importances(cached.cache, sampling="continuous")
    inner = get_all_component_acts(model, cached.cache)  # x·V on the clean forward's inputs, their lab helper
    for p in paths:
        out[f"pre_weight_acts.{p}"] = cached.cache[p]
        out[f"ci_lower.{p}"] = ci.lower_leaky[p]
        out[f"ci_upper.{p}"] = ci.upper_leaky[p]
        out[f"ci_pre_sigmoid.{p}"] = ci.pre_sigmoid[p]
        out[f"inner_acts.{p}"] = inner[p]
    deltas = model.calc_weight_deltas()
    ones = {p: torch.ones(3, SEQ, model.module_to_c[p]) for p in paths}
    out["unmasked_delta_logits"] = model(ids, mask_infos=make_mask_infos(ones, weight_deltas_and_masks={p: (deltas[p], torch.ones(3, SEQ)) for p in paths}))
    out["unmasked_logits"] = model(ids, mask_infos=make_mask_infos(ones))
    out["ci_masked_logits"] = model(ids, mask_infos=make_mask_infos(ci.lower_leaky, weight_deltas_and_masks=None))
    g = torch.Generator().manual_seed(6)
    masks = {p: torch.rand(3, SEQ, model.module_to_c[p], generator=g) for p in paths}
    delta_masks = {p: torch.rand(3, SEQ, generator=g) for p in paths}
    with_delta = {p: (deltas[p], delta_masks[p]) for p in paths}
    out["random_masked_logits"] = model(ids, mask_infos=make_mask_infos(masks, weight_deltas_and_masks=with_delta))
    routing = sample_uniform_k_subset_routing_masks((3, SEQ), paths, generator=g)
    out["random_routed_logits"] = model(ids, mask_infos=make_mask_infos(masks, routing_masks=routing, weight_deltas_and_masks=with_delta))
    for p in paths:
        out[f"random_mask.{p}"] = masks[p]
        out[f"random_delta_mask.{p}"] = delta_masks[p]
        out[f"random_routing.{p}"] = routing[p]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goodfire-src", type=Path, required=True, help="an extract of their whole repository at the commit")
    ap.add_argument("--goodfire-commit", default=None, help="the commit extracted (default: bench_vs_goodfire's REFERENCE_COMMIT)")
    args = ap.parse_args()
    src = args.goodfire_src.resolve()
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU: their get_device picks CUDA when it sees one
    torch.set_num_threads(1)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_vs_goodfire import MODEL_PY, REFERENCE_COMMIT, RUN_PY, load_reference

    # load_reference checks the extract is their commit (sha256 of the two files it knows); its
    # stand-in modules are gone again once it returns, and its two modules are dropped here so that
    # every file of theirs below is loaded as part of their real packages
    ref = load_reference(src, args.goodfire_commit or REFERENCE_COMMIT)
    for name in ("nano_param_decomp.run", "param_decomp_lab.experiments.lm.pretrain.models.llama_simple_mlp"):
        sys.modules.pop(name, None)

    with tempfile.TemporaryDirectory() as tmp:
        shims = install_their_packages(src, Path(tmp))
        run_path = write_target_run()
        written = [TARGET_RUN]
        for ci_type in CI_TYPES:
            run_dir = train_run(ci_type, run_path, Path(tmp))
            fixture = FIXTURES / f"goodfire_run_{ci_type}"
            if fixture.exists():
                shutil.rmtree(fixture)
            fixture.mkdir(parents=True)
            shutil.copy2(run_dir / "experiment_config.yaml", fixture)
            shutil.copy2(run_dir / f"model_{STEPS}.pth", fixture)
            tensors = reference_tensors(fixture)
            save_file(tensors, str(fixture / "reference.safetensors"))
            (fixture / "reference.safetensors").chmod(0o644)
            written.append(fixture)
            print(f"{ci_type}: {len(tensors)} tensors, max |target logit| {tensors['target_logits'].abs().max():.2f}, "
                  f"max |unmasked+Δ − target| {(tensors['unmasked_delta_logits'] - tensors['target_logits']).abs().max():.1e}")

        their_files = sorted({Path(m.__file__).resolve() for m in list(sys.modules.values())
                              if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(src)})
        for directory in written:
            (directory / "provenance.json").write_text(json.dumps({
                "made_by": "scripts/make_goodfire_decomposition_fixture.py",
                "config": "final_config.yaml + model_config.yaml (their pretraining's)" if directory == TARGET_RUN
                          else "experiment_config.yaml (their trainer's, beside this file)",
                "their_commit": ref.commit, "commit_source": ref.commit_source,
                "their_files_sha256": {str(p.relative_to(src)): _sha256(p) for p in their_files},
                "verified_files": [RUN_PY, MODEL_PY],
                "rewritten_pep695_files": sorted(str(Path(p).relative_to(src)) for p in _RewritingLoader.rewritten),
                "shims": shims,
                "trainer": "param_decomp.optimize.Trainer via param_decomp_lab.experiments.lm.run (_fresh_main's calls; "
                           "train data: a DataLoader over torch.randint(0, 64, (64, 16), seed 4), batch 4, no shuffle)",
                "reference_batch": "input_ids = torch.randint(0, 64, (3, 16), seed 5); random masks: torch.rand, seed 6",
                "steps": STEPS,
                "ci_types": list(CI_TYPES),
                "torch": torch.__version__, "python": sys.version.split()[0],
            }, indent=1) + "\n")
    print("wrote " + ", ".join(str(d.relative_to(ROOT)) for d in written))


if __name__ == "__main__":
    main()
