"""The trained student as an MLflow model (pyfunc), and its registration in the model registry.

`log_student_model` saves a pyfunc model whose only files are the run's config.yaml and student.pt (data, read
with yaml.safe_load and torch.load(weights_only=True)) and an MLmodel naming this module as its loader: no pickle,
no code stored in the artifacts, so whoever can replace the model's files in the artifact store cannot make
loading it run code through them (loading needs sdakd installed). The rest of MLflow's format stays MLflow's: an
edited MLmodel can name another loader for `mlflow.pyfunc.load_model`; `load_student` reads our two files only.
The model is a LoggedModel of the run, which is tagged with its id; `register_student` makes it a version of a
registered model. MlflowClient only (see run.py).

    model = mlflow.pyfunc.load_model("models:/<model id>")   # or models:/<registered name>/<version>
    sr = model.predict(lr)   # lr: float32 (N, 3, H, W) in [0, 1] -> (N, 3, s*H, s*W), not clamped
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import save_model
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from sdakd.config.load import load_config
from sdakd.errors import SdakdError
from sdakd.ship import ARCHS
from sdakd.ship.networks import student_network

log = logging.getLogger(__name__)
MODEL_TAG = "sdakd.model_id"  # on the run: the LoggedModel holding its student
MODEL_NAME = "student"
FILES = ("config.yaml", "student.pt")  # the model's data, under data/student/ in its artifacts
IMAGES = TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))  # a batch of RGB images in [0, 1]
SIGNATURE = ModelSignature(inputs=Schema([IMAGES]), outputs=Schema([IMAGES]))
# Given, so saving does not start a process to infer them. sdakd itself is not on PyPI: install it from its source
# where the model is loaded (an unrelated PyPI name must not be pulled in).
REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy", f"mlflow=={mlflow.__version__}"]


class StudentUpscaler:
    """The student rebuilt from the model's config.yaml and student.pt; `predict` upscales float32 images in
    [0, 1]: (N, 3, H, W) -> (N, 3, s*H, s*W), or one (H, W, 3) image -> (s*H, s*W, 3) when called on the raw model
    (`get_raw_model()`: the signature's schema check admits NCHW batches only)."""

    def __init__(self, folder: Path) -> None:
        self.net = student_network(folder / "student.pt", folder / "config.yaml")

    def predict(self, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.float32)
        channels_last = images.ndim == 3
        batch = torch.from_numpy(np.ascontiguousarray(images.transpose(2, 0, 1)[None] if channels_last else images))
        with torch.inference_mode():
            result = self.net(batch).numpy()
        return result[0].transpose(1, 2, 0) if channels_last else result

    def get_raw_model(self) -> StudentUpscaler:
        return self


def _load_pyfunc(data_path: str) -> StudentUpscaler:
    """MLflow's pyfunc loader hook (the MLmodel names this module): the student in the model's data folder."""
    return StudentUpscaler(Path(data_path))


def load_student(model_uri: str, tracking_uri: str) -> StudentUpscaler:
    """The student of a logged or registered model (`models:/...`), from its config.yaml and student.pt alone:
    for a store others can write, where an edited MLmodel could point `mlflow.pyfunc.load_model` elsewhere."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp, tracking_uri=tracking_uri))
        except MlflowException as err:
            raise SdakdError(f"{model_uri}: not in the tracking store {tracking_uri} ({err.message})") from None
        flavor = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {})
        if flavor.get("loader_module") != __name__:
            raise SdakdError(f"{model_uri}: not an sdakd student model (its MLmodel names loader "
                             f"{flavor.get('loader_module')!r}, not {__name__})")
        return StudentUpscaler(local / "data" / MODEL_NAME)


def log_student_model(client: MlflowClient, run_id: str, exp_or_run_folder: Any) -> str | None:
    """Log the run folder's student (an Experiment's `out_dir`, or the folder) as a pyfunc LoggedModel of
    `run_id`; its `models:/` URI, or None for a family the upscaler does not take (GCFSR)."""
    folder = Path(getattr(exp_or_run_folder, "out_dir", exp_or_run_folder))
    for name in FILES:
        if not (folder / name).is_file():
            raise SdakdError(f"{folder / name} does not exist: {folder} is not a finished sdakd run folder")
    arch = load_config(path=folder / "config.yaml").teacher.arch
    if arch not in ARCHS:
        log.info("%s: a %s student is not logged as an MLflow model (fixed-size, conditioned)", folder, arch)
        return None
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, MODEL_NAME, source_run_id=run_id, model_type="sdakd-student",
                                       tags={"sdakd.arch": arch})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / MODEL_NAME
        data.mkdir()
        for name in FILES:
            shutil.copyfile(folder / name, data / name)  # save_model takes one folder: data/student/
        local = Path(tmp) / "model"
        description = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                            model_id=model.model_id)  # fmt: skip
        with warnings.catch_warnings():  # the signature describes the input; no example needed
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            save_model(str(local), loader_module=__name__, data_path=str(data), signature=SIGNATURE,
                       pip_requirements=REQUIREMENTS, mlflow_model=description)  # fmt: skip
        client.log_model_artifacts(model.model_id, str(local))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.set_tag(run_id, MODEL_TAG, model.model_id)
    return f"models:/{model.model_id}"


def register_student(uri: str, run_id: str, name: str, run_folder: Path | None = None) -> Any:
    """A new version of registered model `name` from the run's logged student (logged first from `run_folder`
    when the run has none); the ModelVersion."""
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise SdakdError(f"run {run_id} is not in the tracking store {uri}") from None
    model_id = run.data.tags.get(MODEL_TAG)
    if model_id is None and run_folder is not None:
        model_id = (log_student_model(client, run_id, run_folder) or "").removeprefix("models:/") or None
    if model_id is None:
        hint = "pass --run-folder with its run folder" if run_folder is None else f"{run_folder} holds no such student"
        raise SdakdError(f"run {run_id} has no logged student model (tag {MODEL_TAG}): {hint}")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise SdakdError(f"cannot register model {name!r}: {err.message}") from None
    # The artifacts' location, not models:/<id>: MLflow's SQL registry resolves that URI through the process's
    # global tracking URI rather than this client's.
    location = client.get_logged_model(model_id).artifact_location
    return client.create_model_version(name, location, run_id=run_id, model_id=model_id)
