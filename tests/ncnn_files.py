"""A small ncnn writer for the importer's tests: a torch RRDBNet or SRVGGNetCompact as `.param` + `.bin`, laid out
the way ncnn's own converters write them (Split layers for shared blobs, Concat for the dense connections, fused
LeakyReLU, Eltwise residuals), so that ncnn's runtime runs the files too."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from torch import nn

from sdakd.models.ncnn import FP16_TAG, MAGIC


class Graph:
    def __init__(self, fp16: bool) -> None:
        self.fp16 = fp16
        self.layers: list[list] = []  # type, name, bottoms, tops, params, blobs
        self.blob = "data"
        self.layers.append(["Input", "input.1", [], ["data"], "", b""])

    def add(self, kind: str, bottoms: list[str], params: str = "", blobs: bytes = b"") -> str:
        top = f"t{len(self.layers)}"
        self.layers.append([kind, f"{kind}_{len(self.layers)}", list(bottoms), [top], params, blobs])
        return top

    def conv(self, x: str, layer: nn.Conv2d, slope: float | None = None) -> str:
        w = layer.weight.detach().numpy().astype(np.float32)
        act = "" if slope is None else f" 9=2 -23310=1,{slope:e}"
        params = f"0={w.shape[0]} 1={w.shape[2]} 4={w.shape[2] // 2} 5=1 6={w.size}{act}"
        return self.add("Convolution", [x], params, self.tagged(w) + raw(layer.bias))

    def tagged(self, values: np.ndarray) -> bytes:
        if not self.fp16:
            return struct.pack("<I", 0) + values.astype("<f4").tobytes()
        data = values.astype("<f2").tobytes()
        return struct.pack("<I", FP16_TAG) + data + b"\0" * (-len(data) % 4)

    def write(self, output: str, param: Path, bin_path: Path) -> None:
        layers = self._with_splits(output)
        blobs = {t for layer in layers for t in layer[3]}
        lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"]
        for kind, name, bottoms, tops, params, _ in layers:
            lines.append(f"{kind:<24} {name:<24} {len(bottoms)} {len(tops)} {' '.join(bottoms + tops)} {params}".rstrip())
        param.write_text("\n".join(lines) + "\n")
        bin_path.write_bytes(b"".join(layer[5] for layer in layers))

    def _with_splits(self, output: str) -> list[list]:
        """Rename the final blob `output`; a blob read by several layers goes through a Split, as ncnn wants."""
        for layer in self.layers:
            layer[2] = ["output" if b == output else b for b in layer[2]]
            layer[3] = ["output" if t == output else t for t in layer[3]]
        readers: dict[str, list[tuple[int, int]]] = {}
        for i, layer in enumerate(self.layers):
            for j, bottom in enumerate(layer[2]):
                readers.setdefault(bottom, []).append((i, j))
        result = []
        for layer in self.layers:
            result.append(layer)
            for top in layer[3]:
                uses = readers.get(top, [])
                if len(uses) > 1:
                    copies = [f"{top}_splitncnn_{k}" for k in range(len(uses))]
                    for (i, j), copy in zip(uses, copies):
                        self.layers[i][2][j] = copy
                    result.append(["Split", f"split_{top}", [top], copies, "", b""])
        return result


def raw(values) -> bytes:
    return values.detach().numpy().astype("<f4").tobytes()


def write_rrdbnet(net, param: Path, bin_path: Path, fp16: bool = True) -> None:
    g = Graph(fp16)
    feat = g.conv("data", net.conv_first)
    h = feat
    for rrdb in net.body:
        block_in = h
        for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3):
            seen = [h]
            for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
                x = seen[0] if len(seen) == 1 else g.add("Concat", seen)
                seen.append(g.conv(x, conv, 0.2))
            x5 = g.conv(g.add("Concat", seen), rdb.conv5)
            h = g.add("Eltwise", [x5, seen[0]], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        h = g.add("Eltwise", [h, block_in], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    h = g.add("BinaryOp", [feat, g.conv(h, net.conv_body)])
    for up in (net.conv_up1, net.conv_up2):
        h = g.conv(g.add("Interp", [h], "0=1 1=2.000000e+00 2=2.000000e+00"), up, 0.2)
    out = g.conv(g.conv(h, net.conv_hr, 0.2), net.conv_last)
    g.write(out, param, bin_path)


def write_srvgg(net, param: Path, bin_path: Path, fp16: bool = True) -> None:
    g = Graph(fp16)
    h = "data"
    for layer in net.body:
        if isinstance(layer, nn.Conv2d):
            h = g.conv(h, layer)
        else:
            h = g.add("PReLU", [h], f"0={layer.num_parameters}", raw(layer.weight))
    h = g.add("PixelShuffle", [h], f"0={net.upscale}")
    base = g.add("Interp", ["data"], f"0=1 1={net.upscale:e} 2={net.upscale:e}")
    g.write(g.add("BinaryOp", [h, base]), param, bin_path)
