"""`sdakd report NAME`: every cell and baseline of a grid on the held-out test images, and on each evaluation
suite of its configs (a section each): mean ± 95 % CI over seeds, the paired difference of each to the grid's
reference cell (t-test over seeds, bootstrap over seeds x images) with what the seeds can detect, and the values
of each method's own knobs (tuned or not) as Markdown, Parquet and plots, all also logged on the grid's parent run.

Rows are the grid's current cells (after their finished tuning studies); a row takes the FINISHED runs whose config
minus the seed matches the cell (the latest run per seed), so editing a cell in the YAML never mixes in results of
its old definition. Only the test split and the suites are read: validation numbers chose the configs.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sdakd.ablate.grid import EXPERIMENT, ROLE, load_grid
from sdakd.ablate.report_plots import macs_differ, metric_bars, pareto_plot
from sdakd.ablate.report_table import QUALITY, TEST, knobs_table, markdown, measured, suite_section, summarise
from sdakd.ablate.tune import apply_winners, finished_winners, studies
from sdakd.errors import SdakdError
from sdakd.tracking.store import Store, resolve_uri

REPORTS_DIR = Path("reports")


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
    records = store.finished(parent)
    sections = [TEST] + [suite_section(name, suite) for name, suite in cells[0].cfg.eval.suites.items()]
    tables = {section.name: summarise(grid.name, cells, records, reference, section) for section in sections}
    test = tables[TEST.name]
    parts = [markdown(test, reference), knobs_table(test, tuning)]
    parts += [f"### Suite `{s.name}`\n\n{markdown(tables[s.name], reference, s)}" for s in sections[1:]]
    text = "\n\n".join(parts)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    md = REPORTS_DIR / f"{grid.name}.md"
    md.write_text(f"# Ablation grid {grid.name}\n\n{grid.description}\n\n{text}\n")
    files = [md]
    for section in sections:  # the test split's table as before; each suite's beside it
        stem = grid.name if section is TEST else f"{grid.name}-{section.name}"
        files.append(REPORTS_DIR / f"{stem}.parquet")
        pq.write_table(tables[section.name], files[-1])
    rows = test.to_pylist()
    metrics = [c.name for c in measured(test, QUALITY)]
    files.append(metric_bars(grid.name, rows, metrics, reference, REPORTS_DIR / f"{grid.name}-bars.png"))
    if macs_differ(rows):
        files.append(pareto_plot(grid.name, rows, REPORTS_DIR / f"{grid.name}.png"))
    store.log_files(parent, files, "report")
    print(f"\n## {grid.name}\n\n{text}\n\nwrote {', '.join(map(str, files))}")
    return test
