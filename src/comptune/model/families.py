"""Where the linear weights sit in the model families comptune knows, so a preset written for the
bundled model (`h.*.attn.q_proj`, …) decomposes a GPT-2, Pythia or Llama/Qwen model as it is.

Each family names its decoder blocks and, per role, the matrices that play it. The bundled
model's module names are the reference vocabulary: `translate_patterns` maps each of its names to
the family's (a fused q/k/v projection takes the C of q).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Family:
    blocks: str  # the decoder blocks' path, "*" for the index
    attn: str  # attention submodule of a block
    mlp: str  # MLP submodule of a block
    # role -> matrices of that role inside attn / mlp (a fused qkv matrix plays q, k and v)
    roles: dict[str, tuple[str, ...]]

    def patterns(self, role: str) -> list[str]:
        where = self.attn if role.startswith("attn") else self.mlp
        return [f"{self.blocks}.{where}.{name}" for name in self.roles[role]]


FAMILIES: dict[str, Family] = {
    "comptune_lm": Family("h.*", "attn", "mlp", {"attn_q": ("q_proj",), "attn_k": ("k_proj",), "attn_v": ("v_proj",),
                                                 "attn_out": ("o_proj",), "mlp_in": ("c_fc",), "mlp_out": ("down_proj",)}),
    "gpt2": Family("transformer.h.*", "attn", "mlp", {"attn_q": ("c_attn",), "attn_k": ("c_attn",), "attn_v": ("c_attn",),
                                                      "attn_out": ("c_proj",), "mlp_in": ("c_fc",), "mlp_out": ("c_proj",)}),
    "gpt_neox": Family("gpt_neox.layers.*", "attention", "mlp", {
        "attn_q": ("query_key_value",), "attn_k": ("query_key_value",), "attn_v": ("query_key_value",),
        "attn_out": ("dense",), "mlp_in": ("dense_h_to_4h",), "mlp_out": ("dense_4h_to_h",)}),
    "llama": Family("model.layers.*", "self_attn", "mlp", {"attn_q": ("q_proj",), "attn_k": ("k_proj",), "attn_v": ("v_proj",),
                                                           "attn_out": ("o_proj",), "mlp_in": ("gate_proj", "up_proj"), "mlp_out": ("down_proj",)}),
}
for _alias in ("qwen2", "qwen3", "mistral"):  # Llama's module names
    FAMILIES[_alias] = FAMILIES["llama"]
REFERENCE = "comptune_lm"


def model_family(model) -> str | None:
    """The family name of a Hugging Face model (its config's model_type), if comptune knows it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type if model_type in FAMILIES else None


def _role_of(pattern: str) -> str | None:
    ref = FAMILIES[REFERENCE]
    for role in ref.roles:
        if pattern in ref.patterns(role):
            return role
    return None


def translate_patterns(patterns: dict[str, int], family: str) -> dict[str, int]:
    """The bundled model's {pattern: C} in `family`'s module names. Patterns that are not one of
    the bundled model's role patterns are kept as they are (they are the user's own)."""
    fam = FAMILIES[family]
    out: dict[str, int] = {}
    for pattern, c in patterns.items():
        role = _role_of(pattern)
        for p in fam.patterns(role) if role else [pattern]:
            out.setdefault(p, c)  # a fused matrix keeps the C of its first role (q)
    return out


def translate_globs(init: Mapping[str, str], family: str) -> dict[str, str]:
    """`init`-style globs over the bundled model's names (`h.*.mlp.*`, `h.*.attn.*`, or a role pattern)
    in `family`'s names."""
    ref, fam = FAMILIES[REFERENCE], FAMILIES[family]
    out: dict[str, str] = {}
    for glob, value in init.items():
        if glob == f"{ref.blocks}.{ref.mlp}.*":
            out[f"{fam.blocks}.{fam.mlp}.*"] = value
        elif glob == f"{ref.blocks}.{ref.attn}.*":
            out[f"{fam.blocks}.{fam.attn}.*"] = value
        elif (role := _role_of(glob)) is not None:
            out.update({p: value for p in fam.patterns(role)})
        else:
            out[glob] = value
    return out


def patterns_for_model(model, patterns: dict[str, int]) -> tuple[dict[str, int], str | None]:
    """(patterns, family they were translated to or None). Patterns that already match the model,
    or that are the user's own, are kept (a pattern that matches nothing then gets its own error);
    the bundled model's names are translated for a known family; for an unknown family, an error
    that says which families are known and how to name the modules instead."""
    names = [n for n, _ in model.named_modules() if n]
    family = model_family(model)
    matches = any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)
    if matches or family == REFERENCE or not all(_role_of(p) for p in patterns):
        return patterns, None
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UserError(f"no pattern of the config matches a module of this {model_type} model, and comptune has no module-name "
                        f"preset for it (known: {', '.join(sorted(FAMILIES))}); give `patterns:` in --config, e.g. "
                        "{'model.layers.*.self_attn.q_proj': 256}, naming its linear modules")
    return translate_patterns(patterns, family), family
