"""LLM labels ("autointerp"), optional: an OpenAI-compatible chat-completions endpoint reads a unit's
top examples and token lists and answers with a short label.

Labels are cached on disk under the hash of (endpoint model, prompt), so a re-run with the same
atlas costs nothing. The `openai` client retries rate limits and server errors itself
(`max_retries`, honouring Retry-After); what still fails is reported per unit, never raised:
labels are a convenience and must not cost the browser build. An endpoint that cannot be reached
at all stops the requests after the first attempt and says so once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from .._io import write_json_atomic
from ..config import StrictConfig
from ..errors import UserError

PROMPT_VERSION = 1
SYSTEM_PROMPT = (
    "You label units of a language model's parameter decomposition. Each unit is a rank-1 piece of one weight "
    "matrix. You are shown where it is active: text windows with the most active token marked ⟦like this⟧, the "
    "tokens over-represented where it is active, the next tokens there, the tokens its output promotes, and its "
    "mean activity per dataset. Answer with one short label (at most 12 words) saying what it responds to, "
    "naming the language when it is language-specific. No preamble."
)


class AutointerpConfig(StrictConfig):
    base_url: str = Field(description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_units: int = Field(64, ge=1, description="label at most this many units (edited and scanned units first)")
    max_retries: int = Field(3, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    cache_dir: Path | None = Field(None, description="default: $XDG_CACHE_HOME/comptune/autointerp (~/.cache/…)")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "comptune" / "autointerp"


def unit_prompt(unit: dict, decode, per_dataset: int = 3) -> str:
    """The user message for one atlas unit (`decode`: token id -> text)."""
    lines = [f"Unit {unit['key']} (module {unit['module']}).", "", "Mean activity per dataset:"]
    lines += [f"- {d}: mean {p['mean']:.4f}, active on {100 * p['freq']:.1f}% of tokens" for d, p in unit["profile"].items()]
    lines += ["", "Top examples:"]
    for d, examples in unit["examples"].items():
        for ex in examples[:per_dataset]:
            text = "".join(f"⟦{decode(i)}⟧" if j == ex["at"] else decode(i) for j, i in enumerate(ex["ids"]))
            lines.append(f"- [{d}, activity {ex['score']:.2f}] {text!r}")
    for title, rows in (("Tokens where it is active", unit["input_pmi"]), ("Next tokens where it is active", unit["output_pmi"])):
        lines.append(f"{title}: " + (", ".join(repr(r["token"]) for r in rows[:10]) or "none"))
    if unit.get("write"):
        lines.append("Its output promotes: " + ", ".join(repr(r["token"]) for r in unit["write"]["promoted"][:10]))
    return "\n".join(lines)


def prompt_hash(model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([PROMPT_VERSION, model, SYSTEM_PROMPT, prompt]).encode()).hexdigest()[:24]


def autointerp_labels(units: list[dict], decode, config: AutointerpConfig, log=print) -> tuple[dict[str, dict], dict]:
    """({key: {"label", "model", "prompt_hash", "cached"}}, report) for up to `config.max_units` units.
    The report counts cached, requested, labelled and failed units and names an unreachable endpoint."""
    import openai

    api_key = os.environ.get(config.api_key_env)
    if not api_key:
        raise UserError(f"autointerp needs an API key in the environment variable {config.api_key_env} "
                         "(set it, or name another with api_key_env; a local server that ignores keys takes any value)")
    cache = config.resolved_cache_dir()
    client = openai.OpenAI(base_url=config.base_url, api_key=api_key, max_retries=config.max_retries, timeout=config.timeout_s)
    labels: dict[str, dict] = {}
    report: dict[str, Any] = {"endpoint": config.base_url, "model": config.model, "units": 0, "cached": 0, "requested": 0, "failed": {}, "unreachable": None}
    for unit in units[: config.max_units]:
        report["units"] += 1
        prompt = unit_prompt(unit, decode)
        digest = prompt_hash(config.model, prompt)
        path = cache / f"{digest}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            labels[unit["key"]] = {"label": record["label"], "model": record["model"], "prompt_hash": digest, "cached": True}
            report["cached"] += 1
            continue
        if report["unreachable"]:
            report["failed"][unit["key"]] = "endpoint unreachable"
            continue
        report["requested"] += 1
        try:
            reply = client.chat.completions.create(model=config.model, temperature=0.0, max_tokens=40,
                                                   messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}])
            text = (reply.choices[0].message.content or "").strip().splitlines()
        except openai.APIConnectionError as e:
            report["unreachable"] = f"{config.base_url} could not be reached ({e.__cause__ or e}); no LLM labels this run"
            report["failed"][unit["key"]] = "endpoint unreachable"
            log(f"autointerp: {report['unreachable']}")
            continue
        except openai.APIError as e:  # rate limits and server errors left after the client's retries
            report["failed"][unit["key"]] = f"{type(e).__name__}: {e}"
            continue
        if not text:
            report["failed"][unit["key"]] = "empty reply"
            continue
        record = {"label": text[0].strip(), "model": config.model, "prompt_hash": digest}
        write_json_atomic(path, {**record, "prompt": prompt})
        labels[unit["key"]] = {**record, "cached": False}
    log(f"autointerp: {len(labels)} of {report['units']} units labelled ({report['cached']} from the cache), {len(report['failed'])} failed")
    return labels, report
