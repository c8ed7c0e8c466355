"""Config files: unknown keys are errors; `extends:` merges mappings and replaces everything else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comptune.config import read_config_file
from comptune.study.config import SweepConfig


def _write(path, text):
    path.write_text(text)
    return path


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    """SEMANTICS S7.3."""
    _write(tmp_path / "base.yaml", "name: base\nbudgets: [2, 4]\nseeds: [0, 1, 2]\ntrain: {seq_len: 64, patience: 100}\n"
           "methods:\n  - {name: a, method: lora, lrs: [0.01]}\n  - {name: b, method: lora, lrs: [0.1]}\n")
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\nname: child\nbudgets: [8]\ntrain: {patience: 7}\n"
                   "methods:\n  - {name: c, method: lora, lrs: [0.3]}\n")
    data = read_config_file(child)
    assert "extends" not in data
    assert data["name"] == "child" and data["seeds"] == [0, 1, 2]
    assert data["budgets"] == [8]  # a list replaces the inherited one whole
    assert data["train"] == {"seq_len": 64, "patience": 7}  # a mapping merges key by key
    assert [m["name"] for m in data["methods"]] == ["c"]
    cfg = SweepConfig.from_file(child)
    assert (cfg.train.seq_len, cfg.train.patience, cfg.budgets) == (64, 7, [8])


def test_extends_chain_cycle_and_missing_parent(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\n")
    with pytest.raises(ValueError, match="cycle"):
        read_config_file(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        read_config_file(tmp_path / "c.yaml")
    _write(tmp_path / "d.yaml", "extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ValueError, match="one file path"):
        read_config_file(tmp_path / "d.yaml")


def test_unknown_keys_survive_inheritance(tmp_path):
    """A typo in a child file is still an error after the merge."""
    _write(tmp_path / "base.yaml", "budgets: [2]\nseeds: [0]\nmethods:\n  - {name: a, method: lora, lrs: [0.01]}\n")
    _write(tmp_path / "child.yaml", "extends: base.yaml\ntrain: {patiense: 3}\n")
    with pytest.raises(ValidationError, match="patiense"):
        SweepConfig.from_file(tmp_path / "child.yaml")


def test_validation_errors_read_as_one_line_naming_field_problem_and_choices():
    from comptune.config import describe_validation_error
    from comptune.tuning import TuneConfig

    with pytest.raises(ValidationError) as missing:
        TuneConfig(method="lora")
    assert describe_validation_error(missing.value) == "invalid TuneConfig: `budget` is required"
    with pytest.raises(ValidationError) as bad:
        TuneConfig(budget=4, lr=-1, selection={"keyz": ["a:1"]})
    text = describe_validation_error(bad.value)
    assert "\n" not in text and "https://" not in text
    assert "`lr`: input should be greater than 0 (got -1)" in text
    assert "`selection.keyz` is not a setting (settings: keys, modules)" in text


def test_cli_prints_a_validation_error_as_one_line(capsys):
    from comptune.cli import main
    from comptune.corpus.bundle import bundled_model_dir

    assert main(["tune", "--model", str(bundled_model_dir()), "--method", "lora", "--forget", "train.de",
                 "--retain", "train.en", "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "comptune tune: error: invalid TuneConfig: `budget` is required"
