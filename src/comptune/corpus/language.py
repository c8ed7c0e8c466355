"""The corpus's language identifier: the one that filtered the corpus also names the language of
a piece of text for inspection labels, and the language a named dataset holds."""

from __future__ import annotations

from functools import lru_cache

# the identifier chooses among these: wider than the corpus's five languages so that e.g. Dutch
# or Portuguese text is not forced onto the nearest of them
LANGID_CANDIDATES = ["en", "de", "fr", "es", "it", "nl", "pt", "ca", "da", "sv", "no", "pl", "ro", "la", "eo", "cs"]
LANGID_MIN_PROB = 0.9

LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "code": "code",
                  "nl": "Dutch", "pt": "Portuguese", "ca": "Catalan", "da": "Danish", "sv": "Swedish", "no": "Norwegian",
                  "pl": "Polish", "ro": "Romanian", "la": "Latin", "eo": "Esperanto", "cs": "Czech"}


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_DIR / MODEL_FILE, norm_probs=True)  # the library's own model
    ident.set_languages(LANGID_CANDIDATES)
    return ident


def identify_language(text: str) -> tuple[str, float]:
    """(ISO code, normalised probability) of `text` among LANGID_CANDIDATES."""
    lang, prob = _identifier().classify(text)
    return lang, float(prob)


def dataset_language(name: str) -> str | None:
    """The language a bundled dataset holds ("en", "de", …, "code"); None for a path or Hub dataset."""
    from .bundle import BUNDLED_DATASETS, DERIVED_LANGUAGE

    if name not in BUNDLED_DATASETS:
        return None
    return DERIVED_LANGUAGE.get(name) or name.split(".")[-1]
