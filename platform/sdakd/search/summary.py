"""A finished search, without Ray: every trial's parameters and last report, the best config (or the Pareto
set of a multi-objective space) written as full configs, and the study's orphans closed.

The Tune adapter (`sdakd.ray_adapter.search`) hands over each trial as a plain row: its id, the config Tune
gave it, its last reported metrics and its error, if any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import optuna

from sdakd.config.load import dump_yaml, with_overrides
from sdakd.config.origin import named_by_origin
from sdakd.config.project import find_project_yaml
from sdakd.config.schema import ExperimentConfig
from sdakd.errors import SdakdError
from sdakd.search.space import OBJECTIVE_METRICS, SPACES_DIR, Space, Suggest, load_space

# Kept per trial in trials.json next to the objectives: where it stopped, what it cost, when it ran.
TRIAL_FIELDS = ("stage", "trained_iters", "prefix_stages", "world_size", "time_total_s", "timestamp")


@dataclass
class Summary:
    space: Space
    folder: Path
    trials: list[dict[str, Any]]
    best: list[dict[str, Any]]  # one trial, or the Pareto set


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None


def summarize(space: Space, base: ExperimentConfig, folder: Path, rows: list[TrialRow]) -> Summary:
    trials = [
        {
            "trial_id": row.trial_id,
            "config": row.config,
            "metrics": {k: row.metrics.get(k) for k in (*OBJECTIVE_METRICS, *TRIAL_FIELDS)},
            "final": bool(row.metrics.get("final")),
            "feasible": feasible(space, row.metrics),
            "error": row.error,
        }
        for row in rows
    ]
    finished = [t for t in trials if t["final"] and t["feasible"]]  # the best among those meeting the constraints
    best = pareto_front(space, finished) if len(space.objectives) > 1 else _best(space, finished)
    (folder / "trials.json").write_text(json.dumps(trials, indent=2, default=str))
    write_best(space, base, folder, best)
    return Summary(space, folder, trials, best)


def feasible(space: Space, metrics: dict[str, Any]) -> bool:
    return all(c.metric in metrics and c.violation(metrics[c.metric]) <= 0 for c in space.constraints)


def _score(space: Space, trial: dict[str, Any]) -> tuple[float, ...]:
    """The trial's objectives, signed so that larger is better on every axis."""
    return tuple(trial["metrics"][o.metric] * (1 if o.mode == "max" else -1) for o in space.objectives)


def _best(space: Space, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [max(trials, key=partial(_score, space))] if trials else []


def pareto_front(space: Space, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other trial beats on every objective, sorted by the first objective (best first)."""
    scores = [_score(space, t) for t in trials]

    def dominated(s: tuple[float, ...]) -> bool:
        return any(o != s and all(a >= b for a, b in zip(o, s)) for o in scores)

    return [t for s, t in sorted(zip(scores, trials), key=lambda st: st[0], reverse=True) if not dominated(s)]


def trial_config(base: ExperimentConfig, trial: dict[str, Any]) -> ExperimentConfig:
    return with_overrides(base, Suggest.overrides(trial["config"]))


def write_best(space: Space, base: ExperimentConfig, folder: Path, best: list[dict[str, Any]]) -> None:
    """Full resolved configs, so `sdakd train --config FILE` reproduces a trial without the space file."""
    files = [folder / "best.yaml"] if len(space.objectives) == 1 else [
        folder / "pareto" / f"{rank}.yaml" for rank in range(len(best))
    ]
    for path, trial in zip(files, best):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_yaml(trial_config(base, trial)))
        trial["file"] = str(path)


def fail_orphans(storage: str, study_name: str, known: set[int]) -> None:
    """Optuna trials asked by a killed driver after its last snapshot belong to no Tune trial: close them as
    FAIL so the stored study lists each Tune trial once and nothing stays RUNNING forever."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in known:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def print_summary(summary: Summary) -> None:
    space, trials = summary.space, summary.trials
    stopped = sum(not t["final"] and not t["error"] for t in trials)
    errored = sum(bool(t["error"]) for t in trials)
    print(f"\n{len(trials)} trials: {len(trials) - stopped - errored} finished, {stopped} stopped early, "
          f"{errored} errored; results in {summary.folder}")
    if not summary.best:
        print("no trial trained all its stages" + (" within the constraints" if space.constraints else "")
              + ": no best config")
    for trial in summary.best:
        scores = ", ".join(f"{o.metric}={trial['metrics'][o.metric]:.4g}" for o in space.objectives)
        params = ", ".join(f"{k}={v}" for k, v in Suggest.overrides(trial["config"]).items())
        print(f"{'best' if len(space.objectives) == 1 else 'pareto'}: {scores} | {params} -> {trial['file']}")


def best_table(summary: Summary) -> str:
    """The best trial (or the Pareto set) as Markdown: objectives, then the searched parameters."""
    space = summary.space
    names = [o.metric for o in space.objectives] + [c.metric for c in space.constraints]
    names = list(dict.fromkeys(names))
    params = list(space.parameters)
    lines = [
        "| rank | trial | " + " | ".join(names + params) + " |",
        "|---|---|" + "---:|" * (len(names) + len(params)),
    ]
    for rank, trial in enumerate(summary.best):
        scores = [f"{trial['metrics'][n]:.4g}" if trial["metrics"].get(n) is not None else "–" for n in names]
        values = [str(trial["config"].get(p)) for p in params]
        lines.append(f"| {rank} | {trial['trial_id']} | " + " | ".join(scores + values) + " |")
    kind = "Pareto set" if len(space.objectives) > 1 else "best trial"
    goals = ", ".join(f"{o.mode} {o.metric}" for o in space.objectives)
    limits = "; constraints: " + ", ".join(
        f"{c.metric} in [{c.min if c.min is not None else '-inf'}, {c.max if c.max is not None else 'inf'}]"
        for c in space.constraints
    ) if space.constraints else ""
    finished = sum(t["final"] for t in summary.trials)
    head = f"{kind} of search {space.name} ({goals}{limits}); {len(summary.trials)} trials, {finished} finished"
    return head + "\n\n" + "\n".join(lines) + ("\n\nno trial qualifies" if not summary.best else "") + "\n"


def load_named_space(name: str, overrides: Sequence[str] = ()) -> tuple[Space, ExperimentConfig]:
    """`load_space`, the space named by where its file is (config/origin.py): a space passed by path gets its own
    search folder, Optuna study and MLflow parent, never those of a built-in of its file name."""
    space, base = load_space(name, overrides)
    path = find_project_yaml(SPACES_DIR, name, "search space")
    return named_by_origin(space, path, SPACES_DIR, "search space"), base


def search_folder(space: Space, base: ExperimentConfig) -> Path:
    """Where a search keeps its files: `run.out_dir` of its base config, else runs/search-<name> (its origin
    name)."""
    return Path(base.run.out_dir or Path("runs") / f"search-{space.name}").resolve()


def load_summary(space: Space, folder: Path) -> Summary:
    """A finished search's summary, read back from its trials.json."""
    path = folder / "trials.json"
    if not path.is_file():
        raise SdakdError(f"search {space.name!r} has no results in {folder} (no trials.json): run `sdakd search` "
                         "on its space first")
    trials = json.loads(path.read_text())
    finished = [t for t in trials if t["final"] and t.get("feasible", True)]
    best = pareto_front(space, finished) if len(space.objectives) > 1 else _best(space, finished)
    return Summary(space, folder, trials, best)
