"""Saving matplotlib figures (Agg; no display needed): PNG and SVG, each written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams["svg.hashsalt"] = "comptune"  # fixed element ids: the same figure gives the same SVG file

from ._io import atomic_path  # noqa: E402


def save_figure(fig, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.svg, written atomically; closes the figure."""
    stem = Path(stem)
    paths = []
    for fmt in ("png", "svg"):
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            # no timestamp in the SVG, so re-running on the same results gives the same file
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths
