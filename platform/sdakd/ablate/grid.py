"""Named ablation grids: `ablations/<name>.yaml` -> every (cell, seed) as a validated config, before any compute.

A grid is a base config (a preset and/or a config file, plus dotted-path overrides), its seeds, named cells (each a
mapping of dotted-path overrides on the base) and the baseline methods to compare against (the base config with
`method` set to each). Cells are identified by their config hash, so a rerun finds what already finished; a grid
by its file (config/origin.py), so a grid passed by path runs, dedupes and reports as itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field

from sdakd.ablate.tune import TuneBudget
from sdakd.config.identity import config_hash, identity_dict, stable_hash
from sdakd.config.load import absolute_paths, with_overrides
from sdakd.config.origin import named_by_origin
from sdakd.config.project import Base, base_config, load_project_yaml
from sdakd.config.schema import ExperimentConfig, Frozen
from sdakd.errors import SdakdError
from sdakd.methods import METHODS

GRIDS_DIR = "ablations"
# In MLflow: every grid is a parent run tagged (role "grid", group NAME) in this one experiment.
EXPERIMENT = "sdakd-ablations"
ROLE = "grid"


class Grid(Frozen):
    name: str
    description: str = ""
    base: Base
    seeds: list[int] = Field([0], min_length=1)
    cells: dict[str, dict[str, Any]] = Field(min_length=1, description="cell name -> {dotted.path: value}")
    baselines: list[str] = Field(default_factory=list, description="methods run on the base config")
    reference: str | None = Field(None, description="the cell or baseline the report's paired differences are to; "
                                  "None = the first cell")
    tune: TuneBudget | None = Field(None, description="tune every cell and baseline before its seeds run")


@dataclass(frozen=True)
class Cell:
    """One (cell or baseline, seed) of a grid, fully resolved."""

    name: str
    kind: Literal["cell", "baseline"]
    cfg: ExperimentConfig

    @property
    def hash(self) -> str:
        return config_hash(self.cfg)

    @property
    def key(self) -> str:
        """The cell across seeds: its identity minus the seed (rows of the report)."""
        return stable_hash({k: v for k, v in identity_dict(self.cfg).items() if k != "seed"})

    @property
    def run_name(self) -> str:
        return f"{self.name}-seed{self.cfg.seed}"


def load_grid(name: str, seeds: Sequence[int] | None = None) -> tuple[Grid, list[Cell]]:
    """The grid (named by its origin) and its cells x seeds (`seeds`, from --seeds, replaces the file's); any bad
    field fails here, naming the file."""
    grid, path = load_project_yaml(Grid, GRIDS_DIR, name, "ablation grid")
    grid = named_by_origin(grid, path, GRIDS_DIR, "ablation grid")
    if seeds:
        check_distinct(seeds, f"--seeds {','.join(map(str, seeds))}")
    check_distinct(grid.seeds, f"ablation grid {path}: seeds")
    return grid, expand(grid, path, seeds or grid.seeds)


def check_distinct(seeds: Sequence[int], where: str) -> None:
    """A seed listed twice is refused rather than dropped: it is more likely a typo (0,0 for 0,1) than a wish,
    and a run of the same config and seed twice would only repeat the first."""
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise SdakdError(f"{where}: seed {', '.join(map(str, twice))} is listed more than once; list each seed once")


def expand(grid: Grid, path: Path, seeds: Sequence[int]) -> list[Cell]:
    base = base_config(grid.base, path, "ablation grid")
    for method in grid.baselines:
        if method not in METHODS:
            raise SdakdError(
                f"ablation grid {path}: baselines: unknown method {method!r}; known: {', '.join(METHODS.names())}"
            )
        if method in grid.cells:
            raise SdakdError(f"ablation grid {path}: baseline {method!r} has the name of a cell; rename the cell")
    if grid.reference is not None and grid.reference not in [*grid.cells, *grid.baselines]:
        raise SdakdError(f"ablation grid {path}: reference {grid.reference!r} is not a cell or baseline; allowed: "
                         f"{', '.join([*grid.cells, *grid.baselines])}")
    entries = [(name, "cell", overrides) for name, overrides in grid.cells.items()]
    entries += [(method, "baseline", {"method": method}) for method in grid.baselines]
    cells = []
    for seed in seeds:
        for name, kind, overrides in entries:
            where = f"ablation grid {path}: {kind}s.{name}"
            # absolute paths (weights, data) before the hash: Tune runs each cell in its own folder
            cells.append(Cell(name, kind, absolute_paths(_apply(base, overrides | {"seed": seed}, where))))
    seen: dict[str, str] = {}
    for cell in cells:
        twin = seen.setdefault(cell.hash, cell.run_name)
        if twin != cell.run_name:
            raise SdakdError(f"ablation grid {path}: {cell.run_name} and {twin} are the same config; drop one")
    return cells


def _apply(cfg: ExperimentConfig, overrides: dict[str, Any], where: str) -> ExperimentConfig:
    try:
        return with_overrides(cfg, overrides) if overrides else cfg
    except SdakdError as err:
        raise SdakdError(f"{where}: {err}") from None
