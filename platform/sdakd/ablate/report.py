"""`sdakd report NAME`: every cell and baseline of a grid, mean ± 95 % CI over seeds, as Markdown, Parquet and a
Pareto plot (quality vs MACs), all also logged on the grid's parent run.

Rows are the grid's current cells; a row takes the FINISHED runs whose config minus the seed matches the cell
(the latest run per seed), so editing a cell in the YAML never mixes in results of its old definition.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import t as student_t

from sdakd.ablate.grid import EXPERIMENT, ROLE, Cell, load_grid
from sdakd.errors import SdakdError
from sdakd.evaluate.registry import IMAGE_METRICS, METRICS
from sdakd.tracking.store import CELL_KEY, SEED, Store, resolve_uri

REPORTS_DIR = Path("reports")


@dataclass(frozen=True)
class Column:
    name: str  # Parquet: <name>_mean and <name>_ci95
    heading: str
    metric: str  # the run metric (a flattened metrics.json path)
    unit: float = 1.0  # Markdown shows value / unit
    digits: int = 2


COLUMNS = (  # a column per metric of the registry; the table shows those some run measured
    *(Column(name, METRICS.get(name).heading, f"student.{name}", digits=METRICS.get(name).digits)
      for name in IMAGE_METRICS),
    Column("params", METRICS.get("params").heading, "cost.student.params", unit=1e6, digits=3),
    Column("macs", METRICS.get("macs").heading, "cost.student.macs", unit=1e9, digits=3),
    Column("latency_ms", "latency (ms)", "cost.student.latency_ms"),
    Column("device_seconds", "device-s", "device_seconds", digits=0),
)
REFERENCES = {"teacher": "references.teacher_psnr_y", "bicubic": "references.bicubic_psnr_y"}


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and the 95 % confidence half-width from the t-distribution (None with fewer than two values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def latest_per_seed(records: list[dict[str, Any]], cell: Cell) -> list[dict[str, Any]]:
    """The cell's runs, by config and not by name (as `ablate` skips them), the latest one per seed."""
    mine = [r for r in records if r["tags"].get(CELL_KEY) == cell.key]
    by_seed: dict[str, dict[str, Any]] = {}
    for record in sorted(mine, key=lambda r: r["end_time"] or 0):
        by_seed[record["tags"].get(SEED)] = record
    return [by_seed[s] for s in sorted(by_seed, key=int)]


def summarise(grid: str, cells: Sequence[Cell], records: list[dict[str, Any]]) -> pa.Table:
    rows = []
    first: dict[str, Cell] = {}
    for cell in cells:  # one row per cell name, in the grid's order
        first.setdefault(cell.name, cell)
    for cell in first.values():
        runs = latest_per_seed(records, cell)
        row: dict[str, Any] = {
            "grid": grid,
            "cell": cell.name,
            "kind": cell.kind,
            "method": cell.cfg.method,
            "n": len(runs),
            "seeds": [int(r["tags"][SEED]) for r in runs],
            "run_ids": [r["run_id"] for r in runs],
        }
        for col in COLUMNS:
            values = [r["metrics"][col.metric] for r in runs if col.metric in r["metrics"]]
            row[f"{col.name}_mean"], row[f"{col.name}_ci95"] = mean_ci(values)
        for name, metric in REFERENCES.items():
            row[f"{name}_psnr_y"] = mean_ci([r["metrics"][metric] for r in runs if metric in r["metrics"]])[0]
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_schema())


def _schema() -> pa.Schema:
    fields = [("grid", pa.string()), ("cell", pa.string()), ("kind", pa.string()), ("method", pa.string()),
              ("n", pa.int64()), ("seeds", pa.list_(pa.int64())), ("run_ids", pa.list_(pa.string()))]
    fields += [(f"{c.name}_{stat}", pa.float64()) for c in COLUMNS for stat in ("mean", "ci95")]
    fields += [(f"{name}_psnr_y", pa.float64()) for name in REFERENCES]
    return pa.schema(fields)


def markdown(table: pa.Table) -> str:
    rows = table.to_pylist()
    shown = [c for c in COLUMNS if any(r[f"{c.name}_mean"] is not None for r in rows)]  # a metric only where measured
    lines = [
        "| cell | method | seeds | " + " | ".join(c.heading for c in shown) + " |",
        "|---|---|---|" + "---:|" * len(shown),
    ]
    for r in rows:
        name = r["cell"] + (" (baseline)" if r["kind"] == "baseline" else "")
        values = [_fmt(r[f"{c.name}_mean"], r[f"{c.name}_ci95"], c) for c in shown]
        lines.append(f"| {name} | {r['method']} | n={r['n']} | " + " | ".join(values) + " |")
    lines.append("")
    lines.append("mean ± 95 % CI half-width over seeds (t-distribution); n=1: one run, no interval; "
                 "MACs and latency on a 1x3x64x64 LR input.")
    return "\n".join(lines)


def _fmt(mean: float | None, ci: float | None, col: Column) -> str:
    if mean is None:
        return "–"
    text = f"{mean / col.unit:.{col.digits}f}"
    return text + (f" ± {ci / col.unit:.{col.digits}f}" if ci else "")


def pareto_plot(grid: str, table: pa.Table, path: Path) -> Path:
    """PSNR-Y against MACs (log x); the cells no other cell beats on both are joined by the front line."""
    from sdakd.tracking.plots import plt, save_figure

    rows = [r for r in table.to_pylist() if r["psnr_y_mean"] is not None and r["macs_mean"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("cell", "o"), ("baseline", "s")):
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            ax.errorbar([r["macs_mean"] for r in mine], [r["psnr_y_mean"] for r in mine],
                        yerr=[r["psnr_y_ci95"] or 0 for r in mine], fmt=marker, capsize=3, label=kind + "s")
    for r in rows:
        ax.annotate(r["cell"], (r["macs_mean"], r["psnr_y_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    front = [r for r in rows if not any(_beats(o, r) for o in rows)]
    front.sort(key=lambda r: r["macs_mean"])
    if len(front) > 1:
        ax.step([r["macs_mean"] for r in front], [r["psnr_y_mean"] for r in front], where="post", color="gray",
                linewidth=1, label="Pareto front")
    for name, style in (("teacher", ":"), ("bicubic", "--")):
        values = [r[f"{name}_psnr_y"] for r in rows if r[f"{name}_psnr_y"] is not None]
        if values:
            ax.axhline(statistics.fmean(values), color="black", linestyle=style, linewidth=0.8, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("student MACs (1x3x64x64 LR input)")
    ax.set_ylabel("PSNR-Y (dB)")
    ax.set_title(f"{grid}: quality vs compute")
    if rows:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
    better_or_equal = a["macs_mean"] <= b["macs_mean"] and a["psnr_y_mean"] >= b["psnr_y_mean"]
    return better_or_equal and (a["macs_mean"], a["psnr_y_mean"]) != (b["macs_mean"], b["psnr_y_mean"])


def report(name: str, uri: str | None = None, store: Store | None = None) -> pa.Table:
    """Print the grid's table; write reports/NAME.{md,parquet,png} and log them on the grid's parent run."""
    grid, cells = load_grid(name)
    store = store or Store(resolve_uri(uri, cells[0].cfg.run.tracking_uri))
    parent = store.find_parent(EXPERIMENT, ROLE, grid.name)
    if parent is None:
        raise SdakdError(f"grid {grid.name!r} has no runs in {store.uri}; run `sdakd ablate {grid.name}` first")
    table = summarise(grid.name, cells, store.finished(parent))
    text = markdown(table)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    md, parquet, png = (REPORTS_DIR / f"{grid.name}.{ext}" for ext in ("md", "parquet", "png"))
    md.write_text(f"# Ablation grid {grid.name}\n\n{grid.description}\n\n{text}\n")
    pq.write_table(table, parquet)
    files = [md, parquet, pareto_plot(grid.name, table, png)]
    store.log_files(parent, files, "report")
    print(f"\n## {grid.name}\n\n{text}\n\nwrote {', '.join(map(str, files))}")
    return table
