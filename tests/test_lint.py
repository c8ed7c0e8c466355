"""The code passes the linter and the type checker configured in pyproject.toml (ruff: pyflakes,
pycodestyle, import order; mypy with the pydantic plugin over src/comptune)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_ruff_is_clean():
    done = subprocess.run([_tool("ruff"), "check", "--output-format", "concise", "src", "tests", "benchmarks", "scripts"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_mypy_is_clean():
    # files, plugin and overrides come from pyproject.toml; a cold cache takes ~2 min on 2 cores
    done = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
