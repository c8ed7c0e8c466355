"""Every numbered item of docs/SPEC.md (V…) and docs/SEMANTICS.md (S…) is held by a test that cites
it, and every citation names an item that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITEM = re.compile(r"\*\*((?:V|S)\d+\.\d+)\b")
CITATION = re.compile(r"\b(SPEC V\d+\.\d+|SEMANTICS S\d+\.\d+)\b")


def _items() -> dict[str, str]:
    out = {}
    for doc, prefix in (("SPEC.md", "SPEC"), ("SEMANTICS.md", "SEMANTICS")):
        for item in ITEM.findall((ROOT / "docs" / doc).read_text()):
            out[f"{prefix} {item}"] = doc
    return out


def _citations(paths) -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    for path in paths:
        for c in CITATION.findall(path.read_text()):
            cited.setdefault(c, []).append(path.name)
    return cited


def test_the_documents_number_their_items_once_each():
    items = []
    for doc in ("SPEC.md", "SEMANTICS.md"):
        items += ITEM.findall((ROOT / "docs" / doc).read_text())
    assert len(items) > 40 and len(items) == len(set(items)), sorted(i for i in items if items.count(i) > 1)


def test_every_numbered_item_is_cited_by_a_test():
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    cited = _citations(tests)
    uncited = sorted(set(_items()) - set(cited))
    assert not uncited, f"numbered items no test cites (add the number to the docstring of the test that holds it): {uncited}"


def test_every_citation_names_an_existing_item():
    paths = [*(ROOT / "tests").glob("*.py"), *(ROOT / "src").rglob("*.py")]
    unknown = {c: where for c, where in _citations(paths).items() if c not in _items()}
    assert not unknown, f"citations of items that do not exist: {unknown}"
