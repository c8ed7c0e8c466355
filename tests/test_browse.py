"""`comptune browse`: the atlas equals the inspection tools it summarises, labels follow their rules,
LLM labels go through a real HTTP server, and the site is checked in headless Chromium as a person
would see it (screenshots saved under test-artifacts/browse/)."""

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from comptune.browse.site import MARKER, BrowseConfig, build_site
from comptune.corpus.bundle import bundled_decomposition_dir, bundled_model_dir
from comptune.corpus.datasets import sample_blocks
from comptune.decomposition import Decomposition
from comptune.errors import UserError
from comptune.inspection import component_stats, inspect_components
from comptune.inspection.atlas import AtlasSettings, build_atlas
from comptune.inspection.autointerp import AutointerpConfig, autointerp_labels
from comptune.inspection.labels import language_label
from comptune.model.loading import load_model_and_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STUDY_EDITS = ROOT / "studies" / "study-v2" / "edits"
EDITS = {"single": STUDY_EDITS / "104df785ef4dd056", "neuron_single": STUDY_EDITS / "a4b48e59cbc24d1f", "lora_r1": STUDY_EDITS / "4fec6b66dfc63759",
         "svd_single": STUDY_EDITS / "316e36882ca730f4"}
ARTIFACTS = ROOT / "test-artifacts" / "browse"
GERMAN = "h.3.mlp.down_proj:69"


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(bundled_model_dir())
    return model, tokenizer, Decomposition.load(bundled_decomposition_dir(), model)


@pytest.fixture(scope="module")
def blocks(bundled):
    _, tokenizer, _ = bundled
    return {n: sample_blocks(n, tokenizer, 64, 4) for n in ("train.de", "train.en", "train.code")}


@pytest.fixture(scope="module")
def atlas(bundled, blocks):
    model, tokenizer, decomposition = bundled
    return build_atlas(model, tokenizer, blocks, decomposition=decomposition, settings=AtlasSettings(min_count=1), log=lambda _: None)


def test_atlas_covers_every_subcomponent_and_matches_component_stats(bundled, blocks, atlas):
    _, _, decomposition = bundled
    assert len(atlas.units) == sum(decomposition.C(p) for p in decomposition.module_paths) == 8192
    stats = component_stats(decomposition, blocks)
    for key in (GERMAN, "h.0.attn.q_proj:3", "h.2.mlp.c_fc:500"):
        profile = stats.profile(key)
        for d in blocks:
            # the atlas stores CI in float16: agreement to its precision
            assert atlas.units[key]["profile"][d]["mean"] == pytest.approx(profile[d]["mean_ci"], abs=2e-3)
            assert atlas.units[key]["profile"][d]["freq"] == pytest.approx(profile[d]["firing_freq"], abs=2e-3)


def test_atlas_examples_and_pmi_equal_inspect_components(bundled, blocks, atlas):
    """SEMANTICS S9.1. Two computations of the same thing: the atlas's whole-tensor pass and
    inspect_components' per-key loop give the same PMI of every token (lists long enough to hold them
    all), and each example's top CI is its block's largest."""
    model, tokenizer, decomposition = bundled
    keys = [GERMAN, "h.1.attn.v_proj:10"]
    everything = 10**6
    slow = inspect_components(decomposition, tokenizer, blocks, keys, min_count=2, n_tokens=everything)
    fast = build_atlas(model, tokenizer, blocks, decomposition=decomposition, units={"h.3.mlp.down_proj": [69], "h.1.attn.v_proj": [10]},
                       settings=AtlasSettings(min_count=2, n_pmi=everything), log=lambda _: None).units
    for key in keys:
        for which in ("input_pmi", "output_pmi"):
            a = {(r["token"], r["count"]): r["pmi"] for r in fast[key][which]}
            b = {(r["token"], r["count"]): r["pmi"] for r in slow[key][which]}
            assert a.keys() == b.keys() and len(a) > 3
            for t in a:
                assert a[t] == pytest.approx(b[t], abs=2e-3)  # the atlas's CI is float16
        path, idx = key.split(":")
        ci = decomposition.causal_importance(blocks["train.de"]).lower[path][..., int(idx)]  # [B, T]
        for ex in atlas.units[key]["examples"]["train.de"]:
            assert ex["scores"][ex["at"]] == pytest.approx(ex["score"], abs=0.01)
            assert len(ex["ids"]) == len(ex["scores"]) and 0 <= ex["at"] < len(ex["ids"])
            assert any(abs(row.max().item() - ex["score"]) < 2e-3 for row in ci)  # some block's largest CI


def test_the_german_unit_is_labelled_german(atlas):
    """SEMANTICS S9.3, SEMANTICS S9.4: the bundled German unit's top examples are German and its
    label says so. SEMANTICS S9.2: its CI saturates at 1 in German blocks, so among the tied top
    positions each example shows the one with a full left window."""
    unit = atlas.units[GERMAN]
    german = unit["examples"]["train.de"]
    assert len(german) == 4 and all(ex["score"] == 1.0 and ex["at"] == 12 and len(ex["ids"]) == 17 for ex in german)
    assert unit["label"].startswith("German ("), unit["label"]
    assert unit["evidence"]["example_languages"]["de"] >= 0.6
    assert unit["write"] is not None and len(unit["write"]["promoted"]) == 8
    # an attention-score module's output never reaches the unembedding directly
    assert atlas.units["h.0.attn.q_proj:0"]["write"] is None


def test_language_label_rules():
    """SEMANTICS S9.4: one language, several, all, inactive."""
    german, _ = language_label(["de"] * 9 + ["en"], {"de": 0.77, "en": 0.07, "fr": 0.05})
    assert german == "German (90 % of top examples; CI 0.77 de vs 0.07 en)"
    several, evidence = language_label(["de"] * 5 + ["it"] * 4 + ["en"], {"de": 0.5, "it": 0.4, "en": 0.02})
    assert several.startswith("several languages: de, it (top examples 50 % de, 40 % it; CI 0.50 de, 0.40 it vs 0.02 en")
    assert "several" in evidence["rule"]
    everywhere, _ = language_label(["de", "en", "fr"], {"de": 0.3, "en": 0.31, "fr": 0.28})
    assert everywhere == "all languages (CI 0.28–0.31)"
    inactive, _ = language_label([], {"de": 0.0, "en": 0.0})
    assert inactive.startswith("inactive")


# ----------------------------------------------------------------------------- LLM labels


class _ChatServer(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1: answers 429 to its first request
    when asked to, then a label naming the unit in the prompt."""

    def __init__(self, rate_limit_first: bool):
        self.requests, self.rate_limit_first = [], rate_limit_first
        super().__init__(("127.0.0.1", 0), _ChatHandler)


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.requests.append(body)
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        if server.rate_limit_first and len(server.requests) == 1:
            payload = json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode()
            self.send_response(429)
            self.send_header("retry-after-ms", "10")
        else:
            unit = body["messages"][1]["content"].split()[1]
            payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": f"German function words ({unit})\nmore"}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _serve_chat(rate_limit_first: bool):
    server = _ChatServer(rate_limit_first)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def chat_server():
    server = _serve_chat(rate_limit_first=True)
    yield server
    server.shutdown()


def test_autointerp_labels_through_a_real_http_server_and_cache(atlas, bundled, chat_server, tmp_path, monkeypatch):
    _, tokenizer, _ = bundled
    monkeypatch.setenv("TEST_KEY", "secret")
    config = AutointerpConfig(base_url=f"http://127.0.0.1:{chat_server.server_port}/v1", model="tiny-labeller", api_key_env="TEST_KEY",
                              max_units=2, cache_dir=tmp_path / "cache")
    units = [atlas.units[GERMAN], atlas.units["h.0.mlp.c_fc:1"]]
    decode = lambda i: tokenizer.decode([i])  # noqa: E731
    labels, report = autointerp_labels(units, decode, config, log=lambda _: None)
    assert labels[GERMAN]["label"] == f"German function words ({GERMAN})"  # first line of the reply only
    assert report["requested"] == 2 and report["cached"] == 0 and not report["failed"]
    assert len(chat_server.requests) == 3  # the 429 was retried by the client
    prompt = chat_server.requests[-1]["messages"][1]["content"]
    assert "Top examples:" in prompt and "⟦" in prompt and "Tokens where it is active" in prompt
    again, report = autointerp_labels(units, decode, config, log=lambda _: None)
    assert report["cached"] == 2 and report["requested"] == 0 and len(chat_server.requests) == 3
    assert again[GERMAN]["label"] == labels[GERMAN]["label"] and again[GERMAN]["cached"]


def test_autointerp_failures_are_reported_not_raised(atlas, bundled, tmp_path, monkeypatch):
    _, tokenizer, _ = bundled
    monkeypatch.setenv("TEST_KEY", "secret")
    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = closed.server_port
    closed.server_close()  # nothing listens there now
    config = AutointerpConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env="TEST_KEY", max_retries=0, cache_dir=tmp_path)
    labels, report = autointerp_labels([atlas.units[GERMAN], atlas.units["h.0.mlp.c_fc:1"]], lambda i: tokenizer.decode([i]), config, log=lambda _: None)
    assert labels == {} and report["unreachable"] and f"127.0.0.1:{port}" in report["unreachable"]
    assert report["requested"] == 1 and set(report["failed"]) == {GERMAN, "h.0.mlp.c_fc:1"}  # one try, then no more requests
    monkeypatch.delenv("TEST_KEY")
    with pytest.raises(UserError, match="TEST_KEY"):
        autointerp_labels([atlas.units[GERMAN]], lambda i: "", config)


# ----------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def scan_file(bundled, tmp_path_factory):
    from comptune.inspection.scan import scan_report

    model, tokenizer, decomposition = bundled
    out = tmp_path_factory.mktemp("scan") / "scan.json"
    report = scan_report(model=model, tokenizer=tokenizer, decomposition=decomposition, basis_name="components", modules=None, target="valid.de",
                         reference="valid.general_en", protected=[], keys=[GERMAN], n_blocks=2, block_len=64, log=lambda _: None)
    out.write_text(json.dumps(report))
    return out


@pytest.fixture(scope="module")
def site(scan_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("browse") / "site"
    chat = _serve_chat(rate_limit_first=False)
    os.environ["COMPTUNE_TEST_KEY"] = "secret"
    autointerp = {"base_url": f"http://127.0.0.1:{chat.server_port}/v1", "model": "tiny-labeller", "api_key_env": "COMPTUNE_TEST_KEY",
                  "max_units": 3, "cache_dir": str(tmp_path_factory.mktemp("autointerp"))}
    config = BrowseConfig(datasets=["train.de", "train.en", "train.code"], blocks=4, block_len=64, edits=[str(p) for p in EDITS.values()],
                          scans=[str(scan_file)], edit_blocks=2, rollouts={"prompts": {"de": "Um das Paket zu installieren"}, "max_new_tokens": 4},
                          autointerp=autointerp)
    try:
        index = build_site(config, out, log=lambda _: None)
    finally:
        chat.shutdown()
        del os.environ["COMPTUNE_TEST_KEY"]
    assert index == out / "index.html"
    return out


def test_site_is_served_on_localhost(site):
    import urllib.request

    from comptune.browse.site import serve

    server = serve(site, 0, block=False)
    try:
        html = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/index.html", timeout=10).read().decode()
        assert "data/index.js" in html
    finally:
        server.shutdown()


def test_site_files_and_manifest(site):
    meta = json.loads((site / MARKER).read_text())
    assert meta["kind"] == "comptune-browse" and meta["config"]["blocks"] == 4 and meta["versions"]["torch"]
    assert meta["autointerp"]["requested"] == 3 and not meta["autointerp"]["failed"]
    assert len(list((site / "data" / "units" / "components").glob("*.js"))) == 24
    # the neuron and SVD edits' units have pages in their own bases
    assert (site / "data" / "units" / "neurons").is_dir() and (site / "data" / "units" / "svd").is_dir()
    unit_js = (site / "data" / "units" / "components" / "h.3.mlp.down_proj.js").read_text()
    assert '"scan":' in unit_js and "</script" not in unit_js


def test_output_folder_rules(site, tmp_path):
    from comptune.browse.site import check_output

    check_output(site, force=False)  # a previous site may be replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a comptune browse site.*--force"):
        check_output(other, force=False)
    check_output(other, force=True)
    with pytest.raises(UserError, match="is a file"):
        check_output(other / "keep.txt", force=False)


def test_a_failed_build_leaves_no_site(monkeypatch, tmp_path):
    from comptune.browse import site as site_module

    out = tmp_path / "site"

    def fail(root, *args):
        (root / "index.html").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(site_module, "_write", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_site(BrowseConfig(datasets=["train.de"], blocks=1, block_len=32), out, log=lambda _: None)
    assert not out.exists() and not any(tmp_path.iterdir())


def test_bad_input_errors(tmp_path):
    from comptune.cli import main

    with pytest.raises(UserError, match="unknown dataset 'train.xx'"):
        build_site(BrowseConfig(datasets=["train.xx"], blocks=1, block_len=32), tmp_path / "a", log=lambda _: None)
    not_a_scan = tmp_path / "scan.json"
    not_a_scan.write_text('{"config": {}}')
    with pytest.raises(UserError, match="is not a dose-scan report"):
        build_site(BrowseConfig(scans=[str(not_a_scan)]), tmp_path / "e", log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="no saved edit"):
        build_site(BrowseConfig(edits=[str(tmp_path)]), tmp_path / "b", log=lambda _: None)
    with pytest.raises(UserError, match="exceeds the model's context of 256 tokens"):
        build_site(BrowseConfig(datasets=["train.de"], blocks=1, block_len=4096), tmp_path / "d", log=lambda _: None)
    assert main(["browse", "--out", str(tmp_path / "c"), "--autointerp-url", "http://127.0.0.1:1/v1"]) == 2
    with pytest.raises(Exception, match="blocks"):
        BrowseConfig(blocks=0)


def test_a_decomposition_of_another_model_is_refused(bundled, tmp_path):
    model, tokenizer, _ = bundled
    other = tmp_path / "other-model"
    shifted = load_model_and_tokenizer(bundled_model_dir())[0]
    with torch.no_grad():
        shifted.get_submodule("h.0.attn.q_proj").weight.add_(1e-3)
    shifted.save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(UserError, match="fingerprint"):
        build_site(BrowseConfig(model=str(other), datasets=["train.de"], blocks=1, block_len=32), tmp_path / "site", log=lambda _: None)


# ----------------------------------------------------------------------------- in a browser


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and playwright (installed by .ci/run and scripts/setup.sh)")
        pytest.skip("no chromium / playwright here (apt-get install chromium; pip install playwright)")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert errors == [], f"console errors: {errors}"


def _shot(pg, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_index_in_chromium_has_every_row_sorts_and_filters(site, page):
    page.goto((site / "index.html").as_uri())
    page.wait_for_selector("#units tbody tr")
    assert page.locator("#count").inner_text() == "8192 of 8192 units"
    page.select_option("#pagesize", "500")
    assert page.locator("#units tbody tr").count() == 500
    assert page.locator("#page").inner_text() == "page 1 of 17"
    # every row is reachable: the last page holds the remainder
    for _ in range(16):
        page.click("#next")
    assert page.locator("#units tbody tr").count() == 8192 - 16 * 500
    # sorting: a numeric column sorts largest first, a second click reverses it
    page.click("th[data-col='2']")
    layers = [int(t) for t in page.locator("#units tbody tr td:nth-child(3)").all_inner_texts()]
    assert layers[0] == 3 and layers == sorted(layers, reverse=True) and page.locator("#page").inner_text() == "page 1 of 17"
    page.click("th[data-col='2']")
    layers = [int(t) for t in page.locator("#units tbody tr td:nth-child(3)").all_inner_texts()]
    assert layers[0] == 0 and layers == sorted(layers)
    page.click("th[data-col='3']")
    freqs = [float(t) for t in page.locator("#units tbody tr td:nth-child(4)").all_inner_texts()]
    assert freqs == sorted(freqs, reverse=True) and freqs[0] > freqs[-1]
    # filtering by module and by text
    page.select_option("#module", "h.3.mlp.down_proj")
    assert page.locator("#count").inner_text() == "512 of 8192 units"
    page.fill("#filter", "down_proj:69")
    keys = page.locator("#units tbody td.key").all_inner_texts()
    assert GERMAN in keys and all("down_proj:69" in k for k in keys)
    _shot(page, "index.png")


def test_unit_page_in_chromium_shades_tokens_by_ci(site, page):
    page.goto((site / "unit.html").as_uri() + f"?basis=components&key={GERMAN}")
    page.wait_for_selector(".example")
    assert page.locator("#label").inner_text().startswith("German (")
    assert page.locator("#autointerp").inner_text() == f"German function words ({GERMAN})"  # edited units are labelled first
    tokens = page.locator(".example .tok")
    assert tokens.count() > 10
    tops = page.locator(".example .tok.top")
    assert tops.count() == page.locator(".example").count()  # one marked token per example
    style = tops.first.get_attribute("style")
    alpha = float(style.split("rgba(240, 138, 36,")[1].split(")")[0])
    title_score = float(tops.first.get_attribute("title").split()[-1])
    assert alpha == pytest.approx(min(1.0, title_score), abs=0.01) and alpha > 0.1
    assert page.locator("#dose svg circle").count() >= 3  # the scan's curve
    assert page.locator("#profile tr").count() == 4  # header + 3 datasets
    _shot(page, "unit.png")
    # a neighbour link leads to another unit page
    page.locator("a[href^='unit.html']").first.click()
    page.wait_for_selector(".example")


def test_edit_and_neuron_pages_in_chromium(site, page):
    page.goto((site / "edit.html").as_uri() + "?id=0")
    page.wait_for_selector("#ce")
    assert page.locator("#scales a").first.inner_text() == GERMAN
    assert page.locator("#ce tr").count() == 1 + 7 and page.locator("#rollouts tr").count() == 2
    _shot(page, "edit.png")
    page.goto((site / "edit.html").as_uri() + "?id=1")
    page.wait_for_selector("#scales")
    link = page.locator("#scales a").first
    assert link.inner_text() == GERMAN  # the study's neuron pick is the same index in the neuron basis
    link.click()
    page.wait_for_selector(".example")
    assert "neurons basis" in page.locator("h2").first.inner_text()
    page.goto((site / "edit.html").as_uri() + "?id=2")
    page.wait_for_selector("#ce")
    assert "LoRA rank 1" in page.locator("main").inner_text()
    page.goto((site / "edit.html").as_uri() + "?id=3")
    page.wait_for_selector("#scales")
    assert "svd_scale" in page.locator("h2").first.inner_text()
    page.locator("#scales a").first.click()
    page.wait_for_selector(".example")
    assert "svd basis" in page.locator("h2").first.inner_text()
    page.goto((site / "unit.html").as_uri() + "?basis=components&key=h.9.nope:1")
    assert "no unit" in page.locator(".error").inner_text()


def test_cli_flags_override_the_config_file(tmp_path):
    from comptune.browse.cli import config_from_args
    from comptune.cli import build_parser

    (tmp_path / "browse.yaml").write_text("blocks: 8\nthreshold: 0.2\nautointerp: {base_url: 'http://127.0.0.1:9/v1', model: m}\n")
    args = build_parser().parse_args(["browse", "--config", str(tmp_path / "browse.yaml"), "--blocks", "3", "--edit", "a", "--edit", "b",
                                      "--data", "train.de", "x.txt"])
    config = config_from_args(args)
    assert (config.blocks, config.threshold, config.edits, config.datasets) == (3, 0.2, ["a", "b"], ["train.de", "x.txt"])
    assert config.autointerp.model == "m" and config.autointerp.api_key_env == "OPENAI_API_KEY"
    (tmp_path / "bad.yaml").write_text("blokcs: 8\n")
    with pytest.raises(Exception, match="blokcs"):
        config_from_args(build_parser().parse_args(["browse", "--config", str(tmp_path / "bad.yaml")]))
