"""Named YAML files of the project (ablations/, search_spaces/) and the `base:` config they start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, Field, ValidationError

from sdakd.config.load import load_config, read_yaml, with_overrides
from sdakd.config.schema import ExperimentConfig, Frozen
from sdakd.errors import SdakdError

# Named YAML folders (ablations/, search_spaces/) sit at the top of the source checkout.
REPO_ROOT = Path(__file__).resolve().parents[3]


def project_dirs(folder: str) -> list[Path]:
    """`folder` (e.g. ablations/) in the working directory first, then in the source checkout's root."""
    dirs = [Path.cwd() / folder, REPO_ROOT / folder]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in {x.resolve() for x in dirs[:i]}]


def project_names(folder: str) -> list[str]:
    return sorted({p.stem for d in project_dirs(folder) for p in d.glob("*.yaml")})


def find_project_yaml(folder: str, name: str, kind: str) -> Path:
    """A named YAML in `folder` (see project_dirs), or a path to one; unknown names list the known ones."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        if not Path(name).is_file():
            raise SdakdError(f"{kind} file {name} does not exist")
        return Path(name)
    for d in project_dirs(folder):
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise SdakdError(f"unknown {kind} {name!r}; known: {', '.join(project_names(folder)) or 'none'}")


M = TypeVar("M", bound=BaseModel)


def load_project_yaml(model: type[M], folder: str, name: str, kind: str) -> tuple[M, Path]:
    """A named YAML (see find_project_yaml) validated as `model`, its `name` field set to the file's stem."""
    path = find_project_yaml(folder, name, kind)
    try:
        return model.model_validate({"name": path.stem, **read_yaml(path, kind=f"{kind} file")}), path
    except ValidationError as err:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '<top level>'}: {e['msg']}" for e in err.errors())
        raise SdakdError(f"invalid {kind} {path}:\n{problems}") from None


class Base(Frozen):
    """The base config of a search space or an ablation grid: a preset and/or a config file, then overrides."""

    preset: str | None = None
    config: Path | None = Field(None, description="a config YAML, relative to the space or grid file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted.path: value")


def base_config(base: Base, path: Path, kind: str, overrides: Mapping[str, Any] = {}) -> ExperimentConfig:
    """`base` of the `kind` file at `path` ("search space", "ablation grid"), with `overrides` (from --set) last;
    a bad field fails naming the file."""
    if base.preset is None and base.config is None:
        raise SdakdError(f"{kind} {path}: base needs a preset or a config file")
    cfg = load_config(base.preset, path.parent / base.config if base.config is not None else None)
    changes = dict(base.overrides) | dict(overrides)
    try:
        return with_overrides(cfg, changes) if changes else cfg
    except SdakdError as err:
        raise SdakdError(f"{kind} {path}: base.overrides / --set: {err}") from None
