"""Named search spaces: `search_spaces/<name>.yaml` -> a validated `Space`, checked before Ray starts.

A space is a base config (a preset and/or a YAML file, plus dotted-path overrides), the searched parameters
(dotted config paths with a distribution), the objective(s), the sampler seed, the ASHA scheduler (in stage-
evaluation units), the trial count, concurrency and resources. Every dotted path is checked by applying its
bounds (or each choice) to the base config, and every distribution is built as an Optuna distribution once, so
a typo or an empty range fails here with one message naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import optuna
from pydantic import Field, model_validator

from sdakd.config.load import parse_override, with_overrides
from sdakd.config.project import Base, base_config, load_project_yaml
from sdakd.config.schema import ExperimentConfig, Frozen
from sdakd.errors import SdakdError
from sdakd.evaluate.registry import METRICS, unavailable
from sdakd.teacher.cache import scored_against_teacher

SPACES_DIR = "search_spaces"
# What a trial reports at every stage end (see sdakd.search.trial): the validator's metrics and the student's cost.
OBJECTIVE_METRICS = tuple(METRICS.names())


class Range(Frozen):
    @model_validator(mode="after")
    def _not_empty(self) -> "Range":
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        return self

    def samples(self) -> list[Any]:
        return [self.low, self.high]


class Uniform(Range):
    type: Literal["uniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, step=self.step)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, step=self.step)


class LogUniform(Range):
    type: Literal["loguniform"]
    low: float
    high: float

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=True)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, log=True)


class IntRange(Range):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _on_grid(self) -> "IntRange":
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high, step=self.step, log=self.log)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


class Choice(Frozen):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def samples(self) -> list[Any]:
        return list(self.values)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(self.values)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.values)


Parameter = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="type")]


class Objective(Frozen):
    metric: str
    mode: Literal["max", "min"]
    optional: bool = Field(False, description="dropped (with a note) when the base config cannot compute it")

    @model_validator(mode="after")
    def _reported(self) -> "Objective":
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; trials report: {', '.join(OBJECTIVE_METRICS)}")
        return self


class Constraint(Frozen):
    """A trial is feasible when `metric` >= `min` and <= `max` (Optuna's constraints_func; TPE prefers feasible
    trials, and the best config is chosen among them)."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded_and_reported(self) -> "Constraint":
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; trials report: {', '.join(OBJECTIVE_METRICS)}")
        if self.min is None and self.max is None:
            raise ValueError(f"constraint on {self.metric} needs min or max")
        return self

    def violation(self, value: float) -> float:
        """<= 0 when satisfied, else by how much it is not."""
        below = self.min - value if self.min is not None else -1.0
        above = value - self.max if self.max is not None else -1.0
        return max(below, above)


class Asha(Frozen):
    """ASHA in stage-evaluation units: a trial reports once per finished stage (training_iteration = stages)."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    max_t: int | None = Field(None, ge=1, description="None = the method's number of stages")


class Sampler(Frozen):
    seed: int = 0


class Resources(Frozen):
    cpu: float = Field(1, gt=0, description="CPUs per trial (also its torch threads); per worker when workers > 1")
    gpu: float = Field(0, ge=0, description="GPUs per trial; per worker when workers > 1")
    workers: int = Field(
        1, ge=1, description="1 = the engine runs inside the Tune trial; >1 = a Ray Train TorchTrainer (DDP) per trial"
    )


class Space(Frozen):
    name: str = ""
    description: str = ""
    base: Base
    parameters: dict[str, Parameter] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    constraints: list[Constraint] = Field(default_factory=list)
    sampler: Sampler = Sampler()
    scheduler: Asha | None = Asha()
    samples: int = Field(ge=1)
    concurrency: int = Field(1, ge=1)
    resources: Resources = Resources()
    prefix_cache: bool = Field(True, description="start trials from cached stage checkpoints they share")

    @property
    def metric(self) -> str:
        """The one metric ASHA compares at each rung: the first objective."""
        return self.objectives[0].metric

    @property
    def mode(self) -> str:
        return self.objectives[0].mode


# ---------------------------------------------------------------- finding and loading


def load_space(name: str, overrides: Sequence[str] = ()) -> tuple[Space, ExperimentConfig]:
    """The validated space (a name in search_spaces/, or a YAML path) and its base config; `overrides` are
    `--set` strings applied to the base."""
    space, path = load_project_yaml(Space, SPACES_DIR, name, "search space")
    base = base_config(space.base, path, "search space", dict(parse_override(text) for text in overrides))
    check_parameters(space, base, path)
    return check_metrics(space, base, path), base


def check_metrics(space: Space, base: ExperimentConfig, path: Path) -> Space:
    """Every objective and constraint must be a metric the base config can compute (checked before any trial
    starts); an optional objective it cannot compute is dropped, with a note."""
    missing = unavailable(base, scored_against_teacher(base))
    dropped = [o for o in space.objectives if o.optional and o.metric in missing]
    for objective in dropped:
        print(f"search space {path.stem}: optional objective {objective.metric} left out: {missing[objective.metric]}")
    kept = [o for o in space.objectives if o not in dropped]
    for kind, items in (("objectives", kept), ("constraints", space.constraints)):
        for item in items:
            if item.metric in missing:
                raise SdakdError(f"search space {path}: {kind} metric {item.metric} is unavailable under its base "
                                 f"config: {missing[item.metric]}")
    if not kept:
        raise SdakdError(f"search space {path}: no objective is available under its base config")
    return space.model_copy(update={"objectives": kept})


def check_parameters(space: Space, base: ExperimentConfig, path: Path) -> None:
    """Each parameter must be a distribution Optuna can represent, over values the config accepts."""
    for name, param in space.parameters.items():
        where = f"search space {path}: parameters.{name}"
        try:
            param.distribution()
        except ValueError as err:
            raise SdakdError(f"{where}: Optuna cannot represent this {param.type} distribution: {err}") from None
        for value in param.samples():
            try:
                with_overrides(base, {name: value})
            except SdakdError as err:
                raise SdakdError(f"{where} = {value!r} does not fit the config: {err}") from None


class Suggest:
    """Optuna define-by-run space: one suggestion per dotted path; the Optuna trial number rides along so the
    study can be matched to Tune's trials (picklable, as Tune saves the searcher with the experiment)."""

    TRIAL_KEY = "optuna_trial"

    def __init__(self, parameters: dict[str, Any]) -> None:
        self.parameters = parameters

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        for name, param in self.parameters.items():
            param.suggest(trial, name)
        return {self.TRIAL_KEY: trial.number}

    @classmethod
    def overrides(cls, trial_config: dict[str, Any]) -> dict[str, Any]:
        """A Tune trial's config as dotted-path overrides of the base config."""
        return {k: v for k, v in trial_config.items() if k != cls.TRIAL_KEY}
