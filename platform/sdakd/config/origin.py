"""Which grid or search space a YAML file is: the name it runs, dedupes and reports under.

A built-in (`ablations/NAME.yaml`, `search_spaces/NAME.yaml` in the source checkout), or the working directory's
file of a name no built-in has, is NAME, as it always was: its MLflow parent, run folders and report keep their
names. Any other file (passed by path, or a working directory's file that shadows a built-in) is
NAME-<8 hex digits of its resolved path>, so it never shares a built-in's parent run, cells or report, whatever it
is called. The identity follows where the file is, not what it holds: an edited grid keeps its finished cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from sdakd.config.identity import stable_hash
from sdakd.config.project import REPO_ROOT
from sdakd.errors import SdakdError

M = TypeVar("M", bound=BaseModel)


def origin_name(path: Path, folder: str) -> str:
    """The identity of the YAML file at `path` among the named files of `folder` (ablations, search_spaces)."""
    candidates = (d / folder / f"{path.stem}.yaml" for d in (REPO_ROOT, Path.cwd()))
    named = next((p for p in candidates if p.is_file()), None)
    if named is not None and named.resolve() == path.resolve():
        return path.stem
    return f"{path.stem}-{stable_hash(str(path.resolve()), 8)}"


def named_by_origin(model: M, path: Path, folder: str, kind: str) -> M:
    """`model` (loaded from `path` with its `name` set to the file's stem) renamed to its origin_name; a file
    that sets `name:` itself is refused, since its name would be ignored."""
    if model.name != path.stem:
        raise SdakdError(f"{kind} {path}: name: {model.name!r} cannot be set; a {kind} is named by its file "
                         f"({path.stem}); remove the field")
    return model.model_copy(update={"name": origin_name(path, folder)})
