"""A grid report's pictures: a bar per cell for every metric with its 95 % CI, and, when the cells' students differ
in compute, quality against MACs with the Pareto front."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from sdakd.evaluate.registry import METRICS


def metric_bars(grid: str, rows: list[dict[str, Any]], metrics: Sequence[str], reference: str | None,
                path: Path) -> Path:
    """One panel per metric: each cell's test mean with its CI; the reference cell in a darker colour, a star
    over the cells whose paired difference to it is significant."""
    from sdakd.tracking.plots import plt, save_figure

    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        shown = [r for r in rows if r[f"{name}_mean"] is not None]
        means = [r[f"{name}_mean"] for r in shown]
        errors = [r[f"{name}_ci95"] or 0 for r in shown]
        colours = ["#444444" if r["cell"] == reference else "#8fb3d9" for r in shown]
        ax.bar(range(len(shown)), means, yerr=errors, capsize=3, color=colours)
        for i, r in enumerate(shown):
            if r.get(f"{name}_significant"):
                ax.annotate("*", (i, means[i] + errors[i]), ha="center", va="bottom", fontsize=12)
        ax.set_xticks(range(len(shown)), [r["cell"] for r in shown], rotation=45, ha="right", fontsize=8)
        if means:  # bars of PSNR-like numbers all reach 28: the axis starts near the smallest
            low, high = min(m - e for m, e in zip(means, errors)), max(m + e for m, e in zip(means, errors))
            pad = 0.15 * (high - low or abs(high) or 1.0)
            ax.set_ylim(low - pad, high + pad)
        better = "higher" if METRICS.get(name).mode == "max" else "lower"
        ax.set_title(f"{METRICS.get(name).heading or name}\n({better} is better)", fontsize=9)
    fig.suptitle(f"{grid}: test split, mean ± 95 % CI over seeds; * = differs from {reference} (paired)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def pareto_plot(grid: str, rows: list[dict[str, Any]], path: Path) -> Path:
    """Test PSNR-Y against MACs (log x); the cells no other cell beats on both are joined by the front line."""
    from sdakd.tracking.plots import plt, save_figure

    rows = [r for r in rows if r["psnr_y_mean"] is not None and r["macs_mean"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("cell", "o"), ("baseline", "s")):
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            ax.errorbar([r["macs_mean"] for r in mine], [r["psnr_y_mean"] for r in mine],
                        yerr=[r["psnr_y_ci95"] or 0 for r in mine], fmt=marker, capsize=3, label=kind + "s")
    for r in rows:
        ax.annotate(r["cell"], (r["macs_mean"], r["psnr_y_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    front = sorted((r for r in rows if not any(_beats(o, r) for o in rows)), key=lambda r: r["macs_mean"])
    if len(front) > 1:
        ax.step([r["macs_mean"] for r in front], [r["psnr_y_mean"] for r in front], where="post", color="gray",
                linewidth=1, label="Pareto front")
    for name, style in (("teacher", ":"), ("bicubic", "--")):
        values = [r[f"{name}_psnr_y"] for r in rows if r[f"{name}_psnr_y"] is not None]
        if values:
            ax.axhline(statistics.fmean(values), color="black", linestyle=style, linewidth=0.8, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("student MACs (1x3x64x64 LR input)")
    ax.set_ylabel("test PSNR-Y (dB)")
    ax.set_title(f"{grid}: quality vs compute")
    if rows:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def macs_differ(rows: list[dict[str, Any]]) -> bool:
    return len({round(r["macs_mean"]) for r in rows if r["macs_mean"] is not None}) > 1


def _beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
    better_or_equal = a["macs_mean"] <= b["macs_mean"] and a["psnr_y_mean"] >= b["psnr_y_mean"]
    return better_or_equal and (a["macs_mean"], a["psnr_y_mean"]) != (b["macs_mean"], b["psnr_y_mean"])
