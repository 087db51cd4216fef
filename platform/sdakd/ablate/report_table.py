"""The tables of a grid report, one section per image set: the held-out test split, and each evaluation suite.

A section's table holds every cell's mean ± 95 % CI over seeds, its paired difference to the reference cell
(t-test over seeds, bootstrap over seeds x images) and what that comparison can detect (the power of the t-test
over seeds), as a Parquet table and as Markdown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from sdakd.ablate.grid import Cell
from sdakd.ablate.power import ALPHA, MOST_SEEDS, POWER
from sdakd.ablate.stats import mean_ci, paired
from sdakd.ablate.tune import knobs
from sdakd.config.eval_schema import SuiteConfig
from sdakd.evaluate.registry import IMAGE_METRICS, METRICS
from sdakd.tracking.store import CELL_KEY, SEED


@dataclass(frozen=True)
class Column:
    name: str  # Parquet: <name>_mean and <name>_ci95
    heading: str
    metric: str | None = None  # the run metric (a flattened metrics.json path); None: the section's image metric
    unit: float = 1.0  # Markdown shows value / unit
    digits: int = 2


QUALITY = tuple(Column(name, METRICS.get(name).heading, digits=METRICS.get(name).digits) for name in IMAGE_METRICS)
COST = (
    Column("params", METRICS.get("params").heading, "cost.student.params", unit=1e6, digits=3),
    Column("macs", METRICS.get("macs").heading, "cost.student.macs", unit=1e9, digits=3),
    Column("latency_ms", "latency (ms)", "cost.student.latency_ms"),
    Column("device_seconds", "device-s", "device_seconds", digits=0),
)
# Parquet column suffix -> field of sdakd.ablate.stats.Paired
PAIRED_FIELDS = {"diff": "diff", "diff_ci95": "ci95", "p_t": "p_t", "boot_low": "boot_low", "boot_high": "boot_high",
                 "p_boot": "p_boot", "detectable": "detectable", "seeds_needed": "seeds_needed"}


@dataclass(frozen=True)
class Section:
    """Where a section reads its runs' numbers in MLflow: the student's `<student><metric>`, per image
    `<per_image><metric>.<image>`, the references' `<references>teacher_psnr_y`."""

    name: str
    title: str  # what the section's images are, under its table
    student: str
    per_image: str
    references: str
    columns: tuple[Column, ...]  # the quality columns (paired to the reference), then the run's cost if shown

    def metric(self, col: Column) -> str:
        return col.metric or f"{self.student}{col.name}"


TEST = Section("test", "Held-out test images", "test.student.", "test.per_image.", "test.references.",
               QUALITY + COST)


def suite_section(name: str, suite: SuiteConfig) -> Section:
    """The section of the evaluation suite `name` (MLflow `suite.<name>.*`, sdakd.tracking.run.run_metrics)."""
    source = (f"files paired by name ({suite.lr}, {suite.hr})" if suite.lr is not None
              else f"the images of {suite.images}" if suite.images is not None
              else f"split {suite.split} of {suite.dataset or 'the run dataset'}")
    lr = {"none": "the paired LR", "bicubic": "bicubic LR",
          "second_order": f"the training's second-order degradation, seeded per image (suite seed {suite.seed})"}
    bound = f", centre-cropped to {suite.max_side} px" if suite.max_side else ""
    prefix = f"suite.{name}."
    return Section(name, f"Images: {source}{bound}; {lr[suite.lr_degradation]}", prefix, f"{prefix}per_image.", prefix,
                   QUALITY)


def latest_per_seed(records: list[dict[str, Any]], cell: Cell) -> list[dict[str, Any]]:
    """The cell's runs, by config and not by name (as `ablate` skips them), the latest one per seed."""
    mine = [r for r in records if r["tags"].get(CELL_KEY) == cell.key]
    by_seed: dict[str, dict[str, Any]] = {}
    for record in sorted(mine, key=lambda r: r["end_time"] or 0):
        by_seed[record["tags"].get(SEED)] = record
    return [by_seed[s] for s in sorted(by_seed, key=int)]


def _by_seed(runs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {int(r["tags"][SEED]): r["metrics"][metric] for r in runs if metric in r["metrics"]}


def _per_image(runs: list[dict[str, Any]], prefix: str) -> dict[int, dict[str, float]]:
    return {int(r["tags"][SEED]): {k[len(prefix):]: v for k, v in r["metrics"].items() if k.startswith(prefix)}
            for r in runs}


def summarise(grid: str, cells: Sequence[Cell], records: list[dict[str, Any]], reference: str,
              section: Section = TEST) -> pa.Table:
    first: dict[str, Cell] = {}
    for cell in cells:  # one row per cell name, in the grid's order
        first.setdefault(cell.name, cell)
    runs = {name: latest_per_seed(records, cell) for name, cell in first.items()}
    rows = []
    for name, cell in first.items():
        mine = runs[name]
        if section is not TEST:  # a run that finished before the suite was added has no scores on it
            mine = [r for r in mine if f"{section.student}psnr_y" in r["metrics"]]
        row: dict[str, Any] = {
            "grid": grid, "cell": name, "kind": cell.kind, "method": cell.cfg.method, "n": len(mine),
            "seeds": [int(r["tags"][SEED]) for r in mine], "run_ids": [r["run_id"] for r in mine],
            "knobs": json.dumps(knobs(cell.cfg)),
        }
        for col in section.columns:
            values = list(_by_seed(mine, section.metric(col)).values())
            row[f"{col.name}_mean"], row[f"{col.name}_ci95"] = mean_ci(values)
        for who in ("teacher", "bicubic"):
            row[f"{who}_psnr_y"] = mean_ci(list(_by_seed(mine, f"{section.references}{who}_psnr_y").values()))[0]
        for col in QUALITY:
            result = None
            if name != reference and runs.get(reference):
                ref, metric, images = runs[reference], section.metric(col), f"{section.per_image}{col.name}."
                result = paired(_by_seed(ref, metric), _by_seed(mine, metric),
                                _per_image(ref, images), _per_image(mine, images))
            for suffix, field in PAIRED_FIELDS.items():
                row[f"{col.name}_{suffix}"] = getattr(result, field) if result else None
            row[f"{col.name}_significant"] = result.significant if result else None
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_schema(section))


def _schema(section: Section) -> pa.Schema:
    fields = [("grid", pa.string()), ("cell", pa.string()), ("kind", pa.string()), ("method", pa.string()),
              ("n", pa.int64()), ("seeds", pa.list_(pa.int64())), ("run_ids", pa.list_(pa.string())),
              ("knobs", pa.string())]
    fields += [(f"{c.name}_{stat}", pa.float64()) for c in section.columns for stat in ("mean", "ci95")]
    fields += [(f"{who}_psnr_y", pa.float64()) for who in ("teacher", "bicubic")]
    fields += [(f"{c.name}_{f}", pa.float64()) for c in QUALITY for f in PAIRED_FIELDS]
    fields += [(f"{c.name}_significant", pa.bool_()) for c in QUALITY]
    return pa.schema(fields)


def measured(table: pa.Table, columns: Sequence[Column]) -> list[Column]:
    """The columns some row has a value for (a metric is shown only where it was measured)."""
    rows = table.to_pylist()
    return [c for c in columns if any(r[f"{c.name}_mean"] is not None for r in rows)]


def markdown(table: pa.Table, reference: str, section: Section = TEST) -> str:
    """The section's table, its paired differences to `reference` and what they can detect."""
    rows = table.to_pylist()
    shown = measured(table, section.columns)
    lines = ["| cell | method | seeds | " + " | ".join(c.heading for c in shown) + " |",
             "|---|---|---|" + "---:|" * len(shown)]
    for r in rows:
        values = [_fmt(r[f"{c.name}_mean"], r[f"{c.name}_ci95"], c) for c in shown]
        lines.append(f"| {label(r)} | {r['method']} | n={r['n']} | " + " | ".join(values) + " |")
    cost = " MACs and latency on a 1x3x64x64 LR input." if any(c in COST for c in shown) else ""
    lines += ["", f"{section.title}; mean ± 95 % CI half-width over seeds (t-distribution); n=1: one run, no "
              f"interval.{cost}", ""]
    compared = [c for c in QUALITY if c in shown]
    others = [r for r in rows if r["cell"] != reference]
    lines += [f"**Paired differences to {reference}** (cell minus {reference}, same seed and images): mean "
              "± 95 % CI over seeds, paired t-test p; bootstrap over seeds x images: 95 % interval, p. "
              "\\* = both give p < 0.05 (never with one seed: its training noise is unknown).", "",
              "| cell | " + " | ".join(c.heading for c in compared) + " |", "|---|" + "---|" * len(compared)]
    lines += [f"| {label(r)} | " + " | ".join(_paired(r, c) for c in compared) + " |" for r in others]
    power = f"{POWER * 100:.0f} % power"
    lines += ["", f"**What the seeds can detect** (paired t-test over seeds, {ALPHA:g} level, {power}):",
              "", "| cell | " + " | ".join(c.heading for c in compared) + " |", "|---|" + "---|" * len(compared)]
    lines += [f"| {label(r)} | " + " | ".join(_power(r, c) for c in compared) + " |" for r in others]
    lines += ["", "±MDD: the minimum detectable difference, the smallest difference to the reference that a paired "
              f"t-test over this many seeds finds with {power} at the {ALPHA:g} level, at the seed-to-seed SD of the "
              "differences measured here; \"needs N seeds\" (where the difference is not significant): "
              "how many seeds the same test would need for a difference of the observed size at that SD; "
              "– with one seed or differences that do not vary."]
    return "\n".join(lines)


def knobs_table(table: pa.Table, tuning: str) -> str:
    lines = [f"**Each method's own knobs** ({tuning}):", "", "| cell | method | knobs |", "|---|---|---|"]
    for r in table.to_pylist():
        values = ", ".join(f"`{k}`={_short(v)}" for k, v in json.loads(r["knobs"]).items())
        lines.append(f"| {label(r)} | {r['method']} | {values} |")
    return "\n".join(lines)


def label(row: dict[str, Any]) -> str:
    return row["cell"] + (" (baseline)" if row["kind"] == "baseline" else "")


def _fmt(mean: float | None, ci: float | None, col: Column) -> str:
    if mean is None:
        return "–"
    text = f"{mean / col.unit:.{col.digits}f}"
    return text + (f" ± {ci / col.unit:.{col.digits}f}" if ci else "")


def _paired(row: dict[str, Any], col: Column) -> str:
    diff = row[f"{col.name}_diff"]
    if diff is None:
        return "–"
    d = col.digits
    text = f"{diff:+.{d}f}" + (f" ± {row[f'{col.name}_diff_ci95']:.{d}f}" if row[f"{col.name}_diff_ci95"] else "")
    if row[f"{col.name}_p_t"] is not None:
        text += f", p={_p(row[f'{col.name}_p_t'])}"
    if row[f"{col.name}_p_boot"] is not None:
        text += f"; [{row[f'{col.name}_boot_low']:+.{d}f}, {row[f'{col.name}_boot_high']:+.{d}f}], " \
                f"p={_p(row[f'{col.name}_p_boot'])}"
    return text + (" \\*" if row[f"{col.name}_significant"] else "")


def _power(row: dict[str, Any], col: Column) -> str:
    detectable, needed = row[f"{col.name}_detectable"], row[f"{col.name}_seeds_needed"]
    if detectable is None:
        return "–"
    text = f"±{detectable:.{col.digits}f}"
    if needed is not None:
        text += f"; needs > {MOST_SEEDS:,} seeds" if math.isinf(needed) else f"; needs {needed:.0f} seeds"
    return text


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
