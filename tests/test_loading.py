"""Generic data loading (text, JSONL, `datasets` on disk) and tokenisation into blocks."""

import gzip
import json

import pytest
import torch

from comptune.corpus.loading import load_texts, token_stream, tokenize_to_blocks
from comptune.tokenizer import train_tokenizer

SENTENCES = ["the cat sat on the mat", "der Hund schläft im Garten", "le chat dort sur le tapis", "def f(x): return x"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES * 10, vocab_size=300)


@pytest.fixture
def rows_jsonl_gz(tmp_path):
    rows = [
        {"text": "An English document.", "lang": "en", "meta": {"title": "a"}},
        {"text": "Ein deutsches Dokument.", "lang": "de", "meta": {"title": "b"}},
        {"text": "   ", "lang": "de", "meta": {"title": "blank"}},
        {"text": "Noch ein deutsches.", "lang": "de", "meta": {"title": "c"}},
    ]
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_text_file_is_one_document_unless_a_separator_is_given(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("first paragraph\nstill first\n\nsecond paragraph\n\n\n")
    assert load_texts(path) == [path.read_text()]
    assert load_texts(path, separator="\n\n") == ["first paragraph\nstill first", "second paragraph"]
    with pytest.raises(ValueError, match="no language column"):
        load_texts(path, lang="en")


def test_jsonl_gz_language_filter_limit_and_nested_column(rows_jsonl_gz):
    assert load_texts(rows_jsonl_gz) == ["An English document.", "Ein deutsches Dokument.", "Noch ein deutsches."]
    assert load_texts(rows_jsonl_gz, lang="de") == ["Ein deutsches Dokument.", "Noch ein deutsches."]
    assert load_texts(rows_jsonl_gz, lang="de", limit=1) == ["Ein deutsches Dokument."]
    assert load_texts(rows_jsonl_gz, text_column="meta.title", lang="de") == ["b", "blank", "c"]


def test_jsonl_errors_name_the_problem(rows_jsonl_gz, tmp_path):
    with pytest.raises(ValueError, match=r"unknown language 'fr'.*languages present: de, en"):
        load_texts(rows_jsonl_gz, lang="fr")
    with pytest.raises(ValueError, match=r"column 'body' not in .*columns text, lang, meta"):
        load_texts(rows_jsonl_gz, text_column="body")
    with pytest.raises(ValueError, match=r"column 'meta.author'.*meta has columns title"):
        load_texts(rows_jsonl_gz, text_column="meta.author")
    with pytest.raises(ValueError, match=r"language column.*columns: text, lang, meta"):
        load_texts(rows_jsonl_gz, lang="de", lang_column="language")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  \n"}) + "\n")
    with pytest.raises(ValueError, match="no non-empty text"):
        load_texts(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_texts(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_texts("no_such_name")  # not `owner/name`: never sent to the Hub
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_texts(bad)


def test_saved_dataset_with_translation_column(tmp_path):
    import datasets

    europarl_like = datasets.Dataset.from_dict({
        "translation": [{"de": "Guten Tag.", "en": "Good day.", "fr": "Bonjour."},
                        {"de": "Danke.", "en": "Thank you.", "fr": "Merci."}],
    })
    europarl_like.save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": europarl_like}).save_to_disk(tmp_path / "dict")

    assert load_texts(tmp_path / "single", text_column="translation.de") == ["Guten Tag.", "Danke."]
    assert load_texts(tmp_path / "single", text_column="translation", lang="fr") == ["Bonjour.", "Merci."]
    assert load_texts(tmp_path / "dict", text_column="translation.en", split="train", limit=1) == ["Good day."]
    with pytest.raises(ValueError, match=r"unknown language 'it'.*languages present: de, en, fr"):
        load_texts(tmp_path / "single", text_column="translation", lang="it")
    with pytest.raises(ValueError, match=r"holds a dict with keys de, en, fr"):
        load_texts(tmp_path / "single", text_column="translation")
    with pytest.raises(ValueError, match=r"has splits train; choose one"):
        load_texts(tmp_path / "dict", text_column="translation.de")
    with pytest.raises(ValueError, match=r"column 'text' not in .*single; columns: translation"):
        load_texts(tmp_path / "single")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ValueError, match="not a dataset written by `datasets` save_to_disk"):
        load_texts(tmp_path / "plain_dir")


def test_saved_dataset_language_column_filter(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one", "eins", "two"], "lang": ["en", "de", "en"]}).save_to_disk(tmp_path / "ds")
    assert load_texts(tmp_path / "ds", lang="en") == ["one", "two"]
    with pytest.raises(ValueError, match=r"languages present: de, en"):
        load_texts(tmp_path / "ds", lang="es")


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    with pytest.raises(FileNotFoundError, match="Hub datasets need network access"):
        load_texts("someone/no-such-dataset")


def test_token_stream_puts_bos_before_every_document(tokenizer):
    """SEMANTICS S5.2."""
    docs = ["the cat", "der Hund"]
    stream = token_stream(tokenizer, docs)
    bos = tokenizer.bos_token_id
    expected = [bos, *tokenizer.encode("the cat", add_special_tokens=False), bos,
                *tokenizer.encode("der Hund", add_special_tokens=False)]
    assert stream.dtype == torch.long and stream.tolist() == expected
    assert token_stream(tokenizer, docs, add_bos=False).tolist() == [t for t in expected if t != bos]
    # a raw `tokenizers.Tokenizer` gives the same stream
    assert token_stream(tokenizer.backend_tokenizer, docs).tolist() == expected


def test_tokenize_to_blocks_cuts_full_blocks_and_spreads_a_cap(tokenizer):
    docs = SENTENCES * 5
    stream = token_stream(tokenizer, docs)
    blocks = tokenize_to_blocks(tokenizer, docs, 8)
    n = len(stream) // 8
    assert blocks.shape == (n, 8) and torch.equal(blocks.flatten(), stream[: n * 8])
    capped = tokenize_to_blocks(tokenizer, docs, 8, max_blocks=3)
    assert capped.shape == (3, 8)
    assert torch.equal(capped[0], blocks[0]) and torch.equal(capped[-1], blocks[-1])  # first and last kept
    assert tokenize_to_blocks(tokenizer, docs, 8, max_blocks=10_000).shape == (n, 8)


def test_too_short_text_says_how_many_tokens(tokenizer):
    n = len(token_stream(tokenizer, ["the cat"]))
    with pytest.raises(ValueError, match=rf"{n} tokens, but one block needs 64"):
        tokenize_to_blocks(tokenizer, ["the cat"], 64)


def test_tokenizer_without_bos_or_eos_needs_add_bos_false(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.BPE())  # no <|endoftext|> token
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    with pytest.raises(ValueError, match="no BOS or EOS token"):
        token_stream(raw, ["text"])
