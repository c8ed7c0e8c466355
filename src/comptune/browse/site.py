"""`comptune browse`: a static site to look at every subcomponent (and the units an edit or a
scan uses) before editing it. It opens from disk in any browser: pages are fixed HTML + JS under
`assets/`, data are JS files under `data/` (a page opened from disk may load a script but not fetch
JSON). A unit page reads only its module's data file, so 8,192 units stay fast.

The site is built in a folder beside the output and moved into place when complete; an existing
output folder is replaced only if it is a previous browse site (it holds `comptune-browse.json`)
or `force` is given.
"""

from __future__ import annotations

import json
import re
import string
import time
from importlib import resources
from pathlib import Path

import torch
from pydantic import Field

from .._io import atomic_directory, versions, write_json_atomic
from ..config import StrictConfig
from ..errors import UserError
from ..inspection.atlas import Atlas, AtlasSettings, build_atlas
from ..inspection.autointerp import AutointerpConfig
from ..study.config import RolloutSettings

MARKER = "comptune-browse.json"
# the site's pages, one template (assets/browse/page.html): each loads common.js, data/site.js,
# these data files, then assets/<page>.js
PAGES = {"index": ["data/index.js"], "unit": ["data/vocab.js"], "edit": []}
DEFAULT_DATASETS = ["train.de", "train.en", "train.fr", "train.es", "train.it", "train.code"]


class BrowseConfig(StrictConfig):
    model: str | None = None  # None: the bundled model
    decomposition: str | None = None  # None: the bundled decomposition
    datasets: list[str] = Field(default_factory=lambda: list(DEFAULT_DATASETS), min_length=1)
    blocks: int = Field(32, ge=1)  # per dataset
    block_len: int | None = Field(None, ge=8)  # None: 128 tokens, or the model's context if shorter
    threshold: float = Field(0.1, gt=0, lt=1)
    examples: int = Field(5, ge=1)  # per dataset and unit
    edits: list[str] = []  # adapter folders to give a page each
    scans: list[str] = []  # `comptune inspect --scan --out` JSON files: dose-response curves on unit pages
    edit_datasets: list[str] = Field(default_factory=lambda: ["parallel.de", "parallel.en", "general_en", "parallel.fr", "parallel.es",
                                                               "parallel.it", "code"])
    edit_blocks: int = Field(16, ge=1)  # per dataset, for an edit's held-out CE
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings)
    autointerp: AutointerpConfig | None = None
    title: str | None = None


def check_output(out: Path, force: bool) -> None:
    """Refuse to replace a folder that is not a previous browse site, unless forced."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        raise UserError(f"--out {out} exists and is not a comptune browse site (no {MARKER}); choose another folder, or pass --force to replace it")


def _blocks(names: list[str], tokenizer, block_len: int, n: int) -> dict[str, torch.Tensor]:
    from ..corpus.bundle import BUNDLED_DATASETS
    from ..corpus.datasets import dataset_blocks, sample_blocks

    # both raise, naming the fix, for a dataset too short for one block
    return {name: sample_blocks(name, tokenizer, block_len, n) if name in BUNDLED_DATASETS else dataset_blocks(name, tokenizer, block_len, max_blocks=n)
            for name in names}


def _scan_records(paths: list[str]) -> dict[str, dict[str, dict]]:
    """{basis: {key: candidate}} from dose-scan reports."""
    out: dict[str, dict[str, dict]] = {}
    for p in paths:
        try:
            report = json.loads(Path(p).read_text())
            cfg = report["config"]
            for c in report["candidates"]:
                out.setdefault(cfg["basis"], {})[c["key"]] = {
                    "target": cfg["target"], "reference": cfg["reference"], "bound": cfg["bound"],
                    "best_gain": c["best_gain"], "best_s": c["best_s"], "best_damage": c["best_damage"], "curve": c["curve"]}
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{p} is not a dose-scan report (comptune inspect --scan --out): {e}") from None
    return out


def build_site(config: BrowseConfig, out: str | Path, *, force: bool = False, device=None, log=print) -> Path:
    """Build the site into `out`; returns its index.html."""
    from ..corpus.bundle import bundled_decomposition_dir, bundled_model_dir
    from ..decomposition import Decomposition
    from ..decomposition.bases import neuron_components, svd_components
    from ..model.loading import context_length, load_model_and_tokenizer
    from .edits import edit_records

    out = Path(out)
    check_output(out, force)
    start = time.perf_counter()
    model_dir = Path(config.model) if config.model else bundled_model_dir()
    decomposition_dir = Path(config.decomposition) if config.decomposition else bundled_decomposition_dir()
    scans = _scan_records(config.scans)
    for edit_dir in config.edits:
        if not (Path(edit_dir) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--edit {edit_dir} holds no saved edit (no adapter_config.json)")
    model, tokenizer = load_model_and_tokenizer(model_dir, device=device)
    decomposition = Decomposition.load(decomposition_dir, model)  # refuses another model's decomposition, naming both fingerprints
    context = context_length(model)
    if config.block_len is not None and context is not None and config.block_len > context:
        raise UserError(f"--block-len {config.block_len} exceeds the model's context of {context} tokens; give at most {context}")
    block_len = config.block_len or min(128, context or 128)
    blocks = {k: v.to(device) if device else v for k, v in _blocks(config.datasets, tokenizer, block_len, config.blocks).items()}
    settings = AtlasSettings(threshold=config.threshold, n_examples=config.examples)
    atlases = [build_atlas(model, tokenizer, blocks, decomposition=decomposition, settings=settings, log=log)]
    edits = []
    if config.edits:
        eval_blocks = _blocks(config.edit_datasets, tokenizer, block_len, config.edit_blocks)
        edits = edit_records(config.edits, model, tokenizer, decomposition, eval_blocks, list(config.rollouts.prompts.values()),
                             config.rollouts.max_new_tokens, log=log)
    # units of other bases that a scan or an edit uses get pages too
    wanted: dict[str, dict[str, set[int]]] = {}
    for basis, records in scans.items():
        for key in records:
            _want(wanted, basis, key)
    for e in edits:
        for s in e["scales"]:
            _want(wanted, e["basis"], s["key"])
    other_bases = {"neurons": neuron_components, "svd": svd_components}  # an edit's own vectors ("vectors") get no pages
    for basis, units in wanted.items():
        if basis in other_bases:
            atlases.append(build_atlas(model, tokenizer, blocks, basis=other_bases[basis](model, sorted(units)), basis_name=basis,
                                       units={p: sorted(js) for p, js in units.items()}, settings=settings, log=log))
    for atlas in atlases:
        for key, scan in scans.get(atlas.basis, {}).items():
            if key in atlas.units:
                atlas.units[key]["scan"] = scan
    for e in edits:
        unit_records = next((a.units for a in atlases if a.basis == e["basis"]), {})
        for s in e["scales"]:
            s["linked"] = s["key"] in unit_records
            s["label"] = unit_records[s["key"]]["label"] if s["key"] in unit_records else None
    autointerp_report = None
    if config.autointerp is not None:
        autointerp_report = _autointerp(atlases[0], edits, scans, tokenizer, config.autointerp, log)
    meta = {
        "kind": "comptune-browse", "config": config.model_dump(mode="json"), "model": str(model_dir), "decomposition": str(decomposition_dir),
        "target_fingerprint": decomposition.metadata()["target"]["fingerprint"],
        "seed": "deterministic (no sampling; greedy rollouts)", "seconds": None, "autointerp": autointerp_report, "versions": versions(),
    }
    with atomic_directory(out) as tmp:
        _write(tmp, atlases, edits, tokenizer, config, meta, block_len)
        meta["seconds"] = round(time.perf_counter() - start, 1)
        write_json_atomic(tmp / MARKER, meta)
    log(f"browse: {sum(len(a.units) for a in atlases)} unit pages, {len(edits)} edit pages in {meta['seconds']:.0f} s → {out / 'index.html'}")
    return out / "index.html"


def _want(wanted: dict, basis: str, key: str) -> None:
    from ..decomposition.components import parse_component_key

    path, j = parse_component_key(key)
    wanted.setdefault(basis, {}).setdefault(path, set()).add(j)


def _autointerp(atlas: Atlas, edits: list[dict], scans: dict, tokenizer, config: AutointerpConfig, log) -> dict:
    """LLM labels for the decomposition's units: those edited or scanned first, then the most active."""
    from ..inspection.autointerp import autointerp_labels

    first = [s["key"] for e in edits if e["basis"] == atlas.basis for s in e["scales"]] + list(scans.get(atlas.basis, {}))
    rest = sorted(atlas.units, key=lambda k: -atlas.units[k]["freq"])
    order = [k for k in dict.fromkeys(first + rest) if k in atlas.units]
    labels, report = autointerp_labels([atlas.units[k] for k in order], lambda i: tokenizer.decode([i]), config, log=log)
    for key, label in labels.items():
        atlas.units[key]["autointerp"] = label
    return report


def _file_name(module: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", module) + ".js"


def _js(var: str, obj) -> str:
    # JSON is valid JS; "</" is escaped so a token like "</script>" cannot end a script early
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return f"{var} = {text};\n"


def _write(root: Path, atlases: list[Atlas], edits: list[dict], tokenizer, config: BrowseConfig, meta: dict, block_len: int) -> None:
    assets = resources.files("comptune") / "assets" / "browse"
    (root / "assets").mkdir()
    for name in ("browse.css", "common.js", "index.js", "unit.js", "edit.js"):
        (root / "assets" / name).write_text((assets / name).read_text(encoding="utf-8"), encoding="utf-8")
    page = string.Template((assets / "page.html").read_text(encoding="utf-8"))
    for name, data_scripts in PAGES.items():
        scripts = "\n".join(f'<script src="{src}"></script>' for src in data_scripts)
        (root / f"{name}.html").write_text(page.substitute(page=name, data_scripts=scripts), encoding="utf-8")
    data = root / "data"
    (data / "edits").mkdir(parents=True)
    main = atlases[0]
    unit_files: dict[str, dict[str, str]] = {}
    for atlas in atlases:
        by_module: dict[str, dict] = {}
        for key, unit in atlas.units.items():
            by_module.setdefault(unit["module"], {})[key] = unit
        folder = data / "units" / atlas.basis
        folder.mkdir(parents=True)
        for module, units in by_module.items():
            name = _file_name(module)
            slot = "window.UNITS[" + json.dumps(f"{atlas.basis}/{module}") + "]"
            (folder / name).write_text("window.UNITS = window.UNITS || {};\n" + _js(slot, units), encoding="utf-8")
            unit_files.setdefault(atlas.basis, {})[module] = f"data/units/{atlas.basis}/{name}"
    vocab = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    (data / "vocab.js").write_text(_js("window.VOCAB", vocab), encoding="utf-8")
    rows = [[r["key"], r["module"], r["layer"], r["freq"], r["max"], r["mean"], r["label"]] for r in main.index_rows()]
    (data / "index.js").write_text(_js("window.INDEX", {"datasets": main.datasets, "rows": rows}), encoding="utf-8")
    for e in edits:
        (data / "edits" / f"{e['id']}.js").write_text(_js("window.EDIT", e), encoding="utf-8")
    site = {
        "title": config.title or f"comptune browse · {Path(meta['decomposition']).name}",
        "subtitle": f"{len(main.units)} units of {Path(meta['decomposition']).name} on {Path(meta['model']).name}; "
                    f"{config.blocks} blocks × {block_len} tokens of {', '.join(main.datasets)}",
        "basis": main.basis, "score_name": main.score_name, "threshold": main.settings.threshold,
        "datasets": main.datasets, "languages": main.languages, "unit_files": unit_files,
        "edits": [{"id": e["id"], "name": e["name"], "basis": e["basis"], "keys": [s["key"] for s in e["scales"]]} for e in edits],
    }
    (data / "site.js").write_text(_js("window.SITE", site), encoding="utf-8")


def serve(site_dir: str | Path, port: int, *, block: bool = True):
    """Serve a built site on 127.0.0.1:`port` (0: any free port) until interrupted; with
    `block=False`, start it in a thread and return the server (its `shutdown()` stops it)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    if not block:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd
    print(f"serving {site_dir} on http://127.0.0.1:{httpd.server_port}/index.html (Ctrl-C stops)")
    with httpd:
        httpd.serve_forever()
