"""Running a grid's tuning studies (sdakd.ablate.tune) through the search machinery: Optuna, ASHA and the
stage-prefix cache, one study after the other, each resumable and each skipped once finished."""

from __future__ import annotations

from typing import Any, Sequence

from sdakd.ablate.tune import Study
from sdakd.config.load import with_overrides
from sdakd.ray_adapter.search import search


def run_studies(found: Sequence[Study], tracking_uri: str | None) -> dict[str, dict[str, Any]]:
    """Every study's winning values by cell name, running the studies that have not finished."""
    winners = {}
    for study in found:
        if study.finished:
            print(f"tuning {study.cell}: finished study in {study.folder}")
        else:
            print(f"tuning {study.cell}: {study.space.samples} trials over {', '.join(study.space.parameters)}",
                  flush=True)
            base = with_overrides(study.base, {"run.out_dir": str(study.folder)})
            search(study.space, base, resume=None, tracking_uri=tracking_uri)
        winners[study.cell] = study.winner()
        print(f"tuning {study.cell}: chose {winners[study.cell]}")
    return winners
