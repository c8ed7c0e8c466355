"""Build the bundled multilingual corpus from Debian packages.

The build never depends on what happens to be installed: every source package is downloaded
with `apt-get download` into a cache, its version read from the .deb, and unpacked with
`dpkg-deb -x`. Pages are chosen by explicit per-source patterns and every page used is recorded
in a manifest (package, version, page, language, split, paragraphs kept/dropped).

Translated pages still hold untranslated English paragraphs: every natural-language paragraph is
kept only if a language-identification model (py3langid) assigns it to the page's language.

Splits are assigned per *document name* (source + page, shared by all translations of a page),
so a page held out in one language is held out in all of them and no translation of an
evaluation page is ever trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from .._io import atomic_path, write_json_atomic
from ..errors import UserError
from .language import LANGID_CANDIDATES, LANGID_MIN_PROB, identify_language

LANGUAGES = ("en", "de", "fr", "es", "it")
MIN_PARAGRAPH_CHARS = 25


@dataclass(frozen=True)
class Source:
    """One family of pages: a package per language and the pages to take from it."""

    name: str  # e.g. "manpages"; also the document-name prefix shared across languages
    kind: str  # manpage | html | fortune | python
    packages: dict[str, str]  # lang -> Debian package
    patterns: dict[str, tuple[str, ...]]  # lang -> fnmatch patterns relative to the unpacked package
    domain: str  # documentation | manpages | fortunes | code — used to define retain/general sets


SOURCES: tuple[Source, ...] = (
    Source(
        "manpages", "manpage",
        {"en": "manpages", "de": "manpages-de", "fr": "manpages-fr", "es": "manpages-es", "it": "manpages-it"},
        {
            "en": ("usr/share/man/man[1-8]/*.gz",),
            **{lang: (f"usr/share/man/{lang}/man[1-8]/*.gz",) for lang in ("de", "fr", "es", "it")},
        },
        "manpages",
    ),
    Source(
        "manpages-dev", "manpage",
        {"en": "manpages-dev", "de": "manpages-de-dev", "fr": "manpages-fr-dev", "es": "manpages-es-dev", "it": "manpages-it-dev"},
        {
            "en": ("usr/share/man/man[23]/*.gz",),
            **{lang: (f"usr/share/man/{lang}/man[23]/*.gz",) for lang in ("de", "fr", "es", "it")},
        },
        "manpages",
    ),
    Source(
        "installation-guide", "html",
        {lang: "installation-guide-amd64" for lang in LANGUAGES},
        {lang: (f"usr/share/doc/installation-guide-amd64/{lang}/*.html",) for lang in LANGUAGES},
        "documentation",
    ),
    Source(
        "debian-reference", "html",
        {lang: f"debian-reference-{lang}" for lang in LANGUAGES},
        {lang: (f"usr/share/debian-reference/*.{lang}.html",) for lang in LANGUAGES},
        "documentation",
    ),
    Source(
        "debian-faq", "html",
        {"en": "debian-faq", "de": "debian-faq-de", "fr": "debian-faq-fr", "it": "debian-faq-it"},
        {
            "en": ("usr/share/doc/debian/FAQ/*.en.html",),
            **{lang: (f"usr/share/doc/debian/FAQ/{lang}/*.{lang}.html",) for lang in ("de", "fr", "it")},
        },
        "documentation",
    ),
    Source(
        "fortunes", "fortune",
        {"en": "fortunes", "de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it"},
        {
            "en": ("usr/share/games/fortunes/[a-z]*",),
            "de": ("usr/share/games/fortunes/de/[a-z]*",),
            "es": ("usr/share/games/fortunes/es/*.fortunes",),
            "it": ("usr/share/games/fortunes/it/[a-z]*",),
        },
        "fortunes",
    ),
    Source(
        "python-stdlib", "python",
        {"code": "libpython3.11-stdlib"},
        {"code": ("usr/lib/python3.11/*.py", "usr/lib/python3.11/*/*.py")},
        "code",
    ),
)

# Document-name fractions (by stable hash of the name): the rest is training text.
VALID_FRACTION = 0.05
EVAL_FRACTION = 0.10
# The content-matched parallel set: pages of these translated manuals held out in all languages.
PARALLEL_SOURCES = ("installation-guide", "debian-reference")
PARALLEL_FRACTION = 0.25


def assign_split(doc_name: str, source: str) -> str:
    """Deterministic split of a document name; every translation of a page gets the same split."""
    u = int(hashlib.sha256(doc_name.encode()).hexdigest()[:12], 16) / 16**12
    if source in PARALLEL_SOURCES:
        return "parallel" if u < PARALLEL_FRACTION else ("train" if u >= PARALLEL_FRACTION + VALID_FRACTION else "valid")
    if u < EVAL_FRACTION:
        return "eval"
    if u < EVAL_FRACTION + VALID_FRACTION:
        return "valid"
    return "train"


# ----------------------------------------------------------------------------- package fetching


def fetch_package(package: str, cache: Path) -> tuple[Path, str]:
    """Download (once) and unpack a Debian package; return (unpacked dir, version)."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        if shutil.which("apt-get") is None:
            raise RuntimeError("building the corpus needs Debian's apt-get and dpkg-deb; use the shipped corpus instead")
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True, capture_output=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no .deb (run 'apt-get update' first?)")
    deb = debs[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True).stdout.strip()
    out = cache / "unpacked" / package
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(out)
    return out, version


# ----------------------------------------------------------------------------- text extraction


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def manpage_text(path: Path) -> str:
    """Render a (gzipped) roff man page to plain UTF-8 text with groff; no overstrike, no SGR."""
    raw = gzip.decompress(path.read_bytes())
    proc = subprocess.run(
        ["groff", "-k", "-T", "utf8", "-man", "-P", "-c", "-P", "-b", "-P", "-u", "-rLL=200n", "-rHY=0"],
        input=raw, capture_output=True, timeout=60,
    )
    text = _decode(proc.stdout)
    # groff indents and hard-wraps; rejoin wrapped lines into paragraphs
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if lines:
            paragraphs.append(" ".join(lines))
    # drop the header/footer lines groff adds (page name and date)
    return "\n\n".join(paragraphs[1:-1] if len(paragraphs) > 2 else paragraphs)


class _HTMLText(html.parser.HTMLParser):
    """Collect visible text, one paragraph per block element; skip navigation and scripts."""

    BLOCK = {"p", "div", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "td", "th", "tr", "br", "title", "blockquote"}
    SKIP = {"script", "style", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buf: list[str] = []
        self._skip = 0

    def _flush(self):
        text = " ".join("".join(self._buf).split())
        if text:
            self.paragraphs.append(text)
        self._buf = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self._flush()

    def handle_data(self, data):
        if not self._skip:
            self._buf.append(data)


def html_text(path: Path) -> str:
    parser = _HTMLText()
    parser.feed(_decode(path.read_bytes()))
    parser.close()
    parser._flush()
    return "\n\n".join(parser.paragraphs)


def fortune_texts(path: Path) -> list[str]:
    """A fortune file is a list of quotes separated by lines holding only '%'."""
    text = _decode(path.read_bytes())
    return [q.strip() for q in re.split(r"^%\s*$", text, flags=re.M) if q.strip()]


# ----------------------------------------------------------------------------- language filtering

def filter_paragraphs(paragraphs: list[str], lang: str) -> tuple[list[str], int]:
    """Keep paragraphs identified as `lang` with high confidence; return (kept, number dropped)."""
    kept = []
    for p in paragraphs:
        if len(p) < MIN_PARAGRAPH_CHARS:
            continue
        pred, prob = identify_language(p)
        if pred == lang and prob >= LANGID_MIN_PROB:
            kept.append(p)
    return kept, len(paragraphs) - len(kept)


# ----------------------------------------------------------------------------- the build


def _page_documents(source: Source, lang: str, root: Path, rel: str) -> list[tuple[str, str]]:
    """(page name, raw text) pairs for one file. Fortune files give one document per file."""
    path = root / rel
    name = Path(rel).name
    if source.kind == "manpage":
        return [(f"{Path(rel).parent.name}/{name.removesuffix('.gz')}", manpage_text(path))]
    if source.kind == "html":
        # the same page has the same name in every language: strip the language infix
        return [(re.sub(rf"\.{lang}\.html$|\.html$", "", name), html_text(path))]
    if source.kind == "fortune":
        return [(name.removesuffix(".fortunes"), "\n\n".join(fortune_texts(path)))]
    if source.kind == "python":
        return [(rel.split("python3.11/", 1)[1], _decode(path.read_bytes()))]
    raise UserError(f"unknown source kind {source.kind!r}")


def _process_page(args) -> list[dict]:
    source, lang, root, rel, package, version = args
    docs = []
    for page, raw in _page_documents(source, lang, Path(root), rel):
        if source.kind == "python":
            kept, dropped, text = [raw], 0, raw
        else:
            paragraphs = [p.strip() for p in raw.split("\n\n") if p.strip()]
            kept, dropped = filter_paragraphs(paragraphs, lang)
            text = "\n\n".join(kept)
        doc_name = f"{source.name}/{page}"
        docs.append({
            "text": text, "lang": lang, "source": source.name, "domain": source.domain,
            "package": package, "version": version, "page": page, "doc": doc_name,
            "split": assign_split(doc_name, source.name), "paragraphs_kept": len(kept), "paragraphs_dropped": dropped,
        })
    return docs


def _copyright_file(package: str, cache: Path) -> Path:
    doc = cache / "unpacked" / package / "usr/share/doc" / package
    if doc.is_symlink():  # Debian points some packages' doc folder at a sibling package's
        sibling = Path(os.readlink(doc)).name
        root, _ = fetch_package(sibling, cache)
        doc = root / "usr/share/doc" / sibling
    if not (doc / "copyright").is_file():
        raise RuntimeError(f"package {package} ships no copyright file; refusing to redistribute its text")
    return doc / "copyright"


def build_corpus(out_dir: str | Path, cache_dir: str | Path, *, workers: int = 2, sources: tuple[Source, ...] = SOURCES) -> dict:
    """Build `<out_dir>/<split>.jsonl.gz` for every split plus `manifest.json`; return the manifest."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    jobs = []
    packages: dict[str, str] = {}
    for source in sources:
        for lang, package in source.packages.items():
            root, version = fetch_package(package, cache_dir)
            packages[package] = version
            files = sorted(
                str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and any(fnmatch(str(p.relative_to(root)), pat) for pat in source.patterns[lang])
            )
            if not files:
                raise RuntimeError(f"source {source.name}/{lang}: no page in {package} matches {source.patterns[lang]}")
            jobs += [(source, lang, str(root), rel, package, version) for rel in files]

    by_split: dict[str, list[dict]] = defaultdict(list)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for docs in pool.map(_process_page, jobs, chunksize=16):
            for doc in docs:
                if doc["text"].strip():
                    by_split[doc["split"]].append(doc)

    # the parallel set keeps only pages present (with text) in every language of the source
    parallel = by_split.get("parallel", [])
    langs_of = defaultdict(set)
    for d in parallel:
        langs_of[d["doc"]].add(d["lang"])
    by_split["parallel"] = [d for d in parallel if langs_of[d["doc"]] >= set(LANGUAGES)]

    out_dir.mkdir(parents=True, exist_ok=True)
    # each source's licence travels with the text taken from it
    for package in packages:
        with atomic_path(out_dir / "licenses" / f"{package}.copyright") as tmp:
            shutil.copyfile(_copyright_file(package, cache_dir), tmp)
    pages: list[dict] = []
    stats: Counter[tuple[str, str]] = Counter()
    for split, docs in sorted(by_split.items()):
        docs.sort(key=lambda d: (d["lang"], d["doc"]))
        with atomic_path(out_dir / f"{split}.jsonl.gz") as tmp:
            # mtime=0: the same input gives byte-identical output
            with gzip.GzipFile(tmp, "wb", mtime=0) as f:
                for d in docs:
                    f.write((json.dumps({k: d[k] for k in ("text", "lang", "source", "domain", "doc")}, ensure_ascii=False) + "\n").encode())
        for d in docs:
            stats[(split, d["lang"])] += len(d["text"])
            pages.append({k: d[k] for k in ("package", "version", "page", "lang", "split", "source", "paragraphs_kept", "paragraphs_dropped")})
    manifest = {
        "packages": packages,
        "languages": list(LANGUAGES) + ["code"],
        "langid": {"library": "py3langid", "candidates": LANGID_CANDIDATES, "min_prob": LANGID_MIN_PROB, "min_chars": MIN_PARAGRAPH_CHARS},
        "split_fractions": {"valid": VALID_FRACTION, "eval": EVAL_FRACTION, "parallel": f"{PARALLEL_FRACTION} of {', '.join(PARALLEL_SOURCES)}"},
        "chars": {f"{s}.{lang}": n for (s, lang), n in sorted(stats.items())},
        "pages": pages,
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest
