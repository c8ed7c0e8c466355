"""The study's figures, drawn from result rows with matplotlib (Agg; no display needed).

Every figure is saved as PNG and SVG, each written atomically.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator  # noqa: E402

from .._figures import save_figure  # noqa: E402
from ..study.rows import RunRow  # noqa: E402

MARKERS = "osD^vP*Xh<>"


def _symlog_label(label: str, linthresh: float) -> str:
    # symlog ticks look like a log axis that admits 0: the label says which it is
    return f"{label}\nsymlog scale: linear within ±{linthresh:g}"


def _symlog_y(ax, linthresh: float, label: str | None) -> None:
    """Symmetric log y axis (damage spans 0.001 … 10 nats, and can be negative) with plain tick
    labels; `label` (None: set elsewhere) gets the scale's note."""
    if label is not None:
        ax.set_ylabel(_symlog_label(label, linthresh))
    ax.set_yscale("symlog", linthresh=linthresh)
    # 1-2-5 ticks per decade: a short range above linthresh (0.1 … 0.8) would otherwise get no label
    ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=linthresh, base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def short_label(dataset: str) -> str:
    """A dataset given as a file path is labelled by its file name without extensions."""
    return Path(dataset).name.split(".")[0] if "/" in dataset else dataset


def method_colors(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_tradeoff(rows: list[RunRow], methods: list[str], budgets: list[int],
        *, chance_gap: float, max_damage: float, forget_label: str, retain_label: str, stem: Path) -> list[Path]:
    """One panel per budget: x = forget CE increase, y = retain CE increase, one point per run;
    dotted vertical line = forget set at chance (x = ln|V| − base CE), dashed = the damage bound."""
    colors = method_colors(methods)
    ncols = min(len(budgets), 3)
    nrows = -(-len(budgets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharex=True, sharey=True)
    for ax, budget in zip(axes.flat, budgets):
        for j, m in enumerate(methods):
            pts = [(r.scored.forget_increase, r.scored.retain_damage) for r in rows if r.name == m and r.budget == budget]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=22, color=colors[m], marker=MARKERS[j % len(MARKERS)], alpha=0.8, label=m, edgecolors="none")
        ax.axvline(chance_gap, color="k", ls=":", lw=1)
        ax.axhline(max_damage, color="grey", ls="--", lw=0.8)
        ax.axhline(0, color="grey", lw=0.5)
        _symlog_y(ax, 0.1, None)
        ax.set_title(f"budget {budget} forget tokens", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(budgets):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(f"{short_label(forget_label)} CE increase (nats)")
    for ax in axes[:, 0]:
        ax.set_ylabel(_symlog_label(f"{short_label(retain_label)} CE increase (nats)", 0.1))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1 : len(budgets)]:  # a method may be missing from the first panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), bbox_to_anchor=(0.5, 1.0 + 0.04 / nrows), frameon=False)
    fig.suptitle(f"dotted: {short_label(forget_label)} at chance; dashed: {max_damage:g} nats damage", y=-0.01, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_budget_curves(table: list[dict], methods: list[str],
                       *, chance_gap: float, max_damage: float, forget_label: str, retain_label: str, stem: Path) -> list[Path]:
    """Mean forget CE increase (left) and mean retain damage (right) of the chosen runs against the
    budget (log x), one line per method; `table` is `report.summary.budget_curve_table`."""
    colors = method_colors(methods)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for j, m in enumerate(methods):
        pts = [c for t in table if t["name"] == m for c in t["per_budget"]]
        if not pts:
            continue
        xs = [c["budget"] for c in pts]
        style = dict(color=colors[m], marker=MARKERS[j % len(MARKERS)], ms=4, lw=1.2, label=m)
        left.plot(xs, [c["forget_increase"] for c in pts], **style)
        right.plot(xs, [c["retain_damage"] for c in pts], **style)
    left.axhline(chance_gap, color="k", ls=":", lw=1)
    left.set_ylabel(f"{short_label(forget_label)} CE increase (nats)")
    right.axhline(max_damage, color="grey", ls="--", lw=0.8)
    right.axhline(0, color="grey", lw=0.5)
    _symlog_y(right, 0.1, f"{short_label(retain_label)} CE increase (nats)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (forget tokens)")
        ax.grid(alpha=0.3)
    left.set_title("forget gain, mean over seeds (dotted: at chance)", fontsize=10)
    right.set_title(f"damage, mean over seeds (dashed: {max_damage:g} nats)", fontsize=10)
    right.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_off_target(rows: list[RunRow], methods: list[str], datasets: list[str], *, budget: int, stem: Path) -> list[Path]:
    """CE increase per dataset (x) per method (offset), one point per seed, at one budget."""
    colors = method_colors(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(datasets) + 2), 3.8))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        mrows = [r for r in rows if r.name == m and r.budget == budget]
        for i, d in enumerate(datasets):
            ys = [r.increase[d] for r in mrows if d in r.increase]
            xs = [i - 0.4 + width * (j + 0.5)] * len(ys)
            ax.scatter(xs, ys, s=18, color=colors[m], marker=MARKERS[j % len(MARKERS)], alpha=0.8, label=m if i == 0 else None, edgecolors="none")
    ax.axhline(0, color="grey", lw=0.5)
    _symlog_y(ax, 0.1, "CE increase over base (nats)")
    ax.set_xticks(range(len(datasets)), [short_label(d) for d in datasets], rotation=30, ha="right")
    ax.set_title(f"off-target CE increase at budget {budget}, one point per seed", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(methods), 4), frameon=False)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_scalars(rows: list[RunRow], methods: list[str], budgets: list[int], *, stem: Path) -> list[Path]:
    """Learned scalar values per budget (one point per scalar per run): s < 0 inverts, s > 1 amplifies."""
    colors = method_colors(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(budgets) + 2), 3.8))
    width = 0.8 / max(len(methods), 1)
    values = []
    for j, m in enumerate(methods):
        first = True
        for i, b in enumerate(budgets):
            ys = [s for r in rows if r.name == m and r.budget == b for s in r.final_scalars.values()]
            values += ys
            xs = [i - 0.4 + width * (j + 0.5)] * len(ys)
            ax.scatter(xs, ys, s=14, color=colors[m], marker=MARKERS[j % len(MARKERS)], alpha=0.7, label=m if first else None, edgecolors="none", zorder=3)
            first = False
    # always show both regimes: s < 0 (inverting) and s > 1 (amplifying)
    lo, hi = min(values + [-1.0]) * 1.3, max(values + [2.0]) * 1.3
    _symlog_y(ax, 1.0, "learned scalar s (1 = unchanged)")
    ax.set_ylim(lo, hi)
    ax.axhspan(lo, 0, color="tab:blue", alpha=0.07, lw=0)
    ax.axhspan(1, hi, color="tab:red", alpha=0.07, lw=0)
    ax.axhline(0, color="tab:blue", lw=0.8, ls=":")
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.text(1.01, 0.02, "inverting (s < 0)", transform=ax.transAxes, fontsize=8, color="tab:blue", va="bottom")
    ax.text(1.01, 0.98, "amplifying (s > 1)", transform=ax.transAxes, fontsize=8, color="tab:red", va="top")
    ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
    ax.set_xlabel("budget (forget tokens)")
    ax.set_title("learned scalars of the chosen runs", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, stem)
