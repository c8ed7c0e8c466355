"""Automatic, offline labels: which language(s) a unit is for, from two kinds of evidence.

- the languages of its top activating examples over all datasets (the corpus's identifier on the
  text around each example), and
- its per-language profile: mean score (CI) on the datasets of each language.

The distinction the case study needed is between a unit for one language and one for foreign
text in general, so a label is one of

    "German (91 % of top examples; CI 0.77 de vs 0.07 en)"            one language
    "several languages: de, it (top examples 55 % de, 40 % it; CI …)"  a few
    "all languages (CI 0.28–0.31)"                                     every language seen
    "inactive (CI never above 0.1 here)"                               no top example fires
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from ..corpus.language import LANGID_MIN_PROB, LANGUAGE_NAMES, dataset_language, identify_language

# one language: it holds this share of the top examples …
SINGLE_SHARE = 0.6
# … and is the only language whose mean score reaches this fraction of the largest
STRONG_FRACTION = 0.5
# a language named among several holds this share of the top examples (or is strong)
SEVERAL_SHARE = 0.2


def dataset_languages(blocks: Mapping, tokenizer) -> dict[str, str]:
    """A bundled dataset's own language; any other's, the identifier's majority vote over its first blocks."""
    langs = {}
    for name, b in blocks.items():
        lang = dataset_language(name)
        if lang is None:
            votes = Counter(identify_language(tokenizer.decode(row.tolist()))[0] for row in b[:16])
            lang = votes.most_common(1)[0][0]
        langs[name] = lang
    return langs


def language_profile(means: dict[str, float], languages: dict[str, str]) -> dict[str, float]:
    """Mean score per language from the mean per dataset (datasets of one language averaged)."""
    by_lang: dict[str, list[float]] = {}
    for d, m in means.items():
        by_lang.setdefault(languages[d], []).append(m)
    return {lang: sum(v) / len(v) for lang, v in by_lang.items()}


def example_language(text: str, dataset_language: str | None) -> str:
    """The language of one example's text: the identifier's, where it is sure; else its dataset's
    (short or mixed text); code is never sent to the identifier."""
    if dataset_language == "code":
        return "code"
    lang, prob = identify_language(text)
    return lang if prob >= LANGID_MIN_PROB or dataset_language is None else dataset_language


def _pct(x: float) -> str:
    return f"{round(100 * x)} %"


def language_label(example_languages: list[str], profile: dict[str, float], score_name: str = "CI",
                   threshold: float = 0.1) -> tuple[str, dict]:
    """(label, evidence) from the languages of the top examples that fire (score > threshold) and
    the mean score per language."""
    ordered = sorted(profile.items(), key=lambda kv: kv[1], reverse=True)
    evidence = {"profile": {lang: round(v, 4) for lang, v in ordered}, "n_examples": len(example_languages)}
    if not example_languages:
        evidence["rule"] = "no top example above the threshold"
        return f"inactive ({score_name} never above {threshold:g} here)", evidence
    shares = {lang: n / len(example_languages) for lang, n in Counter(example_languages).most_common()}
    evidence["example_languages"] = {lang: round(s, 3) for lang, s in shares.items()}
    top_value = ordered[0][1]
    strong = [lang for lang, v in ordered if top_value > 0 and v >= STRONG_FRACTION * top_value]
    dominant, share = next(iter(shares.items()))

    def ci(langs) -> str:
        return ", ".join(f"{profile[lang]:.2f} {lang}" for lang in langs)

    def single(lang: str) -> str:
        others = [other for other, _ in ordered if other != lang]
        versus = f" vs {ci(others[:1])}" if others else ""
        name = LANGUAGE_NAMES.get(lang, lang)
        return f"{name} ({_pct(shares.get(lang, 0))} of top examples; {score_name} {profile.get(lang, 0):.2f} {lang}{versus})"

    if strong == [dominant] and share >= SINGLE_SHARE:
        evidence["rule"] = f"one language: ≥ {SINGLE_SHARE:.0%} of top examples and the only one with ≥ {STRONG_FRACTION:.0%} of the top mean {score_name}"
        return single(dominant), evidence
    if len(profile) >= 3 and len(strong) == len(profile):
        evidence["rule"] = f"every dataset's language has a mean {score_name} ≥ {STRONG_FRACTION:.0%} of the largest"
        return f"all languages ({score_name} {ordered[-1][1]:.2f}–{top_value:.2f})", evidence
    named = [lang for lang, _ in ordered if lang in strong or shares.get(lang, 0) >= SEVERAL_SHARE]
    named += [lang for lang in shares if lang not in named and shares[lang] >= SEVERAL_SHARE]  # example languages with no dataset
    named = named or [dominant]  # examples spread thin over many languages, none strong
    if len(named) == 1:
        evidence["rule"] = (f"one language: the only one with ≥ {STRONG_FRACTION:.0%} of the top mean {score_name} "
                            f"or ≥ {SEVERAL_SHARE:.0%} of top examples")
        return single(named[0]), evidence
    rest = [lang for lang, _ in ordered if lang not in named]
    examples = ", ".join(f"{_pct(shares[lang])} {lang}" for lang in named if lang in shares)
    versus = f" vs {ci(rest[:1])}" if rest else ""
    evidence["rule"] = f"several: languages with ≥ {STRONG_FRACTION:.0%} of the top mean {score_name} or ≥ {SEVERAL_SHARE:.0%} of top examples"
    known = [lang for lang in named if lang in profile]
    return f"several languages: {', '.join(named)} (top examples {examples}; {score_name} {ci(known)}{versus})", evidence
