"""Shipping a student: tiled upscaling of image files, ONNX / torch.export exports, the MLflow pyfunc model."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdakd.cli import main
from sdakd.config.load import load_config
from sdakd.errors import SdakdError
from sdakd.models import RRDBNet, SRVGGNetCompact, save_official
from sdakd.pipeline import train
from sdakd.ship.networks import file_network, student_network
from sdakd.ship.runtimes import torch_upscaler
from sdakd.ship.tiling import upscale_image
from sdakd.tracking.model import MODEL_TAG, load_student, log_student_model
from sdakd.tracking.run import tracked_run
from sdakd.tracking.store import Store

CPU = torch.device("cpu")
TINY_RUN = [
    "teacher.pretrain.iters=10", "teacher.pretrain.d_iters=2", "stages.s1.iters=2", "stages.s2.iters=2",
    "stages.s3.iters=2", "data.batch_size=2", "data.gt_size=32", "run.eval_max_images=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny student trained as an ablation cell is: in a tracked MLflow run that ends with `on_done`."""
    tmp = tmp_path_factory.mktemp("ship")
    cfg = load_config("tiny", overrides=[*TINY_RUN, f"run.cache_dir={tmp}/cache", f"run.out_dir={tmp}/run"])
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    store = Store(uri)
    experiment = store.experiment("ship")
    parent = store.parent(experiment, "grid", "ship")
    with tracked_run(uri, experiment, parent, "cell", cfg) as tracker:
        exp = train(cfg, callbacks=[tracker])
        tracker.on_done(exp, exp.metrics)
    return {"folder": tmp / "run", "uri": uri, "run_id": tracker.run_id, "experiment": experiment}


@pytest.fixture(scope="module")
def student(tracked):
    return student_network(tracked["folder"])


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random picture (1, 3, H, W) in [0, 1]."""
    noise = torch.rand(1, 3, height // 4 + 2, width // 4 + 2, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------ tiling


NETS = {  # receptive radius in input pixels: srvgg 5 (5 convs); RRDBNet x2 about 2 x 19 (it runs at half size)
    "srvgg_x4": (lambda: SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4), 12, (61, 47), (24, 30, 40)),
    "srvgg_x4_300x200": (lambda: SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4), 12, (200, 300), (64, 128)),
    "rrdbnet_x2": (lambda: RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4), 80, (170, 162), (160, 168)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_tiled_upscale_equals_the_whole_image_at_every_tile_size(name):
    build, overlap, (height, width), tiles = NETS[name]
    torch.manual_seed(0)
    net = build().eval()
    x = image(height, width)
    with torch.inference_mode():
        whole = net(x)  # both sides are multiples of the network's step: no padding
    up = torch_upscaler(net, CPU)
    for tile in tiles:
        tiled = upscale_image(up, x, tile, overlap)
        assert tiled.shape == whole.shape
        assert (tiled - whole).abs().max().item() < 1e-5, tile
    # a tile size that cuts inside the receptive field of the network (no overlap) does change the result
    assert (upscale_image(up, x, tiles[0], 0) - whole).abs().max().item() > 1e-3


def test_official_weights_are_read_with_their_sizes(tmp_path):
    for net in (RRDBNet(scale=2, num_feat=8, num_block=2, num_grow_ch=4), SRVGGNetCompact(num_feat=8, num_conv=3)):
        save_official(net, tmp_path / "net.pth")
        loaded = file_network(tmp_path / "net.pth")
        x = image(16, 24)
        with torch.inference_mode():
            assert torch.equal(loaded(x), net.eval()(x))


# ------------------------------------------------------------------ image files


def reference(student, pixels: np.ndarray) -> np.ndarray:
    """The student on an (H, W, 3) uint8 array, as (s*H, s*W, 3) float in [0, 255]: computed without sdakd.ship."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        return student(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255


def test_upscale_writes_every_mode_and_reports_a_truncated_file(tracked, student, tmp_path, capsys):
    rgb = (image(40, 52, seed=1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    grey = rgb[..., 1]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "photo.png")
    Image.fromarray(rgb).save(folder / "sub" / "photo.jpg", quality=98)
    Image.fromarray(np.dstack([rgb, np.full_like(grey, 128)])).save(folder / "alpha.png")
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "deep.png")  # 16-bit greyscale
    whole = (folder / "photo.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 2])  # cut short

    code = main(["upscale", str(folder), "--model", str(tracked["folder"]), "--out", str(tmp_path / "out"),
                 "--tile", "32", "--overlap", "16", "--device", "cpu"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot read" in err
    out = tmp_path / "out"
    assert not (out / "broken.png").exists()
    expected = reference(student, rgb)
    modes = {"photo.png": "RGB", "sub/photo.jpg": "RGB", "alpha.png": "RGBA", "grey.png": "L", "deep.png": "I;16"}
    # lossless files match the student on the whole image to rounding: tiles of 32 px overlapping by 16 blend
    # exactly, as the student's receptive radius is 8 px (6 + 2 convs)
    for name, mode in modes.items():
        with Image.open(out / name) as written:
            assert (written.mode, written.size) == (mode, (52 * 4, 40 * 4)), name
            pixels = np.asarray(written).astype(np.float64)
        if name in ("photo.png", "alpha.png"):
            assert np.abs(pixels[..., :3] - expected).max() <= 0.51, name
    assert (np.asarray(Image.open(out / "alpha.png"))[..., 3] == 128).all()  # constant alpha stays constant
    luma = reference(student, np.dstack([grey] * 3)) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(np.asarray(Image.open(out / "grey.png")) - luma).max() <= 0.51
    assert np.abs(np.asarray(Image.open(out / "deep.png")) / 257 - luma).max() <= 0.01


def test_bad_arguments_fail_in_one_line_before_any_work(tracked, tmp_path, capsys):
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    cases = {
        ("upscale", str(picture), "--out", str(tmp_path / "o"), "--tile", "8"): "--tile 8 must be 0",
        ("upscale", str(picture), "--out", str(tmp_path / "o"), "--bf16", "--device", "cpu"): "--bf16",
        ("upscale", str(picture), "--out", str(tmp_path)): "would overwrite it",
        ("upscale", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")): "no such image",
        ("export", "--format", "tflite", "--out", str(tmp_path / "x.tflite")): "allowed onnx, exported-program",
    }
    for args, needle in cases.items():
        argv = [*args[:1], *(("--model", str(tracked["folder"])) if args[0] == "upscale" else (str(tracked["folder"]),)),
                *args[1:]]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err, err


def test_missing_deploy_extra_is_one_line(tracked, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["export", str(tracked["folder"]), "--format", "onnx", "--out", str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: onnxruntime is not installed: it comes with the deploy extra (pip install "sdakd[deploy]")'
    assert not (tmp_path / "s.onnx").exists()


# ------------------------------------------------------------------ export


def test_exports_match_pytorch_at_two_sizes(tracked, student, tmp_path, capsys):
    onnx_file, program_file = tmp_path / "student.onnx", tmp_path / "student.pt2"
    assert main(["export", str(tracked["folder"]), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert main(["export", str(tracked["folder"] / "student.pt"), "--format", "exported-program",
                 "--out", str(program_file)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("max |") == 6 and "opset 18" in printed
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and session.get_outputs()[0].name == "output"
    program = torch.export.load(str(program_file)).module()
    for shape in ((1, 3, 24, 40), (2, 3, 37, 19)):
        x = torch.rand(shape)
        with torch.inference_mode():
            expected = student(x)
            assert (program(x) - expected).abs().max().item() < 1e-4
        got = torch.from_numpy(session.run(["output"], {"input": x.numpy()})[0])
        assert got.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
        assert (got - expected).abs().max().item() < 1e-4
    # the ONNX file upscales image files as the student does; a .pt2 is not loaded (it can carry code)
    picture = tmp_path / "in.png"
    Image.fromarray((image(20, 28)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(picture)
    outputs = []
    for model in (tracked["folder"], onnx_file):
        out = tmp_path / f"up-{model.suffix or 'run'}"
        assert main(["upscale", str(picture), "--model", str(model), "--out", str(out)]) == 0
        outputs.append(np.asarray(Image.open(out / "in.png")).astype(int))
    assert np.abs(outputs[1] - outputs[0]).max() <= 1
    capsys.readouterr()
    assert main(["upscale", str(picture), "--model", str(program_file), "--out", str(tmp_path / "up-pt2")]) == 2
    assert "does not load saved torch.export programs" in capsys.readouterr().err


# ------------------------------------------------------------------ MLflow


def test_logged_student_loads_back_as_pyfunc_and_registers(tracked, student, tmp_path, monkeypatch, capsys):
    client = mlflow.MlflowClient(tracking_uri=tracked["uri"])
    model_id = client.get_run(tracked["run_id"]).data.tags[MODEL_TAG]  # logged by TrackedRun.on_done
    x = image(20, 24).numpy()
    with torch.inference_mode():
        expected = student(torch.from_numpy(x)).numpy()
    # registering goes through the named store alone (MLflow's default store is elsewhere, and empty)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert main(["register", tracked["run_id"], "--name", "tiny-student", "--tracking-uri", tracked["uri"]]) == 0
    assert "version 1" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])  # where models:/ URIs are looked up
    loaded = mlflow.pyfunc.load_model(f"models:/{model_id}")
    assert np.array_equal(loaded.predict(x), expected)
    hwc = loaded.get_raw_model().predict(x[0].transpose(1, 2, 0))
    assert np.array_equal(hwc, expected[0].transpose(1, 2, 0))
    assert np.array_equal(mlflow.pyfunc.load_model("models:/tiny-student/1").predict(x), expected)
    # a run without a logged model (a search trial): logged from its run folder, then registered
    bare = client.create_run(tracked["experiment"]).info.run_id
    assert main(["register", bare, "--name", "tiny-student", "--tracking-uri", tracked["uri"]]) == 2
    assert "--run-folder" in capsys.readouterr().err
    assert main(["register", bare, "--name", "tiny-student", "--tracking-uri", tracked["uri"],
                 "--run-folder", str(tracked["folder"])]) == 0  # fmt: skip
    assert np.array_equal(mlflow.pyfunc.load_model("models:/tiny-student/2").predict(x), expected)


class Payload:
    """Unpickling it creates `marker`."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_tampered_model_artifact_runs_no_code_on_load(tracked, student, tmp_path, monkeypatch):
    """Issue #26: whoever can write the artifact store replaces the model's files; loading it runs nothing."""
    import cloudpickle

    client = mlflow.MlflowClient(tracking_uri=tracked["uri"])
    run_id = client.create_run(tracked["experiment"]).info.run_id
    uri = log_student_model(client, run_id, tracked["folder"])
    location = client.get_logged_model(uri.removeprefix("models:/")).artifact_location
    artifacts = Path(location.removeprefix("file://"))
    names = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file())
    assert not [n for n in names if n.endswith((".pkl", ".py"))], names  # no pickle, no code stored
    assert {"MLmodel", "data/student/config.yaml", "data/student/student.pt"} <= set(names)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    x = image(20, 24).numpy()
    with torch.inference_mode():
        expected = student(torch.from_numpy(x)).numpy()
    marker = tmp_path / "pwned"
    # a CloudPickle payload where MLflow's pickled python models keep theirs: never read
    (artifacts / "python_model.pkl").write_bytes(cloudpickle.dumps(Payload(marker)))
    assert np.array_equal(mlflow.pyfunc.load_model(uri).predict(x), expected)
    assert not marker.exists()
    # the weights or the config replaced by payloads: refused, not run
    data = artifacts / "data" / "student"
    originals = {name: (data / name).read_bytes() for name in ("student.pt", "config.yaml")}
    torch.save({"body.0.weight": Payload(marker)}, data / "student.pt")
    with pytest.raises(SdakdError, match="not a plain weights file"):
        mlflow.pyfunc.load_model(uri)
    (data / "student.pt").write_bytes(originals["student.pt"])
    (data / "config.yaml").write_text(f"preset: !!python/object/apply:pathlib.Path.touch [{marker}]\n")
    with pytest.raises(SdakdError, match="not valid YAML"):
        mlflow.pyfunc.load_model(uri)
    (data / "config.yaml").write_bytes(originals["config.yaml"])
    assert not marker.exists()
    # an MLmodel pointed at MLflow's own pickle loader: load_student reads our two files or nothing
    mlmodel = (artifacts / "MLmodel").read_text()
    (artifacts / "MLmodel").write_text(mlmodel.replace("loader_module: sdakd.tracking.model",
                                                       "loader_module: mlflow.pyfunc.model"))  # fmt: skip
    with pytest.raises(SdakdError, match="not an sdakd student model"):
        load_student(uri, tracked["uri"])
    (artifacts / "MLmodel").write_text(mlmodel)
    assert np.array_equal(load_student(uri, tracked["uri"]).predict(x), expected)
    assert not marker.exists()
