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


def test_attack_cli_writes_its_result_beside_not_into_the_edit(files, tmp_path, capsys):
    """SEMANTICS S8.2."""
    out = tmp_path / "run"
    assert run(files, out, "--keys", "h.1.attn.v_proj:3", "--decomposition", str(files / "dec"), "--lr", "0.3") == 0
    # attacker and evaluation German must be different text from each other and from the edit's forget text
    (tmp_path / "de_eval.txt").write_text("Der Rat hat heute beschlossen, die Verordnung zu ändern und neue Regeln einzuführen. " * 6)
    (tmp_path / "de_attack.txt").write_text("Wir haben im Ausschuss lange über diese Frage gesprochen, aber keine Einigung erzielt. " * 6)
    (tmp_path / "attack.yaml").write_text("block_len: 32\neval_blocks: 2\nseq_len: 32\nquantisations: [int8]\n")
    def attack(out_dir, attack_data=tmp_path / "de_attack.txt", tokens="16"):
        return main(["attack", str(out / "edit"), "--model", str(files / "model"), "--config", str(tmp_path / "attack.yaml"),
                     "--target", str(tmp_path / "de_eval.txt"), "--reference", str(files / "en.txt"), "--attack-data", str(attack_data),
                     "--tokens", tokens, "--attackers", "full", "--lrs", "1e-3", "--max-steps", "4", "--eval-every", "2", "--out", str(out_dir)])

    assert attack(out / "edit" / "attack") == 2
    assert "lies inside the edit's folder" in capsys.readouterr().err
    assert attack(tmp_path / "attack") == 0
    saved = json.loads((tmp_path / "attack" / "attack.json").read_text())
    assert saved["config"]["tokens"] == [16] and saved["seed"] == 0 and "torch" in saved["versions"]
    assert saved["inputs"]["checked_against_edit_forget_tokens"] == str(files / "de.txt")
    (row,) = saved["result"]["relearning"]
    assert row["attacker"] == "full" and row["curve"]["steps"] == [0, 2, 4]
    assert (tmp_path / "attack" / "attack.png").is_file()
    assert sorted(p.name for p in (out / "edit").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # attacker text holding the edit's own forget tokens (128 tokens of the repeated sentence hold every span of it) is
    # refused before any compute
    assert attack(tmp_path / "leak", attack_data=files / "de.txt", tokens="128") == 2
    assert "shares a 9-token span with the edit's forget tokens" in capsys.readouterr().err  # the whole 8-token budget + context
    assert not (tmp_path / "leak").exists()


def test_adapter_merge_at_a_dose(files, tmp_path, capsys):
    """SEMANTICS S2.4."""
    out = tmp_path / "run"
    assert run(files, out, "--keys", "h.1.attn.v_proj:3", "--decomposition", str(files / "dec"), "--lr", "0.3") == 0
    args = ["adapter", "merge", str(out / "edit"), "--model", str(files / "model")]
    assert main([*args, "--dose", "0", "--out", str(tmp_path / "d0")]) == 0
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    base = ComptuneLMForCausalLM.from_pretrained(files / "model").eval()(ids).logits
    assert torch.equal(ComptuneLMForCausalLM.from_pretrained(tmp_path / "d0").eval()(ids).logits, base)
    assert main([*args, "--dose", "2", "--out", str(tmp_path / "d2")]) == 2
    assert "dose 2.0 is outside [0.0, 1.5]" in capsys.readouterr().err and not (tmp_path / "d2").exists()
