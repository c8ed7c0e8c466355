"""Continuations of prompts from one or more models, side by side (e.g. base vs edited).

Each prompt is encoded like an evaluation document — preceded by the tokenizer's separator token
(BOS, else EOS; see `corpus.loading`) — and continued with HF `generate`, one prompt at a time so
no padding is involved. Sampling is seeded per (prompt, model) call from `seed`, so a rollout is
reproducible and two models see the same random stream; the caller's global RNG is left untouched.
Generation settings not named here (e.g. a repetition penalty) come from the model's
`generation_config`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..corpus.loading import encode_documents, separator_id
from ..errors import UserError


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """[1, n] ids of `prompt` preceded by the separator token (when the tokenizer has one)."""
    ids = encode_documents(tokenizer, [prompt])[0]
    sep = separator_id(tokenizer)
    ids = ([sep] if sep is not None else []) + list(ids)
    if not ids:
        raise UserError("empty prompt and no BOS token to start from")
    return torch.tensor([ids], dtype=torch.long)


def rollouts(models: dict, tokenizer, prompts: list[str], *, max_new_tokens: int = 40, greedy: bool = True,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[dict]:
    """One row per prompt: {"prompt", "continuations": {model name: text}, "token_ids": {model name: [ids]}}.

    `greedy=False` samples with `temperature` and, if given, `top_k` (otherwise the full distribution).
    """
    if not models:
        raise UserError("no models to roll out")
    if not prompts:
        raise UserError("no prompts given")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy and temperature <= 0:
        raise UserError(f"temperature must be > 0 for sampling, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1 or None, got {top_k}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {} if greedy else {"temperature": temperature, "top_k": top_k or 0, "top_p": 1.0}  # top_k 0: no cut
    rows = []
    for prompt in prompts:
        row: dict[str, Any] = {"prompt": prompt, "continuations": {}, "token_ids": {}}
        for name, model in models.items():
            device = next(model.parameters()).device
            ids = prompt_ids(tokenizer, prompt).to(device)  # (1, n)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
                torch.manual_seed(seed)
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=not greedy, pad_token_id=pad_id, **sampling)  # (1, n + new)
            new = out[0, ids.shape[1] :].tolist()
            row["continuations"][name] = tokenizer.decode(new, skip_special_tokens=True)
            row["token_ids"][name] = new
        rows.append(row)
    return rows


def rollouts_markdown(rows: list[dict]) -> str:
    """A markdown table: one row per prompt, one column per model."""
    names = list(rows[0]["continuations"]) if rows else []

    def cell(text: str) -> str:
        # a table cell is one line: show line breaks as ⏎ and escape the column separator
        return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", " ⏎ ").strip() or " "

    lines = ["| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([cell(row["prompt"])] + [cell(row["continuations"][n]) for n in names]) + " |")
    return "\n".join(lines)
