"""Issue #26: what a hostile user hands `upscale`, `export`, `teacher import` and the config loader. No file runs
code, no input is written over, nothing hangs, and every refusal is one `error:` line (exit 2), or one line per
skipped image (exit 1) while the others are written. Numbered as the issue's items."""

from __future__ import annotations

import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncnn_files import write_srvgg
from sdakd.cli import main
from sdakd.errors import SdakdError
from sdakd.models import SRVGGNetCompact, save_official
from sdakd.tracking.store import Store


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, err, *needles, exit_code=2):
    """One `error:` message (an invalid config's lists its fields on the lines under it), naming `needles`."""
    assert code == exit_code, err
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    message = err[err.index("error: "):]
    for needle in needles:
        assert needle in message, err


def photo(path: Path, height: int = 12, width: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    """A small official-format SRVGGNetCompact x4 (.pth): what upscale and export read without a training run."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("net") / "net.pth"
    save_official(SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4), path)
    return path


def upscale(capsys, net, *argv):
    return run_cli(capsys, "upscale", *argv, "--model", net, "--device", "cpu")


class Payload:
    """Unpickling it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---------------------------------------------------------------- 1. no code from a .pt2


def rewritten(source: Path, target: Path, change) -> Path:
    """A copy of the zip archive `source` with each member's bytes passed through change(name, data)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, change(info.filename, old.read(info.filename)))
    return target


def test_a_saved_program_is_never_loaded_so_its_code_never_runs(capsys, net, tmp_path):
    program = tmp_path / "net.pt2"
    assert run_cli(capsys, "export", net, "--format", "exported-program", "--out", program)[0] == 0
    marker = tmp_path / "pwned"

    def pickled_weight(name: str, data: bytes) -> bytes:  # one weight switched to pickle storage
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        return pickle.dumps(Payload(marker)) if name.endswith("weights/weight_0") else data

    def evaluated_shape(name: str, data: bytes) -> bytes:  # a shape expression sympy evaluates as Python
        if not name.endswith("models/model.json"):
            return data
        code = f"__import__('pathlib').Path('{marker}').touch() or Symbol"
        return data.replace(b'"expr_str": "Symbol', f'"expr_str": "{code}'.encode(), 1)

    image = photo(tmp_path / "a.png")
    for change in (pickled_weight, evaluated_shape):
        evil = rewritten(program, tmp_path / f"{change.__name__}.pt2", change)
        code, _, err = upscale(capsys, evil, image, "--out", tmp_path / "out")
        assert_one_error(code, err, f"{evil}: sdakd does not load saved torch.export programs", "run code")
        assert not marker.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 3, 4. never over an input, never inside a folder read


def test_upscale_never_writes_over_an_input_or_inside_a_folder_it_reads(capsys, net, tmp_path):
    nest = tmp_path / "nest"
    photo(nest / "a.png", seed=1)
    inner = photo(nest / "x" / "a.png", seed=2)
    original = inner.read_bytes()
    code, _, err = upscale(capsys, net, nest, "--out", nest / "x")
    assert_one_error(code, err, f"--out {nest / 'x'} is inside {nest}, a folder this command reads")
    assert inner.read_bytes() == original and not (nest / "x" / "x").exists()

    # an output folder that holds a hard link to the input, or a symbolic link to it
    for link in (os.link, os.symlink):
        out = tmp_path / f"out-{link.__name__}"
        out.mkdir()
        link(inner, out / "a.png")
        code, _, err = upscale(capsys, net, inner, "--out", out)
        assert_one_error(code, err, f"{inner}: its output {out / 'a.png'} would overwrite it")
        assert inner.read_bytes() == original
    # an input folder inside the output folder: an image of its subfolder would be written into the folder read
    photo(nest / "x" / "x" / "b.png")
    code, _, err = upscale(capsys, net, nest / "x", "--out", nest)
    assert_one_error(code, err, f"its output {nest / 'x' / 'b.png'} would be inside {nest / 'x'}, a folder this "
                     "command reads")  # fmt: skip
    assert inner.read_bytes() == original and not (nest / "x" / "b.png").exists()


# ---------------------------------------------------------------- 6. bounded error messages, no alias bombs


@pytest.mark.timeout(60)
def test_a_huge_value_or_deep_key_is_one_short_error_at_once(capsys, tmp_path):
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--set", "method=" + "m" * 100_000)
    assert_one_error(code, err, "unknown method 'mmm", "(100,002 characters)")
    assert len(err) < 1000
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--set", ".".join(["a"] * 500) + "=1")
    assert_one_error(code, err, "its path has 500 parts; config paths have at most 16")
    big = tmp_path / "big.yaml"
    big.write_text("preset: tiny\nmethod: " + "m" * 1_000_000 + "\n")
    code, _, err = run_cli(capsys, "train", "--config", big)
    assert_one_error(code, err, "unknown method 'mmm")
    assert len(err) < 1000
    assert time.perf_counter() - started < 20  # main took 51 s on the first alone (a quadratic regex)


def billion_laughs(levels: int = 9) -> str:
    lines = ["preset: tiny", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join([*lines, f"data: {{scale: *l{levels - 1}}}"]) + "\n"


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_before_validation_and_fair_anchors_load(capsys, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())  # 9**9 values once expanded, from a few hundred bytes
    assert len(bomb.read_bytes()) < 600
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "--config", bomb)
    assert_one_error(code, err, f"config file {bomb}: the value on line", "more than 10,000 values", "alias bomb")
    loop = tmp_path / "loop.yaml"
    loop.write_text("preset: tiny\ndata: &d {scale: *d}\n")
    assert_one_error(*run_cli(capsys, "train", "--config", loop)[::2], "names a value that contains it")
    assert time.perf_counter() - started < 10
    fair = tmp_path / "fair.yaml"  # anchors and merges as configs use them
    fair.write_text("preset: tiny\nshort: &short {iters: 3}\nstages:\n  s1: *short\n  s2: {<<: *short, iters: 4}\n")
    from sdakd.config.load import read_yaml

    assert read_yaml(fair)["stages"] == {"s1": {"iters": 3}, "s2": {"iters": 4}}


def test_torch_refusal_reads_as_one_sentence_without_its_advice(capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "config.yaml").write_text("preset: tiny\n")
    torch.save({"body.0.weight": Shell()}, tmp_path / "student.pt")
    code, _, err = run_cli(capsys, "eval", tmp_path / "student.pt")
    assert_one_error(code, err, "(refused to load it): Trying to load unsupported GLOBAL posix.system whose module "
                     "posix is blocked.")  # fmt: skip
    assert "Re-running" not in err and "Do it only" not in err and "weights_only" not in err, err
    assert not marker.exists()


# ---------------------------------------------------------------- 7, 8, 9. no hang, no dropped frames, no crash


@pytest.mark.timeout(60)
def test_a_fifo_named_like_an_image_is_refused_and_one_in_a_folder_skipped(capsys, net, tmp_path):
    os.mkfifo(tmp_path / "x.png")  # opening it for reading would wait for a writer forever
    code, _, err = upscale(capsys, net, tmp_path / "x.png", "--out", tmp_path / "out")
    assert_one_error(code, err, f"{tmp_path / 'x.png'} is a FIFO, not an image file")
    folder = tmp_path / "folder"
    photo(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    code, _, err = upscale(capsys, net, folder, "--out", tmp_path / "out")
    assert code == 0 and f"skipped {folder / 'pipe.png'}: a FIFO, not a regular file" in err, err
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "pipe.png").exists()


def test_an_animation_is_refused_not_cut_to_its_first_frame(capsys, net, tmp_path):
    frames = [Image.open(photo(tmp_path / f"f{i}.png", seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=100)  # APNG
    code, _, err = upscale(capsys, net, tmp_path / "anim.gif", tmp_path / "anim.png", tmp_path / "f0.png",
                           "--out", tmp_path / "out")  # fmt: skip
    assert code == 1, err
    for name in ("anim.gif", "anim.png"):
        assert f"{tmp_path / name}: an animation or multi-page file of 3 frames" in err, err
        assert not (tmp_path / "out" / name).exists()
    assert Image.open(tmp_path / "out" / "f0.png").size == (64, 48)


def test_an_image_too_large_for_memory_is_skipped_and_the_others_written(capsys, net, tmp_path, monkeypatch):
    import sdakd.ship.upscale

    monkeypatch.setattr(sdakd.ship.upscale, "available_memory", lambda: 16 * 2**30)  # a 16 GiB machine, idle
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (9000, 9000)).save(folder / "a-huge.png")  # under Pillow's bomb limit; 36000^2 at x4
    photo(folder / "b-small.png")
    code, _, err = upscale(capsys, net, folder, "--out", tmp_path / "out")
    # 9000^2 * 32 + 36000^2 * 52 bytes for the image, and one 576 px tile's layers: about 70 GB
    assert_one_error(code, err, f"{folder / 'a-huge.png'}: 9000x9000 upscaled x4 needs about 70.",
                     "GB of memory and 17.2 GB are available; skipped", exit_code=1)  # fmt: skip
    assert not (tmp_path / "out" / "a-huge.png").exists()
    assert Image.open(tmp_path / "out" / "b-small.png").size == (64, 48)


# ---------------------------------------------------------------- 10. one line, never a traceback


@pytest.fixture
def ncnn(tmp_path):
    torch.manual_seed(0)
    param, weights = tmp_path / "g.param", tmp_path / "g.bin"
    write_srvgg(SRVGGNetCompact(num_feat=8, num_conv=3), param, weights)
    return param, weights


def test_teacher_import_of_bad_files_and_outputs_is_one_error(capsys, ncnn, tmp_path):
    param, weights = ncnn
    text = param.read_text()
    original = param.read_bytes()

    def imported(param_file, bin_file, out):
        return run_cli(capsys, "teacher", "import", param_file, bin_file, "--arch", "srvgg_compact", "--out", out)

    assert_one_error(*imported(weights, param, tmp_path / "t.pth")[::2], f"{weights}: not an ncnn .param file",
                     "is it the .bin?")  # fmt: skip
    latin1 = tmp_path / "latin1.param"
    latin1.write_bytes(text.replace("Input", "Entrée", 1).encode("latin-1"))
    assert_one_error(*imported(latin1, weights, tmp_path / "t.pth")[::2], "not an ncnn .param file")
    for width in ("-8", "8.5", "0"):
        bad = tmp_path / f"w{width}.param"
        bad.write_text(text.replace(" 0=8 ", f" 0={width} ", 1))
        code, _, err = imported(bad, weights, tmp_path / "t.pth")
        assert_one_error(code, err, f"{bad}: not an ncnn srvgg_compact: num_feat {width}", "a whole number >= 1")
    (tmp_path / "folder").mkdir()
    assert_one_error(*imported(param, weights, tmp_path / "folder")[::2], "is a folder; name the file to write")
    assert_one_error(*imported(param, weights, param)[::2], f"--out {param} is the input {param}")
    os.link(param, tmp_path / "hard.param")
    assert_one_error(*imported(param, weights, tmp_path / "hard.param")[::2], "is the input")
    assert param.read_bytes() == original and not (tmp_path / "t.pth").exists()
    assert imported(param, weights, tmp_path / "t.pth")[0] == 0 and (tmp_path / "t.pth").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_onto_unwritable_places_is_one_error(capsys, net, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder.pt2").mkdir()
    cases = {tmp_path / "file" / "x.pt2": f"{tmp_path / 'file'} is a file, not a folder",
             Path("/proc/sdakd.pt2"): "cannot write there", tmp_path / "folder.pt2": "is a folder"}  # fmt: skip
    for out, needle in cases.items():
        code, _, err = run_cli(capsys, "export", net, "--format", "exported-program", "--out", out)
        assert_one_error(code, err, f"--out {out}", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.pt2"]


def test_a_device_torch_does_not_know_is_one_error(capsys, net, tmp_path):
    for device in ("cuda:abc", "gpu"):
        code, _, err = run_cli(capsys, "upscale", photo(tmp_path / "a.png"), "--model", net, "--out",
                               tmp_path / "out", "--device", device)  # fmt: skip
        assert_one_error(code, err, f"--device '{device}'")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--set", "run.device=cuda:abc",
                           "--set", f"run.cache_dir={tmp_path}", "--set", f"run.out_dir={tmp_path / 'run'}")
    assert_one_error(code, err, "device 'cuda:abc' is not a device torch knows")


def test_a_group_name_with_quotes_finds_its_parent_run(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.experiment("quotes")
    for name in ("it's", 'say "hi"'):  # a grid file's name, e.g. ablations/it's.yaml
        first = store.parent(experiment, "grid", name)
        assert store.parent(experiment, "grid", name) == first
        assert store.find_parent("quotes", "grid", name) == first
    with pytest.raises(SdakdError, match="holds both ' and \""):
        store.parent(experiment, "grid", "it's \"both\"")
