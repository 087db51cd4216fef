"""Networks: exact official layouts, width scaling, checkpoint round trips and refusals, feature taps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from sdakd.errors import SdakdError
from sdakd.evaluate import count_params
from sdakd.models import (
    DISCRIMINATORS,
    GENERATORS,
    FeatureTaps,
    RRDBNet,
    SRVGGNetCompact,
    UNetDiscriminatorSN,
    build_discriminator,
    build_generator,
    feature_channels,
    load_weights,
    pair_taps,
    save_official,
)

SMALL_G = dict(num_feat=8, num_grow_ch=4, num_block=2)


def test_official_parameter_counts() -> None:
    assert count_params(RRDBNet()) == 16_697_987
    assert count_params(UNetDiscriminatorSN()) == 4_376_897


def test_official_key_names() -> None:
    keys = set(RRDBNet(**SMALL_G).state_dict())
    assert {"conv_first.weight", "body.0.rdb1.conv1.weight", "body.1.rdb3.conv5.bias", "conv_body.weight",
            "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.bias"} <= keys
    srvgg_keys = set(SRVGGNetCompact(num_feat=4, num_conv=2).state_dict())
    assert {"body.0.weight", "body.1.weight", "body.6.bias"} <= srvgg_keys


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdbnet_shapes(scale: int) -> None:
    model = RRDBNet(scale=scale, **SMALL_G)
    assert model.conv_first.in_channels == 3 * (4 // scale) ** 2
    assert model(torch.rand(2, 3, 8, 12)).shape == (2, 3, 8 * scale, 12 * scale)


def test_discriminator_shape() -> None:
    model = UNetDiscriminatorSN(num_feat=8)
    assert model(torch.rand(2, 3, 24, 40)).shape == (2, 1, 24, 40)
    with pytest.raises(SdakdError, match="divisible by 8"):
        model(torch.rand(1, 3, 20, 24))


def test_srvgg_shape() -> None:
    model = SRVGGNetCompact(num_feat=8, num_conv=4, upscale=4)
    assert model(torch.rand(1, 3, 6, 10)).shape == (1, 3, 24, 40)
    assert model.tap_points() == ["body.1", "body.3", "body.5", "body.7", "body.9"]
    assert model.tap_points(2) == ["body.3", "body.7", "body.9"]


def test_registries_and_width_scaling() -> None:
    assert GENERATORS.names() == ["gcfsr", "rrdbnet", "srvgg_compact"]
    assert DISCRIMINATORS.get("unet_sn") is UNetDiscriminatorSN
    student = build_generator("rrdbnet", width=0.125, num_block=2)
    assert (student.conv_first.out_channels, student.body[0].rdb1.conv1.out_channels) == (8, 4)
    assert build_generator("rrdbnet", width=0.5, num_feat=32, num_grow_ch=16, num_block=1).conv_body.out_channels == 16
    assert build_generator("srvgg_compact", width=0.25, num_conv=2).body[0].out_channels == 16
    assert build_discriminator("unet_sn", width=0.5).conv0.out_channels == 32
    assert build_discriminator("unet_sn", width=0.001).conv0.out_channels == 1
    with pytest.raises(SdakdError, match="known: gcfsr, rrdbnet, srvgg_compact"):
        build_generator("swinir")
    with pytest.raises(SdakdError, match="num_blocks"):
        build_generator("rrdbnet", num_blocks=6)


def test_generator_round_trip(tmp_path: Path) -> None:
    model = RRDBNet(scale=2, **SMALL_G)
    path = tmp_path / "g.pth"
    save_official(model, path)
    assert list(torch.load(path, weights_only=True)) == ["params_ema"]
    fresh = load_weights(RRDBNet(scale=2, **SMALL_G), path)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_discriminator_round_trip(tmp_path: Path) -> None:
    model = UNetDiscriminatorSN(num_feat=8)
    model(torch.rand(2, 3, 16, 16))  # a train-mode forward moves the spectral-norm vectors off their init
    path = tmp_path / "d.pth"
    save_official(model, path, key="params")
    state = torch.load(path, weights_only=True)["params"]
    assert {"conv1.weight_orig", "conv1.weight_u", "conv1.weight_v", "conv0.weight", "conv9.bias"} <= set(state)
    assert not any("parametrizations" in k for k in state)
    fresh = load_weights(UNetDiscriminatorSN(num_feat=8), path).eval()
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(fresh(x), model.eval()(x), rtol=0, atol=0)


def test_discriminator_loads_legacy_spectral_norm(tmp_path: Path) -> None:
    """A state dict written by torch.nn.utils.spectral_norm (as the official netD is) gives the same weights."""
    model = UNetDiscriminatorSN(num_feat=4)
    state, legacy = {}, {}
    for name, conv in model.named_children():
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 1,
                          bias=name in ("conv0", "conv9"))
        if name not in ("conv0", "conv9"):
            plain = torch.nn.utils.spectral_norm(plain)
            plain(torch.rand(1, conv.in_channels, 8, 8))  # one power iteration in train mode
            legacy[name] = plain.eval()
        state.update({f"{name}.{k}": v for k, v in plain.state_dict().items()})
    assert "conv3.weight_orig" in state and "conv3.weight_u" in state and "conv3.weight_v" in state
    path = tmp_path / "netD.pth"
    torch.save({"params": state}, path)
    load_weights(model, path).eval()
    for name, plain in legacy.items():
        plain(torch.rand(1, plain.in_channels, 8, 8))  # eval forward: legacy weight from the stored u, v
        torch.testing.assert_close(getattr(model, name).weight, plain.weight)


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "half.pth"
    save_official(RRDBNet(num_feat=4, num_grow_ch=2, num_block=2), path)
    with pytest.raises(SdakdError, match=r"half\.pth.*conv_first\.weight expected \(8, 3, 3, 3\) found \(4, 3, 3, 3\)"):
        load_weights(RRDBNet(**SMALL_G), path)
    deeper = tmp_path / "deeper.pth"
    torch.save(RRDBNet(num_feat=8, num_grow_ch=4, num_block=3).state_dict(), deeper)
    with pytest.raises(SdakdError, match=r"unexpected body\.2\.rdb1\.conv1\.weight.*wrong architecture"):
        load_weights(RRDBNet(**SMALL_G), deeper)
    with pytest.raises(SdakdError, match="missing conv_first.weight"):
        load_weights(RRDBNet(**SMALL_G), _saved_d(tmp_path))


def _saved_d(tmp_path: Path) -> Path:
    path = tmp_path / "d.pth"
    save_official(UNetDiscriminatorSN(num_feat=4), path)
    return path


class Payload:
    """Unpickling this runs os.mkdir(marker): the marker appears only if code was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": Payload(marker)}, path)
    with pytest.raises(SdakdError, match="evil.pth: not a plain weights file; refusing to unpickle code"):
        load_weights(RRDBNet(**SMALL_G), path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a trusting load does run it
    assert marker.exists()


def test_feature_taps_shapes_and_removal() -> None:
    model = RRDBNet(num_feat=8, num_grow_ch=4, num_block=4)
    names = model.tap_points(every=2)
    assert names == ["body.1", "body.3", "conv_body"]
    with FeatureTaps(model, names) as taps:
        model(torch.rand(2, 3, 6, 10))
        assert {n: tuple(t.shape) for n, t in taps.features.items()} == {n: (2, 8, 6, 10) for n in names}
        model(torch.rand(1, 3, 4, 4))  # a new forward replaces the old outputs
        assert taps.features["body.1"].shape == (1, 8, 4, 4)
    assert not model._forward_pre_hooks and not any(m._forward_hooks for m in model.modules())
    taps.features.clear()
    model(torch.rand(1, 3, 4, 4))
    assert taps.features == {}
    with pytest.raises(SdakdError, match="no module 'body.9'.*body"):
        FeatureTaps(model, ["body.9"])


def test_feature_channels_keeps_state() -> None:
    srvgg = SRVGGNetCompact(num_feat=6, num_conv=2)
    assert feature_channels(srvgg, "body.3") == 6
    disc = UNetDiscriminatorSN(num_feat=4)
    u = disc.conv1.parametrizations.weight[0]._u.clone()
    assert feature_channels(disc, "conv1") == 8
    assert feature_channels(RRDBNet(**SMALL_G), "body.1") == 8
    assert disc.training and torch.equal(u, disc.conv1.parametrizations.weight[0]._u)


def test_pair_taps_by_relative_depth() -> None:
    teacher = RRDBNet(num_feat=2, num_grow_ch=1, num_block=23)
    student = RRDBNet(num_feat=2, num_grow_ch=1, num_block=6)
    pairs = pair_taps(teacher, student, every=1)
    assert len(pairs) == len(student.tap_points(1)) == 7
    assert pairs == [("body.3", "body.0"), ("body.7", "body.1"), ("body.11", "body.2"), ("body.14", "body.3"),
                     ("body.18", "body.4"), ("body.22", "body.5"), ("conv_body", "conv_body")]
    assert pair_taps(teacher, student, every=2) == [
        ("body.7", "body.1"), ("body.14", "body.3"), ("body.22", "body.5"), ("conv_body", "conv_body")]
    assert pair_taps(teacher, student, every=4) == [
        ("body.14", "body.3"), ("body.22", "body.5"), ("conv_body", "conv_body")]
