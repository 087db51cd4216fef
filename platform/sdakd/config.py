"""Typed, validated, immutable experiment config: YAML in, one clear error out.

Every knob a search or ablation may touch is a field with a dotted path (`stages.s3.iters`,
`loss.fm.weight`, `student_d.width`); searches and grids are just dotted-path overrides.
Method-specific knobs live under `methods.<name>.*` and are validated by that method's own params model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdakd.errors import SdakdError

PRESETS_PACKAGE = "sdakd.presets"
# Named YAML folders (ablations/, search_spaces/) sit at the top of the source checkout.
REPO_ROOT = Path(__file__).resolve().parents[2]
STORAGE_ENV = "SDAKD_STORAGE_PATH"  # a cluster sets it on every node (cluster.yaml)
# Fields that name where things are written or how often we log: they never change what is learned.
TRACKING_ONLY = ("run",)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TeacherPretrain(Frozen):
    """How a teacher without weights is trained (once; cached by the hash of what it depends on)."""

    iters: int = Field(2000, ge=0)
    d_iters: int = Field(200, ge=0, description="teacher-D steps on GT vs the frozen teacher's output")
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    perceptual_weight: float = Field(1.0, ge=0)


class TeacherConfig(Frozen):
    arch: str = "rrdbnet"
    num_feat: int = Field(64, ge=1)
    num_block: int | None = Field(
        23, ge=1, description="depth: RRDB blocks (rrdbnet) or body convs (srvgg_compact); null for gcfsr"
    )
    num_grow_ch: int | None = Field(32, ge=1, description="rrdbnet only; null for other families")
    d_arch: str = "unet_sn"
    d_num_feat: int = Field(64, ge=1)
    weights: Path | None = Field(None, description="official generator .pth (e.g. RealESRGAN_x4plus.pth)")
    d_weights: Path | None = Field(None, description="official discriminator .pth (..._netD.pth)")
    pretrain: TeacherPretrain = TeacherPretrain()


class StudentConfig(Frozen):
    width: float = Field(0.25, gt=0, le=1, description="generator width factor r (channels x r)")
    num_block: int | None = Field(None, ge=1, description="depth (blocks or convs); None = the teacher's")


class StudentDConfig(Frozen):
    width: float = Field(0.25, gt=0, le=1, description="student-discriminator width factor r_D")


class StageConfig(Frozen):
    iters: int = Field(ge=0)


class StagesConfig(Frozen):
    s1: StageConfig = StageConfig(iters=5000)
    s2: StageConfig = StageConfig(iters=5000)
    s3: StageConfig = StageConfig(iters=20000)


class Weighted(Frozen):
    weight: float = Field(1.0, ge=0)


class PerceptualLoss(Weighted):
    vgg_weights: Path | None = Field(None, description="local timm vgg19 weights; None = random init (logged)")
    # BasicSR's pre-activation VGG19 layers and weights (Real-ESRGAN recipe).
    layers: dict[str, float] = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, layers: dict[str, float]) -> dict[str, float]:
        from sdakd.losses.perceptual import VGG19_CONVS

        unknown = sorted(set(layers) - set(VGG19_CONVS))
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layers {unknown}; allowed: {', '.join(VGG19_CONVS)}")
        return layers


class FeatureMapLoss(Weighted):
    every: int = Field(1, ge=1, description="tap every k-th generator block (plus conv_body)")


class GanLoss(Weighted):
    weight: float = Field(0.1, ge=0)
    type: Literal["vanilla", "hinge", "softplus"] = "vanilla"


class R1Penalty(Frozen):
    weight: float = Field(
        0.0, ge=0, description="gamma of the R1 penalty gamma/2 E|grad D(GT)|^2 in every D's GT term; 0 = off"
    )


class LossConfig(Frozen):
    pixel: Weighted = Weighted()
    perceptual: PerceptualLoss = PerceptualLoss()
    teacher_output: Weighted = Weighted()
    fm: FeatureMapLoss = FeatureMapLoss()
    gan: GanLoss = GanLoss()
    r1: R1Penalty = R1Penalty()


class DataConfig(Frozen):
    root: Path | None = Field(None, description="Parquet shard folder; None = the bundled photos (built on first use)")
    scale: Literal[1, 2, 4] = 4
    gt_size: int = Field(256, ge=8)
    batch_size: int = Field(12, ge=1, description="per worker")
    degradation: Literal["bicubic", "second_order"] = "bicubic"
    scales: tuple[int, ...] | None = Field(
        None, min_length=1, description="GCFSR mode: each sample's upscaling factor is drawn from this list (repeat "
        "one to draw it more often), the LR comes upsampled back to gt_size and the factor goes to the generator "
        "as `cond`; needs scale 1, since the network's input is then at output size",
    )
    val_max_side: int | None = Field(None, ge=8, description="center-crop validation HR to bound eval cost")
    num_workers: int = Field(0, ge=0, description="loader processes (0 = in the training process)")

    @model_validator(mode="after")
    def _crop_fits_scale(self) -> "DataConfig":
        if self.gt_size % (self.scale * 4):
            raise ValueError(f"gt_size {self.gt_size} must be a multiple of 4 x scale = {4 * self.scale}")
        if self.scales and self.scale != 1:
            raise ValueError(f"scales needs scale 1 (GCFSR mode feeds the LR upsampled to HR size), got {self.scale}")
        bad = [f for f in self.scales or () if f < 1 or self.gt_size % f]
        if bad:
            raise ValueError(f"scales {bad}: each factor must be >= 1 and divide gt_size {self.gt_size}")
        return self


class OptimConfig(Frozen):
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    ema: float = Field(0.999, ge=0, lt=1, description="generator EMA decay; 0 disables")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last on CUDA (ignored on CPU)")


class RunConfig(Frozen):
    """Where and how often: excluded from the config hash."""

    out_dir: Path | None = Field(None, description="None = runs/<method>-<hash>")
    cache_dir: Path = Path(".sdakd")
    device: str = "auto"
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    eval_max_images: int | None = Field(None, ge=1)
    latency_repeats: int = Field(10, ge=1)
    storage_path: str | None = Field(
        None, description="Ray Train checkpoints and results (a folder all nodes share, or s3://...); "
        "None = env SDAKD_STORAGE_PATH, else <cwd>/ray_results",
    )
    max_failures: int = Field(2, ge=-1, description="Ray Train restarts from the last checkpoint; -1 = unlimited")
    tracking_uri: str | None = Field(
        None, description="MLflow store; None = env SDAKD_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"
    )


class ExperimentConfig(Frozen):
    method: str = "sdakd"
    seed: int = 0
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    student_d: StudentDConfig = StudentDConfig()
    stages: StagesConfig = StagesConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    methods: dict[str, Any] = Field(default_factory=dict, description="per-method knobs: methods.<name>.<field>")
    run: RunConfig = RunConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from sdakd.methods import METHODS

        METHODS.get(name)  # raises with the known names
        return name

    @field_validator("methods")
    @classmethod
    def _method_options(cls, sections: dict[str, Any]) -> dict[str, Any]:
        from sdakd.methods import METHODS

        validated = {}
        for name, opts in sections.items():
            options_model = METHODS.get(name).Options
            try:
                validated[name] = options_model.model_validate(opts or {})
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
                )
                allowed = ", ".join(sorted(options_model.model_fields)) or "none"
                raise ValueError(f"methods.{name}: {problems} (fields of {name}: {allowed})") from None
        return validated

    @property
    def options(self) -> Any:
        """The active method's validated knobs (defaults where the YAML names none)."""
        from sdakd.methods import METHODS

        return self.methods.get(self.method) or METHODS.get(self.method).Options()

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["methods"] = {k: v.model_dump(mode="json") for k, v in self.methods.items()}
        return data


def identity_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """What decides the result: the resolved config minus tracking fields and inactive method sections."""
    data = cfg.to_dict()
    for key in TRACKING_ONLY:
        data.pop(key)
    data["methods"] = {cfg.method: cfg.options.model_dump(mode="json")}
    return data


def stable_hash(data: Any, length: int = 12) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(cfg: ExperimentConfig) -> str:
    return stable_hash(identity_dict(cfg))


# ---------------------------------------------------------------- loading


def preset_names() -> list[str]:
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def _read_yaml(path: Path | str, text: str | None = None) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text if text is not None else Path(path).read_text())
    except FileNotFoundError:
        raise SdakdError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise SdakdError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SdakdError(f"config file {path} must hold a mapping at the top level, found {type(data).__name__}")
    return data


def storage_root(cfg: ExperimentConfig) -> str | None:
    """Where Ray keeps results and checkpoints: `run.storage_path`, else env SDAKD_STORAGE_PATH, as an absolute
    path or a URI (s3://...); None when neither is set (each command then keeps them in its own folder)."""
    storage = cfg.run.storage_path or os.environ.get(STORAGE_ENV)
    if not storage:
        return None
    return storage if "://" in storage else str(Path(storage).expanduser().absolute())


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
        return model.model_validate({"name": path.stem, **_read_yaml(path)}), path
    except ValidationError as err:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '<top level>'}: {e['msg']}" for e in err.errors())
        raise SdakdError(f"invalid {kind} {path}:\n{problems}") from None


def preset_dict(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise SdakdError(f"unknown preset {name!r}; known presets: {', '.join(names)}")
    return _read_yaml(f"preset {name}", resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text())


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
        raise SdakdError(f"override {text!r} must look like dotted.path=value (e.g. stages.s3.iters=200)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise SdakdError(f"override {text!r}: value is not valid YAML: {err}") from None
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


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<top level>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(item["loc"][:-1])
            message = f"unknown field; allowed here: {', '.join(allowed)}" if allowed else "unknown field"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"  {path}: {message}")
    return f"invalid config ({source}):\n" + "\n".join(lines)


def _allowed_fields(loc: Sequence[Any]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def validate(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise SdakdError(_format_errors(err, source)) from None


def load_config(
    preset: str | None = None,
    path: Path | str | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Defaults < preset < YAML file (which may name its own `preset:`) < `--set` overrides."""
    data: dict[str, Any] = {}
    sources = []
    file_data = _read_yaml(path) if path is not None else {}
    base = file_data.pop("preset", None) if file_data else None
    for name in (preset, base):
        if name:
            data = deep_merge(data, preset_dict(name))
            sources.append(f"preset {name}")
    if path is not None:
        data = deep_merge(data, file_data)
        sources.append(str(path))
    for text in overrides:
        key, value = parse_override(text)
        data = set_dotted(data, key, value)
        sources.append(f"--set {text}")
    return validate(data, ", ".join(sources) or "defaults")


def with_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A new config with dotted-path overrides applied (the given one is untouched)."""
    data = cfg.to_dict()
    for key, value in overrides.items():
        data = set_dotted(data, key, value)
    return validate(data, "overrides " + ", ".join(f"{k}={v}" for k, v in overrides.items()))


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
