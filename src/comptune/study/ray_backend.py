"""A sweep's runs as Ray tasks (`comptune sweep CONFIG --ray [ADDRESS]`).

Each run is one task with the config's `resources`; it trains and evaluates in a Ray worker and
returns its row and its edit's files. Only the driver writes (runs.jsonl, edits/, chosen.json), so
resume, growth and the lr choice are the local sweep's, row for row: the same run ids, the same
rows. A task that fails is retried (`resources.max_retries`); a run that still fails is reported and
left out of runs.jsonl, so the next `comptune sweep` retries it, and the sweep ends with an error
naming it instead of choosing settings over an incomplete group.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import UserError
from .rows import RunRow

if TYPE_CHECKING:
    from .sweep import StudyInputs

_inputs_cache: dict[str, StudyInputs] = {}  # per Ray worker process: inputs loaded once per sweep config


def run_remote(config, spec, base: dict) -> tuple[RunRow, dict[str, bytes]]:
    """One run inside a Ray worker: (row, {file name: bytes} of its saved edit)."""
    import torch

    from .sweep import _run_one, load_inputs

    key = config.digest()
    if key not in _inputs_cache:
        _inputs_cache.clear()
        _inputs_cache[key] = load_inputs(config, "cuda" if config.resources.gpus_per_run > 0 else "cpu")
    torch.set_num_threads(max(1, int(config.resources.cpus_per_run)))
    with tempfile.TemporaryDirectory() as tmp:
        row = _run_one(config, spec, _inputs_cache[key], base, Path(tmp))
        files = {}
        if row.edit:
            edit = Path(tmp) / row.edit
            files = {p.name: p.read_bytes() for p in sorted(edit.iterdir()) if p.is_file()}
    return row, files


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local one (None)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'comptune[ray]' (or run without --ray: --workers N runs locally)") from None
    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError) as e:
        raise UserError(f"the Ray cluster at {address} does not answer ({str(e).splitlines()[0]}); start one with `ray start --head` "
                        "there, give its address (host:6379), or use --ray without an address for a local cluster") from None


def ray_rows(config, todo: list, base: dict, *, log: Callable[[str], None] = print,
             task: Callable = run_remote) -> Iterator[tuple[RunRow, dict[str, bytes]]]:
    """(row, edit files) of each run in `todo` as its task finishes; `task` is the function each Ray
    task runs (tests give one that fails on purpose). Raises after the last task if any run failed."""
    import ray

    r = config.resources
    remote = ray.remote(num_cpus=r.cpus_per_run, num_gpus=r.gpus_per_run, max_retries=r.max_retries, retry_exceptions=True)(task)
    pending = {remote.remote(config, spec, base): spec for spec in todo}
    failed = []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(ref)
        try:
            yield ray.get(ref)
        except ray.exceptions.RayError as e:
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            failed.append((spec.run_id, cause))
            log(f"run {spec.run_id} ({spec.name}) failed after {1 + r.max_retries} tries: {cause}")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed after {1 + r.max_retries} tries each ({', '.join(rid for rid, _ in failed)}); "
                        "the finished runs are kept: run the same sweep again to retry them")
