"""Held-out CE (hand-computable case, first-token exclusion), rollouts, safe model loading, CLI smoke."""

import json
import math

import pytest
import torch
import torch.nn as nn

from comptune.cli import main
from comptune.evaluation import EvalResult, check_vocab, evaluate_ce, rollouts, rollouts_markdown
from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.model.loading import load_model_and_tokenizer
from comptune.tokenizer import train_tokenizer

SENTENCES = ["the cat sat on the mat.", "the dog sat on the log.", "der Hund schläft im Garten.", "le chat dort."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared with a training job
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES * 10, vocab_size=300)


def tiny_model(vocab_size: int, seed: int = 0) -> ComptuneLMForCausalLM:
    torch.manual_seed(seed)
    cfg = ComptuneLMConfig(vocab_size=vocab_size, n_layer=2, d_model=32, n_head=2, d_mlp=64, n_ctx=32)
    return ComptuneLMForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class ConstantLogits(nn.Module):
    """Predicts the distribution p = (1/2, 1/4, 1/8, 1/8) at every position, whatever the input."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.5, 0.25, 0.125, 0.125]).log())

    def forward(self, input_ids):
        return self.logits.expand(*input_ids.shape, 4)


def test_ce_by_hand_excludes_the_first_token():
    # targets are tokens 1..T-1; the first tokens (3, costing ln 8 each) are never scored
    """SEMANTICS S5.1."""
    blocks = torch.tensor([[3, 0, 1], [3, 0, 0]])
    result = evaluate_ce(ConstantLogits(), {"d": blocks}, batch_size=1)
    expected = (math.log(2) + math.log(4) + math.log(2) + math.log(2)) / 4
    assert result.ce["d"] == pytest.approx(expected, abs=1e-6)
    assert result.datasets["d"].tokens == 4 and result.datasets["d"].sequences == 2
    assert result.vocab_size == 4 and result.chance == pytest.approx(math.log(4))
    assert result.forward_tokens == 6


def test_ce_matches_the_models_own_loss_and_is_batch_size_invariant(tokenizer):
    model = tiny_model(len(tokenizer))
    blocks = torch.randint(0, len(tokenizer), (5, 16), generator=torch.Generator().manual_seed(0))
    a = evaluate_ce(model, {"x": blocks, "y": blocks[:2]}, batch_size=2)
    b = evaluate_ce(model, {"x": blocks}, batch_size=16)
    with torch.no_grad():
        reference = model(blocks, labels=blocks).loss.item()  # HF convention: labels shifted inside
    assert a.ce["x"] == pytest.approx(reference, abs=1e-5)
    assert b.ce["x"] == pytest.approx(a.ce["x"], abs=1e-6)
    assert a.datasets["x"].tokens == 5 * 15 and a.vocab_size == len(tokenizer)
    assert not model.training


def test_training_flag_is_restored_and_bad_ids_are_named(tokenizer):
    model = tiny_model(len(tokenizer)).train()
    evaluate_ce(model, {"x": torch.zeros(1, 4, dtype=torch.long)})
    assert model.training
    with pytest.raises(ValueError, match=rf"token ids in \[0, {len(tokenizer)}\].*vocabulary has {len(tokenizer)}"):
        evaluate_ce(model, {"x": torch.tensor([[0, len(tokenizer)]])})
    with pytest.raises(ValueError, match=r"LongTensor \[N >= 1, T >= 2\]"):
        evaluate_ce(model, {"x": torch.zeros(3, 1, dtype=torch.long)})


def test_result_table_and_json_round_trip(tmp_path):
    result = evaluate_ce(ConstantLogits(), {"first": torch.tensor([[3, 0, 1]]), "second": torch.tensor([[0, 2, 3]])})
    table = result.table()
    assert "first" in table and "second" in table and "chance ln|V|" in table and "tokens/s" in table
    result.save_json(tmp_path / "eval.json")
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["ce"]["second"] == pytest.approx(math.log(8))
    assert data["config"]["batch_size"] == 16 and "torch" in data["versions"]
    assert EvalResult.load_json(tmp_path / "eval.json").ce == result.ce


def test_check_vocab_names_both_sizes(tokenizer):
    check_vocab(tokenizer, tiny_model(len(tokenizer) + 7))  # a padded model vocabulary is fine
    with pytest.raises(ValueError, match=rf"ids up to {len(tokenizer) - 1} \({len(tokenizer)} tokens\).*has 100 entries"):
        check_vocab(tokenizer, tiny_model(100))


def test_greedy_rollout_is_the_argmax_continuation(tokenizer):
    model = tiny_model(len(tokenizer))
    rows = rollouts({"m": model}, tokenizer, ["the cat"], max_new_tokens=5)
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode("the cat", add_special_tokens=False)]])
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert rows[0]["token_ids"]["m"] == ids[0, -5:].tolist()
    assert rows[0]["continuations"]["m"] == tokenizer.decode(ids[0, -5:], skip_special_tokens=True)


def test_sampled_rollouts_are_seeded_and_leave_the_global_rng_alone(tokenizer):
    models = {"a": tiny_model(len(tokenizer), seed=0), "b": tiny_model(len(tokenizer), seed=1)}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    run = lambda seed: rollouts(models, tokenizer, ["the", "der"], max_new_tokens=8, greedy=False, seed=seed)  # noqa: E731
    first = run(0)
    assert torch.equal(torch.get_rng_state(), state)
    assert run(0) == first
    assert [r["token_ids"] for r in run(1)] != [r["token_ids"] for r in first]
    top1 = rollouts(models, tokenizer, ["the"], max_new_tokens=4, greedy=False, top_k=1, seed=5)
    greedy = rollouts(models, tokenizer, ["the"], max_new_tokens=4)
    assert top1[0]["token_ids"] == greedy[0]["token_ids"]  # top-k 1 sampling is greedy decoding


def test_rollouts_markdown_has_one_column_per_model():
    rows = [{"prompt": "a|b", "continuations": {"base": "x\ny", "edited": ""}, "token_ids": {}}]
    table = rollouts_markdown(rows).splitlines()
    assert table[0] == "| prompt | base | edited |"
    assert table[2] == "| a\\|b | x ⏎ y |   |"


def test_model_loading_refuses_pickles_and_names_bad_directories(tmp_path, model_dir, tokenizer):
    model, tok = load_model_and_tokenizer(model_dir)
    assert isinstance(model, ComptuneLMForCausalLM) and not model.training and len(tok) == len(tokenizer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "missing")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\)"):
        load_model_and_tokenizer(pickled)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in model_dir.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    weights = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is corrupt"):
        load_model_and_tokenizer(corrupt)

    small = tmp_path / "small"
    tiny_model(100).save_pretrained(small)
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_model_and_tokenizer(small)
    with pytest.raises(ValueError, match="vocabulary has 100 entries"):
        load_model_and_tokenizer(small, tokenizer_path=model_dir)


def test_cli_eval_and_rollout(tmp_path, model_dir, tokenizer, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": s, "lang": lang}) for s, lang in
                              [(" ".join(SENTENCES[:2] * 4), "en"), (SENTENCES[2] * 6, "de")]))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model_dir), "--data", f"{data}@en", f"{data}@de", "--block-len", "8",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report["ce"]) == {f"{data}@en", f"{data}@de"} and f"{data}@de" in printed
    assert report["config"]["block_len"] == 8 and report["config"]["model"] == str(model_dir)
    # the CLI number is evaluate_ce on the same blocks
    from comptune.corpus.loading import load_texts, token_stream, tokenize_to_blocks

    model, _ = load_model_and_tokenizer(model_dir)
    blocks = tokenize_to_blocks(tokenizer, load_texts(data, lang="de"), 8, max_blocks=256)
    assert report["ce"][f"{data}@de"] == pytest.approx(evaluate_ce(model, {"de": blocks}).ce["de"], abs=1e-6)
    # per-character CE: CE × tokens per character of the whole text
    texts = load_texts(data, lang="de")
    ratio = len(token_stream(tokenizer, texts)) / sum(len(t) for t in texts)
    row = report["datasets"][f"{data}@de"]
    assert row["tokens_per_char"] == pytest.approx(ratio) and row["nats_per_char"] == pytest.approx(row["ce"] * ratio)

    other = tmp_path / "other_model"
    tiny_model(len(tokenizer), seed=1).save_pretrained(other)  # no tokenizer of its own: shares the first one's
    rollout_json = tmp_path / "rollouts.json"
    assert main(["rollout", "--model", str(model_dir), "--compare", str(other), "--prompt", "the cat", "der Hund",
                 "--max-new-tokens", "4", "--sample", "--seed", "3", "--json", str(rollout_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"| prompt | {model_dir.name} | other_model |" and len([line for line in lines if line.startswith("| ")]) == 3
    saved = json.loads(rollout_json.read_text())
    assert saved["seed"] == 3 and saved["config"]["greedy"] is False and len(saved["rollouts"]) == 2

    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", str(data)]) == 2
    assert "model directory" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", f"{data}@fr", "--block-len", "8"]) == 2
    assert "languages present: de, en" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", "eval.xx"]) == 2
    assert "not a bundled dataset (train.en" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", str(data), "--block-len", "64"]) == 2
    assert "block length 64 exceeds the model's context of 32 tokens" in capsys.readouterr().err


def test_unigram_entropy_reference_line():
    from comptune.evaluation.ce import unigram_entropy

    # four equally frequent tokens: ln 4; a single repeated token: 0
    assert abs(unigram_entropy(torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4]])) - math.log(4)) < 1e-9
    assert unigram_entropy(torch.tensor([[7, 7, 7]])) == 0.0
