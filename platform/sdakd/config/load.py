"""Config loading: YAML files, shipped presets and dotted `--set` overrides in, one validated config out.

The schema (`sdakd.config.schema`) checks every section; the options under `methods.<name>` are checked here with
that method's own params model, looked up in the method registry. A bad field fails with one message naming its
source, its dotted path and the allowed values, before anything is computed.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from sdakd.config.schema import ExperimentConfig
from sdakd.config.yaml_files import TooLarge, load_yaml, read_yaml
from sdakd.errors import SdakdError, cut, shown
from sdakd.methods import METHODS

PRESETS_PACKAGE = "sdakd.presets"
MAX_KEY_PARTS = 16  # parts of a dotted override path
MAX_PROBLEMS = 20  # the lines an invalid config's error lists


def preset_names() -> list[str]:
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise SdakdError(f"unknown preset {name!r}; known presets: {', '.join(names)}")
    return read_yaml(name, resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text(), kind="preset")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """`stages.s3.iters=200` -> ("stages.s3.iters", 200); values are YAML scalars or lists."""
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise SdakdError(f"override {shown(text)} must look like dotted.path=value (e.g. stages.s3.iters=200)")
    if path.count(".") >= MAX_KEY_PARTS:
        raise SdakdError(f"override {shown(text)}: its path has {path.count('.') + 1} parts; config paths have at "
                         f"most {MAX_KEY_PARTS}")
    try:
        value = load_yaml(raw)
    except TooLarge as err:
        raise SdakdError(f"override {shown(text)}: {err}") from None
    except yaml.YAMLError as err:
        raise SdakdError(f"override {shown(text)}: value is not valid YAML: {err}") from None
    return path.strip(), value


def set_dotted(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `path` set; intermediate mappings are created and then validated."""
    keys = path.split(".")
    nested: dict[str, Any] = {}
    cursor = nested
    for key in keys[:-1]:
        cursor = cursor.setdefault(key, {})
    cursor[keys[-1]] = value
    return deep_merge(data, nested)


def _schema_problems(err: ValidationError) -> list[str]:
    lines = []
    for item in err.errors():
        path = cut(".".join(str(p) for p in item["loc"])) or "<top level>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(item["loc"][:-1])
            message = f"unknown field; allowed here: {', '.join(allowed)}" if allowed else "unknown field"
        elif item["type"] == "literal_error":
            message = f"{message} (got {shown(item.get('input'))})"
        lines.append(f"  {path}: {message}")
    return lines


def _allowed_fields(loc: Sequence[Any]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _method_options(cfg: ExperimentConfig) -> tuple[dict[str, BaseModel], list[str]]:
    """Each `methods.<name>` section validated by that method's params model; the problems found."""
    problems = []
    if cfg.method not in METHODS:
        problems.append(f"  method: unknown method {shown(cfg.method)}; known: {', '.join(METHODS.names())}")
    validated = {}
    for name, opts in cfg.methods.items():
        if name not in METHODS:
            problems.append(f"  methods.{cut(name)}: unknown method {shown(name)}; known: {', '.join(METHODS.names())}")
            continue
        options_model = METHODS.get(name).Options
        try:
            validated[name] = options_model.model_validate(opts or {})
        except ValidationError as err:
            allowed = ", ".join(sorted(options_model.model_fields)) or "none"
            problems += [
                f"  methods.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']} (fields of {name}: {allowed})"
                for e in err.errors()
            ]
    return validated, problems


def validate(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """A config from plain data (a merged YAML, a dict sent to a Ray worker), with its method options checked."""
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _invalid(source, _schema_problems(err)) from None
    options, problems = _method_options(cfg)
    if problems:
        raise _invalid(source, problems)
    return cfg.model_copy(update={"methods": options})


def _invalid(source: str, problems: list[str]) -> SdakdError:
    more = [f"  ... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
    return SdakdError(f"invalid config ({source}):\n" + "\n".join(problems[:MAX_PROBLEMS] + more))


def load_config(
    preset: str | None = None,
    path: Path | str | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Defaults < preset < YAML file (which may name its own `preset:`) < `--set` overrides."""
    data: dict[str, Any] = {}
    sources = []
    file_data = read_yaml(path) if path is not None else {}
    base = file_data.pop("preset", None)
    if base is not None and not isinstance(base, str):
        raise SdakdError(f"{path}: preset must name a preset, found {shown(base)}; known presets: "
                         f"{', '.join(preset_names())}")
    if preset and base and preset != base:
        raise SdakdError(f"preset {preset!r} was given, but {path} names preset {base!r}: name one preset")
    for name in dict.fromkeys((preset, base)):  # the same preset named twice is merged once
        if name:
            data = deep_merge(data, preset_dict(name))
            sources.append(f"preset {name}")
    if path is not None:
        data = deep_merge(data, file_data)
        sources.append(str(path))
    for text in overrides:
        key, value = parse_override(text)
        data = set_dotted(data, key, value)
        sources.append(f"--set {cut(text)}")
    return validate(data, ", ".join(sources) or "defaults")


def with_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A new config with dotted-path overrides applied (the given one is untouched)."""
    data = cfg.to_dict()
    for key, value in overrides.items():
        data = set_dotted(data, key, value)
    return validate(data, "overrides " + ", ".join(cut(f"{k}={v}") for k, v in overrides.items()))


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Every path field made absolute (from the working directory): Ray workers and Tune trials run elsewhere."""

    def absolute(value: Any) -> Any:
        if isinstance(value, Path):
            return value.expanduser().absolute()
        if isinstance(value, dict):
            return {key: absolute(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(absolute(item) for item in value)
        return value

    return validate(absolute(cfg.model_dump()), "the config with absolute paths")  # python mode keeps Path types


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
