"""`comptune tune` end to end on a tiny model, tokenizer and decomposition written to disk."""

import json

import pytest
import torch

from comptune.cli import main
from comptune.decomposition import CIConfig, Decomposition
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tokenizer import train_tokenizer
from comptune.tuning import load_adapter

torch.set_num_threads(1)

GERMAN = "Die Kommission hat den Vorschlag geprüft und die Mitgliedstaaten haben ihn angenommen. " * 20
ENGLISH = "The committee has examined the proposal and the member states have adopted it. " * 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_cli")
    tokenizer = train_tokenizer([GERMAN, ENGLISH], vocab_size=300)
    torch.manual_seed(0)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=300, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=64))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(1)
    Decomposition.create(model, {"h.1.attn.v_proj": 16}, CIConfig(type="layerwise_mlp")).save(root / "dec")
    (root / "de.txt").write_text(GERMAN)
    (root / "en.txt").write_text(ENGLISH)
    return root


def run(files, out, *extra):
    return main(["tune", "--model", str(files / "model"), "--forget", str(files / "de.txt"), "--retain", str(files / "en.txt"),
                 "--budget", "8", "--max-steps", "4", "--seq-len", "32", "--out", str(out), "--no-progress", *extra])


def test_component_scale_run_saves_adapter_lora_and_result(files, tmp_path):
    out = tmp_path / "run"
    assert run(files, out, "--keys", "h.1.attn.v_proj:3", "--decomposition", str(files / "dec"), "--lr", "0.1", "--export-lora") == 0
    saved = json.loads((out / "tune_result.json").read_text())
    result = saved["result"]
    assert result["steps"] == 4 and result["forget_tokens"] == 8 and result["config"]["selection"]["keys"] == ["h.1.attn.v_proj:3"]
    assert saved["inputs"]["decomposition"] == str(files / "dec") and "torch" in saved["versions"]
    meta = json.loads((out / "edit" / "adapter_config.json").read_text())
    assert meta["decomposition"]["path"] == str(files / "dec") and meta["scales"] == result["final_scalars"]
    assert (out / "edit_lora" / "adapter_model.safetensors").is_file()
    model = ComptuneLMForCausalLM.from_pretrained(files / "model")
    assert load_adapter(out / "edit", model).scales() == result["final_scalars"]


def test_lora_run_and_bad_input(files, tmp_path, capsys):
    out = tmp_path / "lora"
    assert run(files, out, "--method", "lora", "--lora-rank", "1") == 0
    assert json.loads((out / "edit" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert run(files, out, "--method", "lora") == 2  # finished run: not overwritten
    assert "already holds a finished run" in capsys.readouterr().err
    big = tmp_path / "big"
    assert run(files, big, "--method", "lora", "--budget", "100000") == 2
    assert "use a budget of at most" in capsys.readouterr().err
    assert not big.exists()  # no partial result files
    assert run(files, tmp_path / "x", "--method", "lora", "--export-lora") == 2
    assert "--export-lora applies to ungated scalar edits" in capsys.readouterr().err
    assert run(files, tmp_path / "y", "--method", "lora", "--seq-len", "65") == 2
    assert "exceeds the model's context of 64 tokens" in capsys.readouterr().err


def test_adapter_merge_and_export_reproduce_the_edit(files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert run(files, out, "--keys", "h.1.attn.v_proj:3", "h.1.attn.v_proj:5", "--decomposition", str(files / "dec"), "--lr", "0.3") == 0
    assert main(["adapter", "merge", str(out / "edit"), "--model", str(files / "model"), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").stat().st_mode & 0o777 == 0o644  # shareable, as every artifact
    assert main(["adapter", "export-lora", str(out / "edit"), "--model", str(files / "model"), "--out", str(tmp_path / "lora")]) == 0
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    edited = load_adapter(out / "edit", ComptuneLMForCausalLM.from_pretrained(files / "model")).eval()
    expected = edited(input_ids=ids).logits
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    lora = PeftModel.from_pretrained(ComptuneLMForCausalLM.from_pretrained(files / "model"), tmp_path / "lora").eval()
    base = ComptuneLMForCausalLM.from_pretrained(files / "model").eval()(ids).logits
    assert not torch.allclose(expected, base, atol=1e-4)  # the edit does something
    assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
    assert torch.allclose(lora(input_ids=ids).logits, expected, atol=1e-5)
