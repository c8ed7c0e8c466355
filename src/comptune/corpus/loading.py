"""Generic text loading and tokenisation: local text/JSONL files and Hugging Face `datasets`.

`load_texts` turns a source into a list of documents (one string each):
- `*.txt` / `*.txt.gz`: the whole file is one document, unless `separator` is given, in which
  case the file is split on it (e.g. `separator="\\n\\n"` for blank-line-separated paragraphs);
- `*.jsonl` / `*.jsonl.gz`: one JSON object per line;
- a directory written by `datasets` `save_to_disk` (a `Dataset`, or a `DatasetDict` plus `split`);
- otherwise a Hugging Face Hub dataset id `owner/name` (`datasets.load_dataset`, streamed; needs network).

Column mapping for rows (JSONL and `datasets`): `text_column` names the text, and may be dotted to
reach into nested dicts (`translation.de` for Europarl-style rows). `lang` selects a language:
if the text column holds a dict keyed by language (`text_column="translation"`), `lang` picks the
key; otherwise rows are filtered on `lang_column == lang`. Whitespace-only documents are dropped.

`token_stream` / `tokenize_to_blocks` turn documents into token ids. Separator rule: every
document is preceded by one separator token — the tokenizer's BOS token if it has one, else its
EOS token (GPT-2 style, where EOS between documents is the boundary marker). The project's
tokenizer uses `<|endoftext|>` as both. Documents are tokenised without the tokenizer's own
special tokens, so no model gets a doubled BOS.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import torch

from ..errors import UserError

_TEXT_SUFFIXES = (".txt", ".txt.gz")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# `owner/name`: what a Hub dataset id looks like (a mistyped local file name does not)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_texts(
    source: str | Path,
    *,
    lang: str | None = None,
    text_column: str = "text",
    lang_column: str | None = "lang",
    split: str | None = None,
    subset: str | None = None,
    separator: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Documents of `source` (see the module docstring), in source order, at most `limit` of them.

    `split` selects a split of a `DatasetDict` or Hub dataset; `subset` is a Hub dataset's
    configuration name (e.g. `"de-en"`); `separator` applies to text files only.
    """
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    path = Path(source).expanduser()
    name = str(source)
    select = partial(_select, text_column=text_column, lang=lang, lang_column=lang_column, limit=limit)
    is_text_file = path.is_file() and name.endswith(_TEXT_SUFFIXES)
    if separator is not None and not is_text_file:
        raise UserError(f"separator={separator!r} applies to .txt files only, and {name} is not one")
    if is_text_file:
        if lang is not None:
            raise UserError(f"{name} is a plain text file with no language column; drop lang={lang!r}")
        texts = _read_text_file(path, separator)
    elif path.is_file() and name.endswith(_JSONL_SUFFIXES):
        texts = select(_jsonl_rows(path), name)
    elif path.is_file():
        raise UserError(f"{name}: unsupported file type; use one of {', '.join(_TEXT_SUFFIXES + _JSONL_SUFFIXES)} "
                         "or a directory saved with `datasets` save_to_disk")
    elif path.is_dir():
        texts = select(_dataset_rows(_load_from_disk(path, split), text_column, name), name)
    elif name.endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES) or not _HUB_NAME.match(name):
        raise FileNotFoundError(f"data file or directory {name} does not exist")
    else:
        name = f"Hub dataset {name}"
        texts = select(_dataset_rows(_load_from_hub(str(source), subset, split), text_column, name), name)
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        lang_note = f" for lang={lang!r}" if lang else ""
        raise UserError(f"{name} holds no non-empty text{lang_note}")
    return texts


def _read_text_file(path: Path, separator: str | None) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    return [text] if separator is None else [t.strip() for t in text.split(separator)]


def _jsonl_rows(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno} is not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno} holds a JSON {type(row).__name__}; each line must be an object")
            yield row


def _load_from_disk(path: Path, split: str | None):
    import datasets

    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise UserError(f"{path} is a directory but not a dataset written by `datasets` save_to_disk "
                         "(no dataset_info.json / dataset_dict.json)")
    ds = datasets.load_from_disk(str(path))
    return _pick_split(ds, split, str(path))


def _load_from_hub(name: str, subset: str | None, split: str | None):
    import datasets

    try:
        # streaming: reading the first `limit` documents of a large corpus (the Pile) downloads only those
        ds = datasets.load_dataset(name, subset, split=split, streaming=True)
    except (ConnectionError, OSError, ValueError) as e:
        raise FileNotFoundError(
            f"{name!r} is not a local file or directory, and loading it as a Hugging Face Hub dataset failed ({e}). "
            "Hub datasets need network access; offline, save the dataset with `save_to_disk` on a machine that has "
            "network and pass that directory, or pass a local .txt/.jsonl file"
        ) from e
    return _pick_split(ds, split, f"Hub dataset {name}")


def _pick_split(ds, split: str | None, what: str):
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None:
            raise UserError(f"{what} has splits {', '.join(ds)}; choose one with split=... (--split)")
        if split not in ds:
            raise UserError(f"{what} has no split {split!r}; splits: {', '.join(ds)}")
        return ds[split]
    if split is not None and ds.split is not None and str(ds.split) != split:
        raise UserError(f"{what} is a single dataset of split {ds.split}, not {split!r}")
    return ds


def _dataset_rows(ds, text_column: str, what: str) -> Iterator[dict]:
    """Rows of a `datasets` Dataset (read in batches: fast) or streamed IterableDataset."""
    import datasets

    top = text_column.split(".")[0]
    if ds.column_names and top not in ds.column_names:  # a streamed dataset may not know its columns yet
        raise UserError(f"column {top!r} not in {what}; columns: {', '.join(ds.column_names)}")
    if isinstance(ds, datasets.Dataset):
        for batch in ds.iter(batch_size=1024):
            for i in range(len(batch[top])):
                yield {k: v[i] for k, v in batch.items()}
    else:
        yield from ds


def _select(rows: Iterable[dict], what: str, *, text_column: str, lang: str | None, lang_column: str | None,
            limit: int | None) -> list[str]:
    """Apply the column mapping and language filter to rows; stop after `limit` non-empty texts."""
    path = text_column.split(".")
    texts: list[str] = []
    langs_seen: set[str] = set()
    for row in rows:
        value = _lookup(row, path, what)
        if isinstance(value, dict):
            if lang is None:
                raise UserError(f"column {text_column!r} of {what} holds a dict with keys {', '.join(sorted(value))}; "
                                 f"choose one with lang=... or a dotted column such as {text_column}.{next(iter(value))}")
            if lang not in value:
                raise UserError(f"unknown language {lang!r} in column {text_column!r} of {what}; "
                                 f"languages present: {', '.join(sorted(value))}")
            value = value[lang]
        elif lang is not None:
            if lang_column is None:
                raise UserError(f"lang={lang!r} given but no lang_column to filter on in {what}")
            if lang_column not in row:
                raise UserError(f"column {lang_column!r} (the language column) not in {what}; "
                                 f"columns: {', '.join(row)}; set lang_column=... or drop lang")
            row_lang = str(row[lang_column])
            langs_seen.add(row_lang)
            if row_lang != lang:
                continue
        if not isinstance(value, str):
            raise UserError(f"column {text_column!r} of {what} holds {type(value).__name__}, not text")
        if value.strip():
            texts.append(value)
            if limit is not None and len(texts) >= limit:
                break
    if lang is not None and not texts and langs_seen:
        raise UserError(f"unknown language {lang!r} in column {lang_column!r} of {what}; "
                         f"languages present: {', '.join(sorted(langs_seen))}")
    return texts


def _lookup(row: dict, path: list[str], what: str):
    value = row
    for depth, key in enumerate(path):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(path[:depth]) or "each row"
            keys = ", ".join(value) if isinstance(value, dict) else f"(a {type(value).__name__}, not a dict)"
            raise UserError(f"column {'.'.join(path)!r} not in {what}: {where} has columns {keys}")
        value = value[key]
    return value


# ---- tokenisation ----


def separator_id(tokenizer) -> int | None:
    """The token put before every document: BOS if the tokenizer has one, else EOS, else None.

    A raw `tokenizers.Tokenizer` knows no BOS/EOS; for it `<|endoftext|>` is used when present.
    """
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    if hasattr(tokenizer, "token_to_id"):  # tokenizers.Tokenizer
        return tokenizer.token_to_id("<|endoftext|>")
    return None


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per document without special tokens, for an HF tokenizer or a `tokenizers.Tokenizer`."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    # verbose=False: documents are longer than the model context on purpose; they are cut into blocks
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def token_stream(tokenizer, texts: list[str], *, add_bos: bool = True) -> torch.Tensor:
    """All documents as one stream of ids, LongTensor [n]; with `add_bos` each document is preceded
    by `separator_id(tokenizer)` (an error if the tokenizer has none)."""
    sep = separator_id(tokenizer) if add_bos else None
    if add_bos and sep is None:
        raise UserError("the tokenizer has no BOS or EOS token to separate documents; "
                         "set one (bos_token=...) or pass add_bos=False")
    ids: list[int] = []
    for doc in encode_documents(tokenizer, list(texts)):
        if sep is not None:
            ids.append(sep)
        ids.extend(doc)
    return torch.tensor(ids, dtype=torch.long)


def tokenize_to_blocks(tokenizer, texts: list[str], block_len: int, *, max_blocks: int | None = None,
                       add_bos: bool = True) -> torch.Tensor:
    """Cut `token_stream(tokenizer, texts)` into full blocks, LongTensor [N, block_len].

    The tail shorter than a block is dropped. With `max_blocks`, that many blocks are kept, spread
    evenly over the stream, so a capped evaluation still samples every part of the dataset.
    """
    return blocks_from_stream(token_stream(tokenizer, texts, add_bos=add_bos), block_len, max_blocks=max_blocks)


def blocks_from_stream(stream: torch.Tensor, block_len: int, *, max_blocks: int | None = None) -> torch.Tensor:
    """Cut a token stream into full blocks [N, block_len] (see `tokenize_to_blocks`)."""
    if block_len < 2:
        raise UserError(f"block_len must be >= 2 (one context token and one predicted token), got {block_len}")
    if max_blocks is not None and max_blocks < 1:
        raise UserError(f"max_blocks must be >= 1, got {max_blocks}")
    n_blocks = len(stream) // block_len
    if n_blocks == 0:
        raise UserError(f"the text is too short: {len(stream)} tokens, but one block needs {block_len}; "
                         "give more text or a smaller block length")
    blocks = stream[: n_blocks * block_len].view(n_blocks, block_len)  # (N, block_len)
    if max_blocks is not None and max_blocks < n_blocks:
        keep = torch.linspace(0, n_blocks - 1, max_blocks).round().long()
        blocks = blocks[keep]
    return blocks
