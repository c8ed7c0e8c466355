"""Data-parallel decomposition: `decompose` under `torchrun --nproc_per_node=2` on CPU (gloo)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from comptune.decomposition import Decomposition
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from comptune.decomposition.train import DecomposeConfig, decompose
    from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

    out_dir, stop = sys.argv[1], (int(sys.argv[2]) if len(sys.argv) > 2 else None)
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32))
    blocks = torch.randint(0, 64, (32, 12), generator=torch.Generator().manual_seed(1))
    config = DecomposeConfig(patterns={"h.*.attn.v_proj": 16, "h.1.mlp.*": 24}, ci={"d_model": 32, "n_blocks": 1, "n_heads": 2, "d_ff": 64},
                             steps=6, batch_size=4, lr=1e-3, faithfulness_warmup_steps=5, log_every=1, checkpoint_every=100)
    d = decompose(model, blocks, config, out_dir, resume=True, stop_at_step=stop)
    rank = dist.get_rank()
    # what this rank ended with: components must agree across ranks (gradients are averaged)
    state = {p: d.get_components(p).V.sum().item() + d.get_components(p).U.sum().item() for p in d.module_paths}
    json.dump({"rank": rank, "world_size": dist.get_world_size(), "components": state}, open(f"{out_dir}/rank{rank}.json", "w"))
    dist.destroy_process_group()
    """
)


def _torchrun(tmp_path, out_dir, *args):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out_dir), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def _tiny():
    torch.manual_seed(0)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32))


@pytest.mark.slow
def test_two_process_training_syncs_and_resumes(tmp_path):
    full = _torchrun(tmp_path, tmp_path / "full")
    assert [r["world_size"] for r in full] == [2, 2]
    assert full[0]["components"] == pytest.approx(full[1]["components"], rel=1e-6)  # DDP kept ranks identical
    config = json.loads((tmp_path / "full" / "decompose_config.json").read_text())
    assert config["world_size"] == 2
    d = Decomposition.load(tmp_path / "full", _tiny())
    assert d.provenance["completed"] and d.provenance["world_size"] == 2
    rows = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes

    # stop after 3 steps, resume: the same losses and components as the uninterrupted run
    _torchrun(tmp_path, tmp_path / "split", 3)
    split = _torchrun(tmp_path, tmp_path / "split")
    resumed = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert split[0]["components"] == pytest.approx(full[0]["components"], rel=1e-5)
