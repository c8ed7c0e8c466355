"""Load any Hugging Face causal LM directory (the bundled model, GPT-2, Llama, Pythia …) safely.

Only safetensors weights are read (`use_safetensors=True`): a `pytorch_model.bin` is a pickle and
is refused, never unpickled. Code shipped inside a model directory is never executed (no
`trust_remote_code`); the bundled architecture is found because this module registers it with
the Auto classes (`comptune.model`'s names are imported through here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import UserError
from .modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

AutoConfig.register(ComptuneLMConfig.model_type, ComptuneLMConfig, exist_ok=True)
AutoModelForCausalLM.register(ComptuneLMConfig, ComptuneLMForCausalLM, exist_ok=True)

_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def load_model_and_tokenizer(path: str | Path, *, tokenizer_path: str | Path | None = None, device: str | torch.device | None = None,
                             dtype: torch.dtype | None = None):
    """(model in eval mode, tokenizer) from a `save_pretrained` directory.

    The tokenizer comes from `tokenizer_path` (default: the model directory) and must fit the
    model's vocabulary (`check_vocab`).
    """
    path = Path(path)
    _check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"could not load the model in {path}: {e}") from e
    tokenizer = load_tokenizer(tokenizer_path or path)
    check_vocab(tokenizer, model)
    if device is not None:
        # PreTrainedModel.to is wrapped in functools.wraps, which mypy does not bind to the instance
        model = model.to(device)  # type: ignore[arg-type]
    return model.eval(), tokenizer


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        raise FileNotFoundError(f"no tokenizer in {path} (no tokenizer.json or tokenizer_config.json); save the model's "
                                "tokenizer there with tokenizer.save_pretrained(dir), or pass the tokenizer's directory")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the tokenizer in {path}: {e}") from e


def _check_model_dir(path: Path) -> None:
    """Clear errors for the usual ways a model directory is wrong, before transformers sees it."""
    from safetensors import SafetensorError, safe_open

    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory saved with save_pretrained (no config.json)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            raise UserError(f"{path} holds only pickle weights ({', '.join(pickles)}); comptune never unpickles files from a "
                             "path. Convert them once in a trusted environment: "
                             "model.save_pretrained(dir, safe_serialization=True)")
        raise FileNotFoundError(f"no weights (*.safetensors) in model directory {path}")
    for file in weights:
        try:
            # opening checks the header and that the file covers every tensor it declares (truncation)
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(f"weights file {file} is corrupt ({e}); re-create or re-download it") from e


def check_vocab(tokenizer, model) -> None:
    """Raise if the tokenizer can produce ids the model has no embedding row / logit for.

    A tokenizer smaller than the model's vocabulary is fine (models often pad it, e.g. Pythia).
    """
    n_tokenizer = max(tokenizer.get_vocab().values()) + 1
    n_model = model_vocab_size(model)
    if n_tokenizer > n_model:
        raise UserError(f"tokenizer/model mismatch: the tokenizer has ids up to {n_tokenizer - 1} ({n_tokenizer} tokens) but "
                         f"the model's vocabulary has {n_model} entries; use the tokenizer the model was trained with")


def model_vocab_size(model) -> int:
    """Size of the model's output (logit) dimension."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def context_length(model) -> int | None:
    """The longest sequence the model takes (its config's max_position_embeddings), if it says."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)
