"""Bundled model architecture, HF interoperability, tokenizer, pretraining resume."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.model.pretrain import PretrainConfig, pretrain, tokenizer_sample
from comptune.tokenizer import train_tokenizer

TINY = dict(vocab_size=300, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return ComptuneLMForCausalLM(ComptuneLMConfig(**TINY)).eval()


def test_module_names_match_the_reference_study(tiny_model):
    names = {n for n, _ in tiny_model.named_parameters()}
    for i in range(2):
        for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.c_fc", "mlp.down_proj", "rms_1", "rms_2"):
            assert f"h.{i}.{m}.weight" in names
    assert tiny_model.lm_head.weight is tiny_model.wte.weight  # tied


def test_forward_is_causal(tiny_model):
    x = torch.randint(0, 300, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 300
    a, b = tiny_model(x).logits, tiny_model(y).logits
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_padding_mask_matches_unpadded(tiny_model):
    x = torch.randint(1, 300, (1, 10))
    # right padding with a mask must not change the real positions
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 3)], 1).long()
    assert torch.allclose(tiny_model(x).logits, tiny_model(padded, attention_mask=mask).logits[:, :10], atol=1e-5)


def test_save_load_generate_round_trip_without_comptune_registry(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_comptune.py").is_file()  # copied so transformers can load it alone
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"].endswith("ComptuneLMForCausalLM")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    x = torch.randint(0, 300, (2, 7))
    assert torch.allclose(tiny_model(x).logits, loaded(x).logits, atol=1e-6)
    g1 = tiny_model.generate(x[:1], max_new_tokens=6, do_sample=False)
    g2 = loaded.generate(x[:1], max_new_tokens=6, do_sample=False)
    assert g1.shape == (1, 13) and torch.equal(g1, g2)


def test_labels_loss_is_next_token_ce(tiny_model):
    x = torch.randint(0, 300, (2, 9))
    out = tiny_model(x, labels=x)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected)


def test_too_long_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        tiny_model(torch.zeros(1, 33, dtype=torch.long))


def test_tokenizer_round_trip_multilingual():
    texts = ["Die Lösung liegt natürlich nahe.", "And, of course, the solution does not work.", "def f(x):\n    return x ** 2\n"] * 20
    tok = train_tokenizer(texts, vocab_size=400)
    for t in texts[:3] + ["ünïcödé — nicht im Training €"]:
        assert tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t
    assert tok.bos_token == tok.eos_token == "<|endoftext|>" and len(tok) <= 400
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", "  "], vocab_size=400)


def test_bundled_tokenizer_loads_with_plain_transformers_without_a_prompt():
    """The README's plain-transformers route, in a process that never imports comptune (importing it
    registers the model type, and nothing asks): without a flag transformers reads the model's
    config, whose auto_map makes it ask about running code; `trust_remote_code=False` asks nothing
    and gives the tokenizer comptune loads."""
    import subprocess
    import sys

    from comptune.corpus.bundle import bundled_model_dir
    from comptune.model.loading import load_tokenizer

    text = "Die Lösung liegt nahe. The solution is near. def f(x): return x"
    script = f"""
import builtins, json, sys
asked = []
builtins.input = lambda *question: asked.append(question) or "n"  # a user answering "no"
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained({str(bundled_model_dir())!r})
without_flag = len(asked)
tok = AutoTokenizer.from_pretrained({str(bundled_model_dir())!r}, trust_remote_code=False)
assert "comptune" not in sys.modules
print(json.dumps([without_flag, len(asked) - without_flag, tok({text!r})["input_ids"]]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    asked_without_flag, asked_with_flag, ids = json.loads(out.strip().splitlines()[-1])
    assert (asked_without_flag, asked_with_flag) == (1, 0)
    assert ids == load_tokenizer(bundled_model_dir())(text)["input_ids"]


def _streams():
    g = torch.Generator().manual_seed(1)
    return {"en": torch.randint(0, 300, (2000,), generator=g), "de": torch.randint(0, 300, (500,), generator=g)}


def test_pretrain_resume_continues_the_same_run(tmp_path):
    cfg = PretrainConfig(**{k: v for k, v in TINY.items()}, mix={"en": 0.9, "de": 0.1}, batch_size=4, warmup_steps=2,
                         max_steps=6, checkpoint_every=3, log_every=1)
    full = pretrain(cfg, tmp_path / "full", _streams(), resume=False)
    # the same run cut short by its wall-time limit after one step, then resumed
    pretrain(cfg.model_copy(update={"max_minutes": 0.0}), tmp_path / "split", _streams(), resume=False)
    assert json.loads((tmp_path / "split" / "checkpoint.json").read_text())["step"] == 1
    resumed = pretrain(cfg, tmp_path / "split", _streams(), resume=True)
    h_full = json.loads((tmp_path / "full" / "checkpoint.json").read_text())["history"]
    h_res = json.loads((tmp_path / "split" / "checkpoint.json").read_text())["history"]
    assert [r["loss"] for r in h_full] == [r["loss"] for r in h_res]
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_pretrain_resume_refuses_a_different_config(tmp_path):
    cfg = PretrainConfig(**TINY, mix={"en": 0.9, "de": 0.1}, batch_size=2, max_steps=2)
    pretrain(cfg, tmp_path, _streams())
    with pytest.raises(ValueError, match=r"different config \(lr\)"):
        pretrain(cfg.model_copy(update={"lr": 1e-4}), tmp_path, _streams())


def test_pretrain_rejects_tokenizer_model_mismatch(tmp_path):
    cfg = PretrainConfig(**TINY, mix={"en": 1.0}, max_steps=1)
    with pytest.raises(ValueError, match="tokenizer and model do not match"):
        pretrain(cfg, tmp_path, {"en": torch.full((100,), 500)})


def test_tokenizer_sample_follows_its_shares():
    texts = {"en": ["e" * 100] * 200, "de": ["d" * 100] * 200, "code": ["c" * 100] * 200}
    sample = tokenizer_sample(texts, {"en": 1, "de": 1, "code": 2}, n_chars=8000, seed=0)
    chars = {lang: sum(len(t) for t in sample if t[0] == lang[0]) for lang in texts}
    assert chars == {"en": 2000, "de": 2000, "code": 4000}
    # a language left out of the shares is left out of the sample
    assert not any(t[0] == "c" for t in tokenizer_sample(texts, {"en": 1, "de": 1}, 1000, 0))


def test_tokenizer_mix_must_name_trained_languages():
    with pytest.raises(ValueError, match=r"tokenizer_mix names \['fr'\], which are not in mix"):
        PretrainConfig(mix={"en": 1.0}, tokenizer_mix={"en": 1.0, "fr": 1.0})
    with pytest.raises(ValueError, match="tokenizer_mix must hold non-negative weights"):
        PretrainConfig(mix={"en": 1.0}, tokenizer_mix={"en": -1.0})


def test_shipped_model_carries_the_current_modeling_file():
    """The bundled model's copy of modeling_comptune.py (what transformers loads without comptune)
    must be the package's own: a change to the architecture file needs a re-saved bundle."""
    from pathlib import Path

    from comptune.corpus.bundle import bundled_model_dir
    from comptune.model import modeling_comptune

    shipped = bundled_model_dir() / "modeling_comptune.py"
    if not shipped.is_file():
        pytest.skip("bundled model not present")
    assert shipped.read_text() == Path(modeling_comptune.__file__).read_text()


def test_logits_are_read_from_every_output_convention():

    from comptune.model.outputs import logits_of

    t = torch.randn(1, 2, 3)
    assert logits_of(t) is t and logits_of((t, None)) is t
    assert logits_of(type("Out", (), {"logits": t})()) is t
    with pytest.raises(TypeError, match="cannot find logits in a model output of type dict"):
        logits_of({"x": t})


def test_grouped_query_attention_is_multi_head_attention_with_shared_kv_heads():
    """n_kv_head = 2 for 4 query heads equals plain attention whose k/v weights repeat each KV head for its 2 query heads."""
    torch.manual_seed(0)
    gqa = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=50, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_mlp=64, n_ctx=16)).eval()
    mha = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=50, n_layer=2, d_model=32, n_head=4, d_mlp=64, n_ctx=16)).eval()
    sd = gqa.state_dict()
    for k, v in sd.items():
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            sd[k] = v.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(sd)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(gqa(ids).logits, mha(ids).logits, atol=1e-5)

    with pytest.raises(ValueError, match="n_head=4 must be a multiple of n_kv_head=3"):
        ComptuneLMConfig(d_model=32, n_head=4, n_kv_head=3)
