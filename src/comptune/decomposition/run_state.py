"""A decompose run's bookkeeping, apart from the training step: its files, checkpoints and logs,
resuming, and the data-parallel plumbing (process group, gathering, each rank's batch rows)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from .._io import load_safetensors, read_jsonl
from ..errors import UserError
from .decomposed import Decomposition

CHECKPOINT_NAME = "checkpoint.safetensors"
TRAIN_LOG_NAME = "train_log.jsonl"
EVAL_LOG_NAME = "eval_log.jsonl"
CONFIG_NAME = "decompose_config.json"
QUALITY_NAME = "quality.json"
INIT_FROM_NAME = "init_from.json"  # where an --init-from run records its origin (kept across resumes)


def batch_indices(step: int, n: int, global_batch: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's rows of the global batch at `step`: a fresh seeded permutation every epoch, the
    global batch split across ranks. A pure function of the step, so a resumed run sees the same data."""
    local = global_batch // world_size
    k = torch.arange(step * global_batch + rank * local, step * global_batch + (rank + 1) * local)
    epochs, pos = k // n, k % n
    return torch.cat([_epoch_permutation(n, seed, int(e))[pos[epochs == e]] for e in epochs.unique()])


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def dist_setup(device: torch.device | str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group that torchrun describes, if any.
    `device` None: CUDA when present (the LOCAL_RANK GPU), else the CPU."""
    device = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    if device is not None and (device.type != "cuda" or world_size == 1):
        return rank, world_size, device
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return rank, world_size, torch.device("cuda", local_rank)
    return rank, world_size, torch.device("cpu")


def gather(t: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (just [t] without a process group)."""
    if world_size == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(out, t.contiguous())
    return out


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        out.update({f"{prefix}.{i}.{k}": torch.as_tensor(v) for k, v in state.items()})
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    sd = opt.state_dict()
    n_params = len(sd["param_groups"][0]["params"])
    state = {}
    for i in range(n_params):
        keys = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{prefix}.{i}.")}
        if keys:
            state[i] = keys
    sd["state"] = state
    opt.load_state_dict(sd)


def changed_fields(saved: dict, config, ignore: set[str]) -> list[str]:
    """The fields of `config` (a pydantic config) that differ from the `saved` dump, except `ignore`;
    a field added after `saved` was written counts as its default there."""
    now = config.model_dump(mode="json")
    defaults = {name: f.default for name, f in type(config).model_fields.items() if not f.is_required() and f.default_factory is None}
    return sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k, defaults.get(k)) != now.get(k))


def load_trained_params(decomposition: Decomposition, tensors: dict[str, torch.Tensor]) -> None:
    for k, p in decomposition.named_parameters():
        if p.requires_grad:
            p.data.copy_(tensors[f"params.{k}"])


def checkpoint_meta(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no decompose checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("state", "{}"))
    except (SafetensorError, OSError) as e:
        raise UserError(f"checkpoint {path} is not a valid safetensors file ({e}); delete it to start afresh") from e
    if "step" not in meta:
        raise UserError(f"{path} is not a decompose checkpoint (no training state in its metadata)")
    return meta


def read_checkpoint(path: Path, config, world_size: int, ignore: set[str]) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint written by a run with this config (fields in `ignore`
    may differ) and this many processes."""
    meta = checkpoint_meta(path)
    changed = changed_fields(meta["config"], config, ignore)
    if changed:
        raise UserError(f"checkpoint {path} was written with a different config ({', '.join(changed)}); resume with the same config or use a new output folder")
    if meta["world_size"] != world_size:
        raise UserError(f"checkpoint {path} was written by {meta['world_size']} processes, this run has {world_size}; resume with the same number")
    return load_safetensors(path), meta


def prepare_logs(out_dir: Path, step: int, resuming: bool) -> None:
    """A resumed run drops log rows written after its checkpoint (they will be recomputed)."""
    from .._io import write_text_atomic

    for name in (TRAIN_LOG_NAME, EVAL_LOG_NAME):
        path = out_dir / name
        if not resuming:
            if path.exists():
                path.unlink()
            continue
        # train rows are stamped after their step ran, eval rows before it
        keep = [r for r in read_jsonl(path) if (r["step"] <= step if name == TRAIN_LOG_NAME else r["step"] < step)]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))
