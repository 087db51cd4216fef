"""Import Real-ESRGAN generators from ncnn files (`.param` layer list + `.bin` blobs) as official state dicts.

The `.param` is checked layer by layer against the architecture its first layers imply (RRDBNet: conv_first's
width, the growth channels, the block count; SRVGGNetCompact: width, conv count, upscale): kernel sizes, channel
counts, activations (LeakyReLU 0.2 fused into convs, or PReLU), the 0.2 residual scalings, the nearest upsampling
and the pixel shuffle. The first difference is an error. Blobs are read in layer order: a conv's weights carry a
4-byte storage tag (fp16 0x01306B47, or 0 for fp32), its bias and PReLU slopes are raw fp32 (ncnn's ModelBin).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdakd.errors import SdakdError

MAGIC = 7767517
FP16_TAG, FP32_TAG = 0x01306B47, 0
SKIPPED = {"Input", "Split", "Concat"}  # plumbing: the concat pattern shows in each conv's input channels
ARCHS = ("rrdbnet", "srvgg_compact")
ARRAY_KEY = -23300  # a key -23300 - k holds param k as an array: count, values...
# ncnn's defaults for the params a file may leave out (Convolution: dilation, stride, pad, bias, activation).
DEFAULTS = {"Convolution": {2: 1, 3: 1, 4: 0, 5: 0, 9: 0}, "BinaryOp": {0: 0}}


@dataclass
class Layer:
    type: str
    name: str
    line: int
    params: dict[int, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.type} {self.name} (line {self.line})"


@dataclass(frozen=True)
class Op:
    """A layer the architecture expects, and the state-dict key prefix its blobs belong to."""

    type: str
    attrs: tuple[tuple[int, Any], ...]
    key: str | None = None
    what: str = ""


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def read_param(path: Path) -> list[Layer]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SdakdError(f"{path}: not an ncnn .param file ({err.reason} at byte {err.start}: not text; is it the "
                         ".bin? name the .param first)") from None
    lines = [ln.split() for ln in text.splitlines()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise SdakdError(f"{path}: not an ncnn .param file (the first line must be the magic {MAGIC})")
    layers = []
    for number, words in enumerate(lines[2:], start=3):
        if not words:
            continue
        try:
            kind, name, n_in, n_out = words[0], words[1], int(words[2]), int(words[3])
            params: dict[int, Any] = {}
            for item in words[4 + n_in + n_out :]:
                key, value = item.split("=", 1)
                k = int(key)
                if k <= ARRAY_KEY:
                    params[ARRAY_KEY - k] = [_number(v) for v in value.split(",")[1:]]
                else:
                    params[k] = _number(value)
        except (IndexError, ValueError):
            raise SdakdError(f"{path}: line {number} is not an ncnn layer: {' '.join(words)[:120]}") from None
        layers.append(Layer(kind, name, number, params))
    return layers


def _fuse_activations(layers: list[Layer]) -> list[Layer]:
    """A standalone ReLU/LeakyReLU after a conv, as ncnnoptimize would fuse it (activation 1 or 2, slope)."""
    fused: list[Layer] = []
    for layer in layers:
        if layer.type == "ReLU" and fused and fused[-1].type == "Convolution" and not fused[-1].params.get(9):
            slope = layer.params.get(0, 0.0)
            fused[-1].params |= {9: 2, 10: [slope]} if slope else {9: 1}
            continue
        fused.append(layer)
    return fused


def conv(c_in: int, c_out: int, key: str, act: float | None = None) -> Op:
    """A 3x3, stride 1, pad 1 conv with bias; `act`: a fused LeakyReLU slope (0: ReLU)."""
    activation = ((9, 0),) if act is None else ((9, 2), (10, [act])) if act else ((9, 1),)
    attrs = ((0, c_out), (1, 3), (2, 1), (3, 1), (4, 1), (5, 1), (6, c_out * c_in * 9), *activation)
    return Op("Convolution", attrs, key, f"conv {c_in}->{c_out} 3x3" + ("" if act is None else f" + act {act}"))


def residual(what: str) -> Op:
    return Op("Eltwise", ((0, 1), (1, [0.2, 1.0])), None, f"{what}: 0.2 x branch + input")


def nearest(factor: int) -> Op:
    return Op("Interp", ((0, 1), (1, float(factor)), (2, float(factor))), None, f"nearest upsampling x{factor}")


ADD = Op("BinaryOp", ((0, 0),), None, "add")


def rrdbnet_ops(num_feat: int, num_block: int, num_grow_ch: int) -> list[Op]:
    f, g = num_feat, num_grow_ch
    ops = [conv(3, f, "conv_first")]
    for b in range(num_block):
        for r in (1, 2, 3):
            key = f"body.{b}.rdb{r}"
            ops += [conv(f + i * g, g, f"{key}.conv{i + 1}", 0.2) for i in range(4)]
            ops += [conv(f + 4 * g, f, f"{key}.conv5"), residual(f"{key} residual")]
        ops.append(residual(f"body.{b} residual"))
    ops += [conv(f, f, "conv_body"), ADD, nearest(2), conv(f, f, "conv_up1", 0.2), nearest(2)]
    return ops + [conv(f, f, "conv_up2", 0.2), conv(f, f, "conv_hr", 0.2), conv(f, 3, "conv_last")]


def srvgg_ops(num_feat: int, num_conv: int, upscale: int) -> list[Op]:
    ops = []
    for i in range(num_conv + 1):
        ops += [conv(3 if i == 0 else num_feat, num_feat, f"body.{2 * i}"),
                Op("PReLU", ((0, num_feat),), f"body.{2 * i + 1}", f"PReLU({num_feat})")]
    ops.append(conv(num_feat, 3 * upscale**2, f"body.{2 * num_conv + 2}"))
    return ops + [Op("PixelShuffle", ((0, upscale),), None, f"pixel shuffle x{upscale}"), nearest(upscale), ADD]


def infer_spec(arch: str, layers: list[Layer], path: Path) -> dict[str, int]:
    """The architecture's sizes as the file's layers state them (the full check follows)."""
    convs = [layer for layer in layers if layer.type == "Convolution"]
    try:
        if arch == "rrdbnet":
            blocks, rest = divmod(len(convs) - 6, 15)
            if rest or blocks < 1:
                raise ValueError(f"{len(convs)} convolutions is not 6 + 15 per RRDB")
            spec = {"num_feat": convs[0].params[0], "num_block": blocks, "num_grow_ch": convs[1].params[0]}
        elif arch == "srvgg_compact":
            shuffle = next(layer for layer in layers if layer.type == "PixelShuffle")
            spec = {"num_feat": convs[0].params[0], "num_conv": len(convs) - 2, "upscale": shuffle.params[0]}
        else:
            raise SdakdError(f"unknown architecture {arch!r} for the ncnn importer; known: {', '.join(ARCHS)}")
    except (IndexError, KeyError, StopIteration, ValueError) as err:
        raise SdakdError(f"{path}: not an ncnn {arch}: {err or 'missing layers'}") from None
    for name, size in spec.items():  # every count the layers are then checked against derives from these
        if not isinstance(size, int) or size < 1:
            raise SdakdError(f"{path}: not an ncnn {arch}: {name} {size}, where a size is a whole number >= 1")
    return spec


def expected_ops(arch: str, spec: dict[str, int]) -> list[Op]:
    return rrdbnet_ops(**spec) if arch == "rrdbnet" else srvgg_ops(**spec)


def _same(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return isinstance(found, list) and len(found) == len(wanted) and all(map(_same, found, wanted))
    return found is not None and abs(float(found) - float(wanted)) <= 1e-6 * max(1.0, abs(float(wanted)))


def check_structure(arch: str, spec: dict[str, int], layers: list[Layer], path: Path) -> list[tuple[Layer, Op]]:
    found = [layer for layer in _fuse_activations(layers) if layer.type not in SKIPPED]
    wanted = expected_ops(arch, spec)
    sizes = ", ".join(f"{k}={v}" for k, v in spec.items())
    for i, (layer, op) in enumerate(zip(found, wanted)):
        defaults = DEFAULTS.get(op.type, {})
        bad = [k for k, v in op.attrs if not _same(layer.params.get(k, defaults.get(k)), v)]
        if layer.type != op.type or bad:
            got = ", ".join(f"{k}={layer.params.get(k, defaults.get(k))}" for k in bad) if layer.type == op.type else ""
            raise SdakdError(
                f"{path}: layer {i + 1} {layer.describe()} does not fit {arch} ({sizes}): expected {op.type} "
                f"[{op.what}]{' (' + op.key + ')' if op.key else ''}; found {layer.type}" + (f" with {got}" if got else "")
            )
    if len(found) != len(wanted):
        tail = found[len(wanted)].describe() if len(found) > len(wanted) else "the end of the file"
        raise SdakdError(
            f"{path}: {len(found)} layers where {arch} ({sizes}) has {len(wanted)}; first difference at {tail}"
            + (" (a resize after the network: import the UP4X file, which holds the same weights)"
               if len(found) > len(wanted) and found[len(wanted)].type == "Interp" else "")
        )
    return list(zip(found, wanted))


class Blobs:
    """Sequential reads from a .bin, with offsets in every error."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.offset = path, Path(path).read_bytes(), 0

    def take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise SdakdError(
                f"{self.path}: truncated: {what} needs {size} bytes at offset {self.offset}, "
                f"the file has {len(self.data) - self.offset} left"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def tagged(self, count: int, what: str) -> np.ndarray:
        (tag,) = struct.unpack("<I", self.take(4, f"{what} storage tag"))
        if tag == FP16_TAG:
            values = np.frombuffer(self.take(count * 2, what), dtype="<f2")
            self.take((-count * 2) % 4, f"{what} padding")  # fp16 blobs are padded to 4 bytes
            return values.astype(np.float32)
        if tag == FP32_TAG:
            return self.raw(count, what)
        raise SdakdError(
            f"{self.path}: {what} at offset {self.offset - 4} has storage tag {tag:#010x}; this importer reads "
            f"fp16 ({FP16_TAG:#010x}) and fp32 (0) blobs, not int8 or quantized ones"
        )

    def raw(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(count * 4, what), dtype="<f4").copy()


def import_ncnn(param: Path | str, bin_path: Path | str, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The generator in `param`/`bin_path` as a state dict with the official key names, and its sizes."""
    param, bin_path = Path(param), Path(bin_path)
    if arch not in ARCHS:
        raise SdakdError(f"unknown architecture {arch!r} for the ncnn importer; known: {', '.join(ARCHS)}")
    layers = read_param(param)
    spec = infer_spec(arch, layers, param)
    blobs = Blobs(bin_path)
    state: dict[str, torch.Tensor] = {}
    for _, op in check_structure(arch, spec, layers, param):
        p = dict(op.attrs)  # the sizes the layer was checked to have, as whole numbers
        if op.type == "Convolution":
            out, k = p[0], p[1]
            weight = blobs.tagged(p[6], f"{op.key}.weight").reshape(out, p[6] // (out * k * k), k, k)
            state[f"{op.key}.weight"] = torch.from_numpy(weight)
            state[f"{op.key}.bias"] = torch.from_numpy(blobs.raw(out, f"{op.key}.bias"))
        elif op.type == "PReLU":
            state[f"{op.key}.weight"] = torch.from_numpy(blobs.raw(p[0], f"{op.key}.weight"))
    if blobs.offset != len(blobs.data):
        raise SdakdError(f"{bin_path}: {len(blobs.data) - blobs.offset} bytes left after the last blob: not {param}'s")
    return state, {"scale": 4, **spec} if arch == "rrdbnet" else spec
