"""A grid's `tune:`: before its seeds run, every cell and baseline gets its own Optuna study of the same number of
trials over the knobs its method declares as its own (`Method.tunable`), decided on the validation images; the
winner's values then run with the grid's seeds and are reported on the test images.

A study is a search (sdakd.search) of its own, in a folder keyed by what it searches from: the cell's config minus
its seed, the tuning seed and the budget. A rerun finds the finished study there (its trials.json) and runs nothing
new; editing a cell or the budget starts a new study. This module is Ray-free: it builds the studies' spaces and
reads their results; `sdakd.ray_adapter.tune_cells` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from sdakd.config.identity import identity_dict, stable_hash
from sdakd.config.load import with_overrides
from sdakd.config.project import Base
from sdakd.config.schema import ExperimentConfig, Frozen
from sdakd.errors import SdakdError
from sdakd.methods import METHODS
from sdakd.search.space import Asha, Objective, Resources, Sampler, Space, Suggest, check_metrics, check_parameters

STUDIES_DIR = "studies"  # under a grid's run folder: runs/ablate/<grid>/studies/<cell>-<key>
from sdakd.search.summary import load_summary

TRIALS_FILE = "trials.json"  # what a finished search leaves (sdakd.search.summary)


class TuneBudget(Frozen):
    """The same budget for every cell: `trials` Optuna trials (seeded TPE) with ASHA over the three stages."""

    trials: int = Field(ge=1, description="trials per cell and baseline")
    objective: Objective = Objective(metric="psnr_y_vs_teacher", mode="max")
    sampler: Sampler = Sampler()
    scheduler: Asha | None = Asha()
    seed: int | None = Field(None, description="the seed the trials train with; None = the grid file's first seed")
    concurrency: int = Field(2, ge=1, description="trials at once (one CPU each)")


@dataclass(frozen=True)
class Study:
    """One cell's tuning search: its space, the config its trials start from, and its folder."""

    cell: str
    space: Space
    base: ExperimentConfig
    folder: Path

    @property
    def finished(self) -> bool:
        return (self.folder / TRIALS_FILE).is_file()

    def winner(self) -> dict[str, Any]:
        """The best trial's values (dotted path -> value); an error when no trial finished all its stages."""
        best = load_summary(self.space, self.folder).best
        if not best:
            raise SdakdError(f"tuning study of {self.cell!r} in {self.folder}: no trial finished all its stages; "
                             "see its trials.json for their errors")
        return Suggest.overrides(best[0]["config"])


def studies(grid: Any, cells: Sequence[Any]) -> list[Study]:
    """One study per cell name of `grid` (sdakd.ablate.grid.Grid with a `tune` budget; `cells`: its Cells), from
    that cell at the tuning seed (not --seeds: a rerun with other seeds reuses the studies); bad knobs or an
    objective its config cannot compute fail here, before anything runs."""
    budget: TuneBudget = grid.tune
    seed = grid.seeds[0] if budget.seed is None else budget.seed
    first: dict[str, Any] = {}
    for cell in cells:
        first.setdefault(cell.name, cell)
    found = []
    for cell in first.values():
        method = METHODS.get(cell.cfg.method)
        where = Path(f"{grid.name} (tune: {cell.name})")
        if not method.tunable:
            raise SdakdError(f"ablation grid {where}: method {cell.cfg.method!r} declares no tunable knobs")
        base = with_overrides(cell.cfg, {"seed": seed, "run.out_dir": None})
        key = stable_hash({"cell": identity_dict(base), "budget": budget.model_dump(mode="json")})[:12]
        space = Space(
            name=f"tune-{cell.name}-{key}",
            description=f"tuning {cell.name} ({cell.cfg.method}) over its own knobs",
            base=Base(),
            parameters=method.tunable,
            objectives=[budget.objective],
            sampler=budget.sampler,
            scheduler=budget.scheduler,
            samples=budget.trials,
            concurrency=budget.concurrency,
            resources=Resources(),
        )
        check_parameters(space, base, where)
        space = check_metrics(space, base, where)
        folder = Path("runs", "ablate", grid.name, STUDIES_DIR, f"{cell.name}-{key}").resolve()
        found.append(Study(cell.name, space, base, folder))
    return found


def apply_winners(cells: Sequence[Any], winners: dict[str, dict[str, Any]]) -> list[Any]:
    """Every seed of every cell with its study's winning values (cells without a winner stay as they are)."""
    return [replace(c, cfg=with_overrides(c.cfg, winners[c.name])) if c.name in winners else c for c in cells]


def finished_winners(found: Sequence[Study]) -> dict[str, dict[str, Any]]:
    """The winners of the studies that already finished (what a report can show without running anything)."""
    return {study.cell: study.winner() for study in found if study.finished}


def knobs(cfg: ExperimentConfig) -> dict[str, Any]:
    """The values of the method's own knobs in `cfg` (the tuned config a report shows), read from its identity,
    where the running method's options already carry their defaults."""
    values = identity_dict(cfg)
    out = {}
    for dotted in METHODS.get(cfg.method).tunable:
        node: Any = values
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out
