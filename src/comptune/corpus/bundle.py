"""The shipped corpus, model and decomposition: where they are and the named datasets in them.

Datasets are named `<split>.<lang>`; splits: `train`, `valid` (hyperparameter choice), `eval`
(held out), `parallel` (content-matched held-out pages in en/de/fr/es/it). Two derived sets:
- `retain.en` / `forget.de`: training text of the *documentation* domain (the Europarl-like
  parallel-sourced docs), used by the unlearning study as retain and forget text;
- `general_en`: held-out English from other domains (man pages, fortunes) — a different
  distribution from the retain text, like the study's Pile slice against Europarl;
- `valid.general_en`: the validation split's English from those same domains — what choosing
  settings against `general_en` damage must read (all of `valid.en` is dominated by other text);
- `code`: held-out Python source (alias of `eval.code`).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

SPLITS = ("train", "valid", "eval", "parallel")
GENERAL_DOMAINS = ("manpages", "fortunes")  # general_en's sources: not the retain text's domain
DERIVED = ("retain.en", "forget.de", "general_en", "valid.general_en", "code")
DERIVED_LANGUAGE = {"retain.en": "en", "forget.de": "de", "general_en": "en", "valid.general_en": "en", "code": "code"}
LANGS = ("en", "de", "fr", "es", "it", "code")


def data_root() -> Path:
    """`$COMPTUNE_DATA`, else the `data/` folder beside the source tree (the shipped bundle)."""
    env = os.environ.get("COMPTUNE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "data"


def corpus_dir() -> Path:
    return data_root() / "corpus"


def bundled_model_dir() -> Path:
    return data_root() / "models" / "comptune-tiny"


def bundled_decomposition_dir() -> Path:
    return data_root() / "decompositions" / "comptune-tiny-vpd"


@lru_cache(maxsize=None)
def _split_rows(split: str) -> tuple[dict, ...]:
    path = corpus_dir() / f"{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"bundled corpus file {path} is missing; run `comptune corpus build` or set COMPTUNE_DATA")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def _derived(name: str) -> tuple[str, Callable[[dict], bool]]:
    return {
        "retain.en": ("train", lambda r: r["lang"] == "en" and r["domain"] == "documentation"),
        "forget.de": ("train", lambda r: r["lang"] == "de" and r["domain"] == "documentation"),
        "general_en": ("eval", lambda r: r["lang"] == "en" and r["domain"] in GENERAL_DOMAINS),
        "valid.general_en": ("valid", lambda r: r["lang"] == "en" and r["domain"] in GENERAL_DOMAINS),
        "code": ("eval", lambda r: r["lang"] == "code"),
    }[name]


BUNDLED_DATASETS: tuple[str, ...] = tuple(
    [f"{s}.{lang}" for s in SPLITS for lang in LANGS if not (s == "parallel" and lang == "code")]
    + list(DERIVED)
)
# what `comptune eval` reports by default: the held-out sets of the study
DEFAULT_EVAL_DATASETS = ("parallel.en", "parallel.de", "parallel.fr", "parallel.es", "parallel.it", "general_en", "code")


def bundled_documents(name: str) -> list[dict]:
    """Rows (text, lang, source, domain, doc) of a bundled dataset."""
    if name not in BUNDLED_DATASETS:
        raise UserError(f"unknown bundled dataset {name!r}; known: {', '.join(BUNDLED_DATASETS)}")
    if name in DERIVED:
        split, keep = _derived(name)
    else:
        split, lang = name.split(".")
        keep = lambda r: r["lang"] == lang  # noqa: E731
    rows = [r for r in _split_rows(split) if keep(r)]
    if not rows:
        raise UserError(f"bundled dataset {name!r} is empty in {corpus_dir()}")
    return rows


def bundled_texts(name: str) -> list[str]:
    return [r["text"] for r in bundled_documents(name)]
