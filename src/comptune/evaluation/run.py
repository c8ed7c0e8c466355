"""Evaluation and rollouts of saved models, from typed configs: what `comptune eval` / `comptune
rollout` run, usable from a notebook as well."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from .._io import versions
from ..config import StrictConfig
from ..errors import UserError
from ..model.loading import context_length
from .ce import EvalResult, evaluate_ce
from .rollouts import rollouts


class EvalConfig(StrictConfig):
    model: str | None = None  # save_pretrained directory; None: the bundled model
    # bundled dataset names or sources for `load_texts`, a source optionally suffixed `@LANG`
    # (e.g. `europarl@de`); None: the bundled held-out evaluation sets
    data: list[str] | None = None
    block_len: int | None = Field(None, ge=2)  # None: the model's context length, at most 256
    max_blocks: int | None = Field(256, ge=1)  # per dataset, spread over it; None: all blocks
    batch_size: int = Field(16, ge=1)
    device: str | None = None
    # column mapping for row sources (JSONL, `datasets`), see `corpus.loading.load_texts`
    text_column: str = "text"
    lang_column: str | None = "lang"
    lang: str | None = None  # default language for sources without an `@LANG` suffix
    split: str | None = None
    subset: str | None = None


class RolloutConfig(StrictConfig):
    model: str | None = None  # None: the bundled model
    compare: list[str] = []  # further model directories, continued side by side with `model`
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(40, ge=1)
    greedy: bool = True
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    seed: int = 0
    device: str | None = None  # None: the CPU


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """`source@lang` → (source, lang); a bundled name or an existing path is taken whole."""
    from ..corpus.bundle import BUNDLED_DATASETS

    if spec in BUNDLED_DATASETS or Path(spec).exists() or "@" not in spec:
        return spec, None
    source, lang = spec.rsplit("@", 1)
    return source, lang


def run_eval(cfg: EvalConfig, *, model=None, tokenizer=None, progress: bool = False) -> EvalResult:
    """Evaluate `cfg.model` (or an already loaded `model` + `tokenizer`) on `cfg.data`; `progress`
    reports each dataset as it is read and a bar over the evaluation (stderr)."""
    from ..corpus.bundle import DEFAULT_EVAL_DATASETS, bundled_model_dir
    from ..corpus.datasets import dataset_texts
    from ..corpus.loading import blocks_from_stream, token_stream
    from ..model.loading import check_vocab, load_model_and_tokenizer

    if model is None:
        model_name = cfg.model or str(bundled_model_dir())
        model, tokenizer = load_model_and_tokenizer(model_name, device=cfg.device)
    elif tokenizer is None:
        raise UserError("run_eval: pass the tokenizer together with the model")
    else:
        check_vocab(tokenizer, model)
        model_name = cfg.model or type(model).__name__  # cfg.model only labels an in-memory model
    context = context_length(model)
    block_len = cfg.block_len or min(context or 256, 256)
    if context is not None and block_len > context:
        raise UserError(f"block length {block_len} exceeds the model's context of {context} tokens; lower --block-len")
    data = cfg.data or list(DEFAULT_EVAL_DATASETS)
    blocks, tokens_per_char = {}, {}
    for spec in data:
        source, lang = parse_data_spec(spec)
        texts = dataset_texts(source, lang=lang or cfg.lang, text_column=cfg.text_column, lang_column=cfg.lang_column,
                              split=cfg.split, subset=cfg.subset)
        stream = token_stream(tokenizer, texts)
        blocks[spec] = blocks_from_stream(stream, block_len, max_blocks=cfg.max_blocks)
        if progress:
            print(f"eval: {spec}: {len(blocks[spec])} blocks of {block_len} tokens", file=sys.stderr)
        tokens_per_char[spec] = len(stream) / sum(len(t) for t in texts)
    result = evaluate_ce(model, blocks, batch_size=cfg.batch_size, device=cfg.device, progress=progress)
    for spec, ratio in tokens_per_char.items():
        result.datasets[spec].tokens_per_char = ratio
    # the config as run: defaults resolved, plus what evaluate_ce measured it on (device, dtype)
    result.config = {**cfg.model_dump(), "model": model_name, "data": data, "block_len": block_len, **result.config}
    return result


def run_rollouts(cfg: RolloutConfig) -> dict:
    """Load `cfg.model` and `cfg.compare`, roll out the prompts; a JSON-able report."""
    from ..corpus.bundle import bundled_model_dir
    from ..model.loading import load_model_and_tokenizer

    paths = [cfg.model or str(bundled_model_dir()), *cfg.compare]
    model, tokenizer = load_model_and_tokenizer(paths[0], device=cfg.device)
    models = [model]
    for path in paths[1:]:
        # the compared models must read and write the same tokens: use the first model's tokenizer
        has_own = (Path(path) / "tokenizer.json").is_file() or (Path(path) / "tokenizer_config.json").is_file()
        other, own_tokenizer = load_model_and_tokenizer(path, tokenizer_path=path if has_own else paths[0], device=cfg.device)
        if own_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UserError(f"{path} has a different tokenizer from {paths[0]}; rollouts compare models that share one")
        models.append(other)
    rows = rollouts(dict(zip(_display_names(paths), models)), tokenizer, cfg.prompts, max_new_tokens=cfg.max_new_tokens,
                    greedy=cfg.greedy, temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed)
    return {"config": {**cfg.model_dump(), "model": paths[0]}, "seed": cfg.seed, "rollouts": rows, "versions": versions()}


def _display_names(paths: list[str]) -> list[str]:
    """Directory names as column headers; the paths as given when those collide."""
    for names in ([Path(p).resolve().name for p in paths], [str(p) for p in paths]):
        if len(set(names)) == len(names):
            return names
    return [f"{p} #{i + 1}" for i, p in enumerate(paths)]  # the same model given twice
