"""The pictures logged with each run: sample outputs side by side, and loss curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # Ray workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from sdakd.data.degrade import bicubic_up  # noqa: E402

SAMPLE_IMAGES = 2
PANEL_INCHES = 2.4


@torch.no_grad()
def sample_grid(validator: Any, path: Path, student: nn.Module | None = None) -> Path:
    """Rows of LR (nearest) | bicubic | student | teacher | GT for the first validation images (`validator`:
    sdakd.evaluate.validator.Validator); without a `student`, its column is left out."""
    if student is not None:
        student.eval()
    scale = validator.scale
    pairs = validator.pairs[:SAMPLE_IMAGES]
    titles = ["LR (nearest)", "bicubic", *(["student"] if student is not None else []), "teacher", "GT"]
    fig, axes = plt.subplots(len(pairs), len(titles), squeeze=False,
                             figsize=(PANEL_INCHES * len(titles), PANEL_INCHES * len(pairs)))
    for row, (name, lr, hr, *cond) in enumerate(pairs):  # (name, lr, hr[, cond]) as the validator holds them
        teacher = validator.teacher_sr[row] if validator.teacher_sr is not None else None
        # the student through the validator's own inference: device, conditioning, clamp
        outputs = [validator.run(student, lr, *cond)] if student is not None else []
        panels = [
            F.interpolate(lr.unsqueeze(0), scale_factor=scale, mode="nearest"),
            bicubic_up(lr.unsqueeze(0), scale),
            *outputs,
            teacher,
            hr.unsqueeze(0),
        ]
        for col, image in enumerate(panels):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([])
            if image is None:
                ax.text(0.5, 0.5, "no teacher", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(image[0].clamp(0, 1).permute(1, 2, 0).float().numpy(), interpolation="nearest")
            if row == 0:
                ax.set_title(titles[col])
        axes[row, 0].set_ylabel(name)
    return save_figure(fig, path)


def loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], stage_ends: Sequence[tuple[str, int]],
                path: Path) -> Path:
    """Generator and discriminator losses against the global step, stage boundaries dashed."""
    groups = {
        "generator": {k: v for k, v in curves.items() if not k.startswith("loss/d_")},
        "discriminator": {k: v for k, v in curves.items() if k.startswith("loss/d_")},
    }
    groups = {title: group for title, group in groups.items() if group}
    fig, axes = plt.subplots(1, len(groups), squeeze=False, figsize=(6 * len(groups), 3.6))
    for ax, (title, group) in zip(axes[0], groups.items()):
        for key, points in sorted(group.items()):
            steps, values = zip(*points)
            ax.plot(steps, values, label=key.removeprefix("loss/"), marker="." if len(points) < 20 else None)
        for name, step in stage_ends:
            ax.axvline(step, color="gray", linestyle="--", linewidth=0.8)
            ax.annotate(name, (step, 1), xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("global step")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def study_plots(study: Any, metrics: Sequence[str], folder: Path) -> tuple[list[Path], dict[str, str]]:
    """A search's own Optuna study drawn with Optuna's matplotlib visualisations: optimisation history, parameter
    importances (PED-ANOVA), parallel coordinates, and the Pareto front when there are several objectives.
    Returns the PNGs and, for a plot the study cannot give (too few trials, one parameter), the reason."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    multi = len(metrics) > 1
    first = {"target": (lambda t: t.values[0]) if multi else None, "target_name": metrics[0]}
    draw = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, **first),
        "param_importances": lambda: ovm.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), **first
        ),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, **first),
    }
    if multi:
        draw["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=list(metrics))
    written, missing = [], {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, plot in draw.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                axes = plot()
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            written.append(save_figure(figure, folder / f"{name}.png"))
        except Exception as err:  # noqa: BLE001 - a plot the study cannot give is reported, not fatal
            missing[name] = f"{type(err).__name__}: {err}"
    return written, missing
