"""A GPT-2-shaped and a Llama-shaped Hugging Face model (tiny local configs, random weights) go
end to end with the bundled model's preset: decompose without writing patterns, inspect, tune one
subcomponent, merge and load the merged model with plain transformers, export the exact PEFT LoRA."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from comptune.cli import main
from comptune.decomposition import Decomposition
from comptune.model.families import FAMILIES, translate_globs, translate_patterns
from comptune.tokenizer import train_tokenizer
from comptune.tuning import load_adapter

torch.set_num_threads(1)
GERMAN = "Die Kommission hat den Vorschlag geprüft und die Mitgliedstaaten haben ihn angenommen. " * 12
ENGLISH = "The committee has examined the proposal and the member states have adopted it. " * 24

MODELS = {
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=64)),
             "transformer.h.1.mlp.c_proj"),
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)),
              "model.layers.1.mlp.down_proj"),
}


def test_the_bundled_preset_translates_to_each_family():
    preset = {"h.*.attn.q_proj": 256, "h.*.attn.k_proj": 256, "h.*.attn.v_proj": 256, "h.*.attn.o_proj": 256,
              "h.*.mlp.c_fc": 512, "h.*.mlp.down_proj": 512, "h.0.custom": 7}
    assert translate_patterns(preset, "gpt2") == {"transformer.h.*.attn.c_attn": 256, "transformer.h.*.attn.c_proj": 256,
                                                  "transformer.h.*.mlp.c_fc": 512, "transformer.h.*.mlp.c_proj": 512, "h.0.custom": 7}
    llama = translate_patterns(preset, "qwen2")
    assert llama["model.layers.*.mlp.gate_proj"] == llama["model.layers.*.mlp.up_proj"] == 512 and len(llama) == 8
    assert set(translate_patterns(preset, "gpt_neox")) >= {"gpt_neox.layers.*.attention.query_key_value", "gpt_neox.layers.*.mlp.dense_4h_to_h"}
    assert translate_globs({"h.*.mlp.*": "neurons", "h.*.attn.*": "svd"}, "llama") == {"model.layers.*.mlp.*": "neurons", "model.layers.*.self_attn.*": "svd"}
    assert set(FAMILIES) >= {"gpt2", "gpt_neox", "llama", "qwen2", "comptune_lm"}


@pytest.mark.parametrize("family", list(MODELS))
def test_family_end_to_end_through_the_cli(family, tmp_path, capsys):
    make, mlp_out = MODELS[family]
    torch.manual_seed(0)
    model = make().eval()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    train_tokenizer([GERMAN, ENGLISH], vocab_size=300).save_pretrained(model_dir)
    (tmp_path / "de.txt").write_text(GERMAN)
    (tmp_path / "en.txt").write_text(ENGLISH)
    (tmp_path / "small.yaml").write_text(
        "steps: 2\nbatch_size: 2\nfaithfulness_warmup_steps: 2\neval_every: 1000\ncheckpoint_every: 1000\n"
        "ci: {d_model: 16, n_blocks: 1, n_heads: 2, d_ff: 32}\ninit: {'h.*.mlp.*': neurons}\n")
    dec = tmp_path / "dec"
    # the small preset names the bundled model's modules; it decomposes this family without patterns
    assert main(["decompose", "--model", str(model_dir), "--data", str(tmp_path / "en.txt"), "--preset", "small",
                 "--config", str(tmp_path / "small.yaml"), "--block-len", "16", "--out", str(dec)]) == 0
    assert f"module patterns for the {family} family" in capsys.readouterr().err
    meta = json.loads((dec / "decomposition.json").read_text())
    assert mlp_out in meta["modules"] and all(not p.startswith("h.") for p in meta["modules"])
    # the init globs followed the translation: the family's MLP matrices start from their hidden units
    init = json.loads((dec / "decompose_config.json").read_text())["config"]["init"]
    assert init == {f"{FAMILIES[family].blocks}.mlp.*": "neurons"}

    key = f"{mlp_out}:3"
    assert main(["inspect", "--decomposition", str(dec), "--model", str(model_dir), "--datasets", str(tmp_path / "de.txt"), str(tmp_path / "en.txt"),
                 "--target", str(tmp_path / "de.txt"), "--reference", str(tmp_path / "en.txt"), "--keys", key, "--blocks", "4",
                 "--block-len", "16", "--out", str(tmp_path / "inspect.json")]) == 0
    inspected = json.loads((tmp_path / "inspect.json").read_text())["components"][key]
    assert inspected["label"] and inspected["label_evidence"]["profile"]  # datasets given as files: languages identified
    run = tmp_path / "tune"
    assert main(["tune", "--model", str(model_dir), "--decomposition", str(dec), "--keys", key, "--forget", str(tmp_path / "de.txt"),
                 "--retain", str(tmp_path / "en.txt"), "--budget", "8", "--max-steps", "3", "--seq-len", "16", "--lr", "0.5",
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["adapter", "merge", str(run / "edit"), "--model", str(model_dir), "--out", str(tmp_path / "merged")]) == 0
    assert main(["adapter", "export-lora", str(run / "edit"), "--model", str(model_dir), "--out", str(tmp_path / "lora")]) == 0

    from peft import PeftModel

    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    live = load_adapter(run / "edit", AutoModelForCausalLM.from_pretrained(model_dir)).eval()
    with torch.no_grad():
        expected = live(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()  # plain transformers, no comptune, no remote code
        lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "lora").eval()
        assert not torch.allclose(expected, base, atol=1e-5)
        assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
        assert torch.allclose(lora(input_ids=ids).logits, expected, atol=1e-5)
    Decomposition.load(dec, AutoModelForCausalLM.from_pretrained(model_dir))  # the saved decomposition belongs to the saved model


def test_an_unknown_family_without_patterns_is_refused_with_the_fix(tmp_path):
    from comptune.decomposition.train import DecomposeConfig, config_for_model

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match=r"no module-name preset for it \(known: .*gpt2.*\); give `patterns:`"):
        config_for_model(DecomposeConfig.preset("small"), Odd())
