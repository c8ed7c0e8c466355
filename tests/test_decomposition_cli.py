"""`comptune decompose` and `comptune decomposition report` end to end on a tiny model written to disk."""

import json

import pytest
import torch
from safetensors.torch import save_file

from comptune.cli import main
from comptune.decomposition import Decomposition
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tokenizer import train_tokenizer

torch.set_num_threads(1)

TEXT = "The committee has examined the proposal and the member states have adopted it. Die Kommission hat geprüft. " * 30


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("decompose_cli")
    tokenizer = train_tokenizer([TEXT], vocab_size=300)
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=300, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=64))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.txt").write_text(TEXT)
    (root / "config.yaml").write_text(
        "patterns: {'h.*.attn.v_proj': 16, 'h.1.mlp.c_fc': 24}\n"
        "ci: {d_model: 32, n_heads: 2, d_ff: 64}\n"  # refines the preset's CI (n_blocks stays 2)
        "steps: 4\nbatch_size: 2\nfaithfulness_warmup_steps: 3\neval_every: 100\npgd_eval_steps: 2\n"
    )
    return root


def test_decompose_then_report(files, tmp_path, capsys):
    out = tmp_path / "dec"
    args = ["decompose", "--model", str(files / "model"), "--data", str(files / "text.txt"), "--eval-data", str(files / "text.txt"),
            "--preset", "small", "--config", str(files / "config.yaml"), "--out", str(out), "--block-len", "16", "--eval-blocks", "2"]
    assert main(args) == 0
    meta = json.loads((out / "decomposition.json").read_text())
    assert meta["config"]["ci"]["n_blocks"] == 2 and meta["config"]["ci"]["d_model"] == 32 and meta["config"]["lr"] == 3e-4
    assert meta["target"]["name_or_path"] == str(files / "model")
    assert json.loads((out / "quality.json").read_text())["step"] == 4
    # a second run into the same folder must be explicit about resuming; resuming a finished run is a no-op
    assert main(args) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0

    blocks = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(0))
    save_file({"blocks": blocks}, str(tmp_path / "blocks.safetensors"))
    capsys.readouterr()
    # the target folder is the one recorded in the decomposition
    assert main(["decomposition", "report", str(out), "--data", str(tmp_path / "blocks.safetensors"),
        "--pgd-steps", "2", "--out", str(tmp_path / "q.json")]) == 0
    printed = capsys.readouterr().out
    assert "unmasked" in printed and "PGD KL" in printed and "total" in printed
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["report"]["n_tokens"] == 30 and "torch" in saved["versions"]
    model = ComptuneLMForCausalLM.from_pretrained(files / "model")
    final = Decomposition.load(out, model)
    assert final.module_paths == ["h.0.attn.v_proj", "h.1.attn.v_proj", "h.1.mlp.c_fc"]

    # a snapshot of the run's checkpoint is the same decomposition as the one the run saved
    assert main(["decomposition", "snapshot", str(out), "--model", str(files / "model"), "--out", str(tmp_path / "snap")]) == 0
    snap = Decomposition.load(tmp_path / "snap", model)
    assert snap.provenance["step"] == 4 and snap.provenance["completed"]
    for (name, a), (_, b) in zip(final.state_dict().items(), snap.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_input_is_one_line(files, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    assert main(["decompose", "--model", str(files / "model"), "--data", str(files / "text.txt"), "--out", str(tmp_path / "o"),
        "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "stepz" in capsys.readouterr().err
    save_file({"tokens": torch.zeros(2, 3, dtype=torch.long)}, str(tmp_path / "b.safetensors"))
    assert main(["decompose", "--model", str(files / "model"), "--data", str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "no `blocks` tensor" in capsys.readouterr().err
    assert main(["decomposition", "report", str(tmp_path / "missing"), "--data", "x"]) == 2
    assert "decomposition.json is missing" in capsys.readouterr().err


def test_report_by_dataset_and_task_bar_then_init_from(files, tmp_path, capsys):
    """SEMANTICS S3.3, SEMANTICS S1.2. The report's per-dataset faithfulness equals the CI-masked CE computed directly; the task bar
    scans the decomposition's subcomponents and says whether one reaches chance on the target;
    `decompose --init-from` continues from the saved decomposition."""
    out = tmp_path / "dec"
    base = ["--model", str(files / "model"), "--data", str(files / "text.txt"), "--preset", "small", "--config", str(files / "config.yaml"),
            "--block-len", "16"]
    assert main(["decompose", *base, "--out", str(out)]) == 0
    de, en = tmp_path / "de.txt", tmp_path / "en.txt"
    de.write_text("Die Kommission hat geprüft. " * 40)
    en.write_text("The committee has examined the proposal. " * 40)
    capsys.readouterr()
    assert main(["decomposition", "report", str(out), "--data", str(files / "text.txt"), "--block-len", "16", "--blocks", "4", "--pgd-steps", "1",
                 "--datasets", str(de), str(en), "--target", str(de), "--reference", str(en), "--scan-blocks", "2", "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "faithfulness by dataset" in printed and "bar:" in printed
    report = json.loads((tmp_path / "r.json").read_text())["report"]
    model = ComptuneLMForCausalLM.from_pretrained(files / "model")
    dec = Decomposition.load(out, model)
    from comptune.decomposition.cli import load_blocks
    from comptune.decomposition.report import next_token_ce_sum
    from comptune.model.loading import load_tokenizer

    blocks = load_blocks(str(de), load_tokenizer(files / "model"), 16, 4)
    with torch.no_grad():
        ci = dec.causal_importance(blocks)
        masked = next_token_ce_sum(dec.masked_logits(blocks, ci.lower), blocks) / (blocks.shape[0] * 15)
    assert report["by_dataset"][str(de)]["ci_masked"] == pytest.approx(masked, abs=1e-5)
    bar = report["task_bar"]
    assert bar["bar"]["gain_to_chance"] == pytest.approx(bar["chance"] - bar["base_ce"][str(de)])
    assert bar["bar"]["met"] == (bar["bar"]["best_gain"] >= bar["bar"]["gain_to_chance"])
    assert bar["best"][0]["best_damage"] <= 0.1 and bar["best"][0]["key"] == bar["bar"]["best_key"]
    assert main(["decomposition", "report", str(out), "--data", str(files / "text.txt"), "--target", str(de)]) == 2
    assert "--target and --reference go together" in capsys.readouterr().err

    assert main(["decompose", *base, "--out", str(tmp_path / "cont"), "--init-from", str(out)]) == 0
    assert json.loads((tmp_path / "cont" / "decomposition.json").read_text())["provenance"]["init_from"]["path"] == str(out)


def test_decompose_config_files_may_extend_each_other(tmp_path):
    from comptune.decomposition.cli import _load_config

    (tmp_path / "base.yaml").write_text("steps: 7\nlr: 0.002\nci: {n_blocks: 1}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nlr: 0.003\n")
    config = _load_config("small", tmp_path / "child.yaml")
    assert (config.steps, config.lr, config.ci.n_blocks) == (7, 0.003, 1)
