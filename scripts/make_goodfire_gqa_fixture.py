"""Record what Goodfire's own LlamaSimpleMLP computes for a grouped-query-attention target.

Writes tests/fixtures/goodfire_gqa/: the pretraining-run layout their trainer writes
(`model_config.yaml` + `checkpoints/model_step_1.pt`, the state dict as torch.save stores it)
and `reference.safetensors` (`input_ids` and the logits *their* forward returns for them), plus
`provenance.json` (their commit and file hashes). tests/test_goodfire_import.py rebuilds the target
in comptune from those files and checks it computes the same logits.

Their code is not part of this project; extract it first (the files at torch-era commit b675341):

    mkdir -p /tmp/goodfire && git --git-dir=<mirror of goodfire-ai/param-decomp> archive b675341 \\
        nano_param_decomp/run.py param_decomp_lab/experiments/lm/pretrain/models/llama_simple_mlp.py | tar -x -C /tmp/goodfire
    .venv/bin/python scripts/make_goodfire_gqa_fixture.py --goodfire-src /tmp/goodfire
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "goodfire_gqa"
# 2 layers, 4 query heads sharing 2 key/value heads: the GQA layout of their pretrain configs
MODEL_CONFIG = dict(model_type="LlamaSimpleMLP", block_size=16, vocab_size=64, n_layer=2, n_head=4, n_embd=32, n_intermediate=64,
                    rotary_dim=8, n_ctx=16, n_key_value_heads=2, use_grouped_query_attention=True, flash_attention=False,
                    mlp_bias=False, attn_bias=False, rotary_adjacent_pairs=False, rotary_base=10000, rms_norm_eps=1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goodfire-src", type=Path, required=True)
    ap.add_argument("--goodfire-commit", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_vs_goodfire import REFERENCE_COMMIT, load_reference  # the shims that load their two files

    ref = load_reference(args.goodfire_src, args.goodfire_commit or REFERENCE_COMMIT)
    mm = ref.model_module
    torch.manual_seed(0)
    theirs = mm.LlamaSimpleMLP(mm.LlamaSimpleMLPConfig(**MODEL_CONFIG)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as the benchmark: random norm scales and sharper attention, so a layout error shows in the logits
        for name, p in theirs.named_parameters():
            if name.endswith(("rms_1.weight", "rms_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
                p.mul_(10.0)
    sd = theirs.state_dict()
    assert sd["h.0.attn.k_proj.weight"].shape == (16, 32) and sd["h.0.attn.q_proj.weight"].shape == (32, 32)  # GQA: narrower k/v
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = theirs(ids)[0]  # their forward returns (logits, loss)
    (OUT / "checkpoints").mkdir(parents=True, exist_ok=True)
    (OUT / "model_config.yaml").write_text(yaml.safe_dump(MODEL_CONFIG, sort_keys=True))
    torch.save({k: v.clone() for k, v in sd.items()}, OUT / "checkpoints" / "model_step_1.pt")
    save_file({"input_ids": ids, "logits": logits.contiguous()}, str(OUT / "reference.safetensors"))
    (OUT / "provenance.json").write_text(json.dumps({
        "made_by": "scripts/make_goodfire_gqa_fixture.py", "their_commit": ref.commit, "commit_source": ref.commit_source,
        "their_files_sha256": ref.sha256, "shims": ref.shims, "torch": torch.__version__,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
