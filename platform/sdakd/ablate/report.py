"""`sdakd report NAME`: every cell and baseline of a grid on the held-out test images: mean ± 95 % CI over seeds,
the paired difference of each to the grid's reference cell (t-test over seeds, bootstrap over seeds x images),
and the values of each method's own knobs (tuned or not) as Markdown, Parquet and plots, all also logged on the
grid's parent run.

Rows are the grid's current cells (after their finished tuning studies); a row takes the FINISHED runs whose config
minus the seed matches the cell (the latest run per seed), so editing a cell in the YAML never mixes in results of
its old definition. Only the test split is read: validation numbers chose the configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from sdakd.ablate.grid import EXPERIMENT, ROLE, Cell, load_grid
from sdakd.ablate.report_plots import macs_differ, metric_bars, pareto_plot
from sdakd.ablate.stats import mean_ci, paired
from sdakd.ablate.tune import apply_winners, finished_winners, knobs, studies
from sdakd.errors import SdakdError
from sdakd.evaluate.registry import IMAGE_METRICS, METRICS
from sdakd.tracking.store import CELL_KEY, SEED, Store, resolve_uri

REPORTS_DIR = Path("reports")
TEST = "test"  # the metrics.json section (and MLflow prefix) reports read


@dataclass(frozen=True)
class Column:
    name: str  # Parquet: <name>_mean and <name>_ci95
    heading: str
    metric: str  # the run metric (a flattened metrics.json path)
    unit: float = 1.0  # Markdown shows value / unit
    digits: int = 2


COLUMNS = (  # a column per metric of the registry; the table shows those some run measured
    *(Column(name, METRICS.get(name).heading, f"{TEST}.student.{name}", digits=METRICS.get(name).digits)
      for name in IMAGE_METRICS),
    Column("params", METRICS.get("params").heading, "cost.student.params", unit=1e6, digits=3),
    Column("macs", METRICS.get("macs").heading, "cost.student.macs", unit=1e9, digits=3),
    Column("latency_ms", "latency (ms)", "cost.student.latency_ms"),
    Column("device_seconds", "device-s", "device_seconds", digits=0),
)
COMPARED = tuple(c for c in COLUMNS if c.name in IMAGE_METRICS)  # paired differences: the quality metrics
REFERENCES = {"teacher": f"{TEST}.references.teacher_psnr_y", "bicubic": f"{TEST}.references.bicubic_psnr_y"}
# Parquet column suffix -> field of sdakd.ablate.stats.Paired
PAIRED_FIELDS = {"diff": "diff", "diff_ci95": "ci95", "p_t": "p_t", "boot_low": "boot_low", "boot_high": "boot_high",
                 "p_boot": "p_boot"}


def latest_per_seed(records: list[dict[str, Any]], cell: Cell) -> list[dict[str, Any]]:
    """The cell's runs, by config and not by name (as `ablate` skips them), the latest one per seed."""
    mine = [r for r in records if r["tags"].get(CELL_KEY) == cell.key]
    by_seed: dict[str, dict[str, Any]] = {}
    for record in sorted(mine, key=lambda r: r["end_time"] or 0):
        by_seed[record["tags"].get(SEED)] = record
    return [by_seed[s] for s in sorted(by_seed, key=int)]


def _by_seed(runs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {int(r["tags"][SEED]): r["metrics"][metric] for r in runs if metric in r["metrics"]}


def _per_image(runs: list[dict[str, Any]], name: str) -> dict[int, dict[str, float]]:
    prefix = f"{TEST}.per_image.{name}."
    return {int(r["tags"][SEED]): {k[len(prefix):]: v for k, v in r["metrics"].items() if k.startswith(prefix)}
            for r in runs}


def summarise(grid: str, cells: Sequence[Cell], records: list[dict[str, Any]], reference: str) -> pa.Table:
    first: dict[str, Cell] = {}
    for cell in cells:  # one row per cell name, in the grid's order
        first.setdefault(cell.name, cell)
    runs = {name: latest_per_seed(records, cell) for name, cell in first.items()}
    rows = []
    for name, cell in first.items():
        mine = runs[name]
        row: dict[str, Any] = {
            "grid": grid, "cell": name, "kind": cell.kind, "method": cell.cfg.method, "n": len(mine),
            "seeds": [int(r["tags"][SEED]) for r in mine], "run_ids": [r["run_id"] for r in mine],
            "knobs": json.dumps(knobs(cell.cfg)),
        }
        for col in COLUMNS:
            row[f"{col.name}_mean"], row[f"{col.name}_ci95"] = mean_ci(list(_by_seed(mine, col.metric).values()))
        for who, metric in REFERENCES.items():
            row[f"{who}_psnr_y"] = mean_ci(list(_by_seed(mine, metric).values()))[0]
        for col in COMPARED:
            result = None
            if name != reference and runs.get(reference):
                ref = runs[reference]
                result = paired(_by_seed(ref, col.metric), _by_seed(mine, col.metric),
                                _per_image(ref, col.name), _per_image(mine, col.name))
            for suffix, field in PAIRED_FIELDS.items():
                row[f"{col.name}_{suffix}"] = getattr(result, field) if result else None
            row[f"{col.name}_significant"] = result.significant if result else None
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_schema())


def _schema() -> pa.Schema:
    fields = [("grid", pa.string()), ("cell", pa.string()), ("kind", pa.string()), ("method", pa.string()),
              ("n", pa.int64()), ("seeds", pa.list_(pa.int64())), ("run_ids", pa.list_(pa.string())),
              ("knobs", pa.string())]
    fields += [(f"{c.name}_{stat}", pa.float64()) for c in COLUMNS for stat in ("mean", "ci95")]
    fields += [(f"{name}_psnr_y", pa.float64()) for name in REFERENCES]
    fields += [(f"{c.name}_{f}", pa.float64()) for c in COMPARED for f in PAIRED_FIELDS]
    fields += [(f"{c.name}_significant", pa.bool_()) for c in COMPARED]
    return pa.schema(fields)


def markdown(table: pa.Table, reference: str, tuning: str) -> str:
    rows = table.to_pylist()
    shown = [c for c in COLUMNS if any(r[f"{c.name}_mean"] is not None for r in rows)]  # a metric only where measured
    lines = ["| cell | method | seeds | " + " | ".join(c.heading for c in shown) + " |",
             "|---|---|---|" + "---:|" * len(shown)]
    for r in rows:
        values = [_fmt(r[f"{c.name}_mean"], r[f"{c.name}_ci95"], c) for c in shown]
        lines.append(f"| {_label(r)} | {r['method']} | n={r['n']} | " + " | ".join(values) + " |")
    lines += ["", "Held-out test images; mean ± 95 % CI half-width over seeds (t-distribution); n=1: one run, no "
              "interval; MACs and latency on a 1x3x64x64 LR input.", ""]
    compared = [c for c in COMPARED if c in shown]
    lines += [f"**Paired differences to {reference}** (cell minus {reference}, same seed and test images): mean "
              "± 95 % CI over seeds, paired t-test p; bootstrap over seeds x images: 95 % interval, p. "
              "\\* = both give p < 0.05 (never with one seed: its training noise is unknown).", "",
              "| cell | " + " | ".join(c.heading for c in compared) + " |", "|---|" + "---|" * len(compared)]
    for r in rows:
        if r["cell"] != reference:
            lines.append(f"| {_label(r)} | " + " | ".join(_paired(r, c) for c in compared) + " |")
    lines += ["", f"**Each method's own knobs** ({tuning}):", "", "| cell | method | knobs |", "|---|---|---|"]
    for r in rows:
        values = ", ".join(f"`{k}`={_short(v)}" for k, v in json.loads(r["knobs"]).items())
        lines.append(f"| {_label(r)} | {r['method']} | {values} |")
    return "\n".join(lines)


def _label(row: dict[str, Any]) -> str:
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


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(name: str, uri: str | None = None, store: Store | None = None) -> pa.Table:
    """Print the grid's table; write reports/NAME.md, .parquet and plots and log them on the grid's parent run."""
    grid, cells = load_grid(name)
    store = store or Store(resolve_uri(uri, cells[0].cfg.run.tracking_uri))
    parent = store.find_parent(EXPERIMENT, ROLE, grid.name)
    if parent is None:
        raise SdakdError(f"grid {grid.name!r} has no runs in {store.uri}; run `sdakd ablate {name}` first")
    tuning = "defaults of the grid's configs"
    if grid.tune:
        winners = finished_winners(studies(grid, cells))
        cells = apply_winners(cells, winners)
        tuning = (f"tuned on the validation images: {grid.tune.trials} trials per cell, objective "
                  f"{grid.tune.objective.metric} ({grid.tune.objective.mode}); {len(winners)} of "
                  f"{len({c.name for c in cells})} studies finished")
    reference = grid.reference or cells[0].name
    table = summarise(grid.name, cells, store.finished(parent), reference)
    text = markdown(table, reference, tuning)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    md, parquet = REPORTS_DIR / f"{grid.name}.md", REPORTS_DIR / f"{grid.name}.parquet"
    md.write_text(f"# Ablation grid {grid.name}\n\n{grid.description}\n\n{text}\n")
    pq.write_table(table, parquet)
    rows = table.to_pylist()
    metrics = [c.name for c in COMPARED if any(r[f"{c.name}_mean"] is not None for r in rows)]
    files = [md, parquet, metric_bars(grid.name, rows, metrics, reference, REPORTS_DIR / f"{grid.name}-bars.png")]
    if macs_differ(rows):
        files.append(pareto_plot(grid.name, rows, REPORTS_DIR / f"{grid.name}.png"))
    store.log_files(parent, files, "report")
    print(f"\n## {grid.name}\n\n{text}\n\nwrote {', '.join(map(str, files))}")
    return table
