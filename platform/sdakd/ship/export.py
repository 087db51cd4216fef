"""`sdakd export`: a student or teacher-family network as an ONNX file or a saved torch.export program.

Both take `input` (N, 3, H, W) float32 RGB in [0, 1], with N, H and W dynamic (H and W multiples of the
network's side step: 1, or 2/4 for RRDBNet at scale 2/1), and give `output` (N, 3, s*H, s*W), not clamped.
Before a file is reported written, it is run (onnxruntime for ONNX) and compared with PyTorch on random inputs
of two sizes and on a real photograph; a difference above TOLERANCE fails and leaves no file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from sdakd.errors import SdakdError
from sdakd.files import output_file
from sdakd.ship.networks import network, scale_of, side_multiple
from sdakd.ship.runtimes import INPUT, META_FILE, OUTPUT, onnx_upscaler, optional

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
OPSET = 18  # ONNX opset of the exported graph (onnxruntime >= 1.14 runs it)
TOLERANCE = 1e-3  # largest |exported - PyTorch| accepted, on outputs in [0, 1]
EXAMPLE_SHAPE = (2, 3, 64, 64)  # the traced input (a batch of 1 or a side of 1 would be fixed in the graph)


def check_format(fmt: str, out: Path) -> None:
    if fmt not in FORMATS:
        raise SdakdError(f"--format {fmt!r}: allowed {', '.join(FORMATS)}")
    if out.suffix != FORMATS[fmt]:
        raise SdakdError(f"--out {out}: a {fmt} file ends in {FORMATS[fmt]}")
    if fmt == "onnx":
        for module in ("onnx", "onnxruntime", "onnxscript"):
            optional(module)


def check_inputs(step: int) -> dict[str, torch.Tensor]:
    """Random inputs at two sizes and a crop of a real photograph (scikit-image's astronaut), sides in `step`s."""
    from skimage import data

    gen = torch.Generator().manual_seed(0)
    photo = torch.from_numpy(data.astronaut()[100:164, 180:260].astype(np.float32) / 255).permute(2, 0, 1)[None]
    return {
        f"random 1x3x{step * 16}x{step * 16}": torch.rand(1, 3, step * 16, step * 16, generator=gen),
        f"random 2x3x{step * 12}x{step * 20}": torch.rand(2, 3, step * 12, step * 20, generator=gen),
        "photo 1x3x64x80": photo,
    }


def _dynamic(step: int) -> dict[int, Any]:
    """Batch, height and width dynamic; sides in multiples of `step`, at least 2 of them (1 would be fixed)."""
    dim = torch.export.Dim
    height, width = dim("height", min=2), dim("width", min=2)
    return {0: dim("batch", min=1), 2: height * step if step > 1 else height, 3: width * step if step > 1 else width}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """No warnings, and no INFO line per optimiser pass (onnxscript, onnx_ir), while torch exports to ONNX."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def write_onnx(net: nn.Module, out: Path, meta: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write `net` to `out` as ONNX; onnxruntime running the written file."""
    onnx = optional("onnx")
    optional("onnxscript")  # torch's ONNX exporter is built on it
    with _quiet_exporter():
        torch.onnx.export(
            net, (torch.rand(EXAMPLE_SHAPE),), str(out), input_names=[INPUT], output_names=[OUTPUT],
            opset_version=OPSET, dynamo=True, dynamic_shapes=(_dynamic(side_multiple(net)),), external_data=False,
            verbose=False,
        )
    model = onnx.load(str(out))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"sdakd.{key}", str(value)
    onnx.save(model, str(out))
    return onnx_upscaler(out, torch.device("cpu")).forward


def write_program(net: nn.Module, out: Path, meta: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write `net` to `out` as a saved torch.export program; the program loaded back from the bytes written (this
    process made them: sdakd loads no .pt2 file, see runtimes.load_upscaler)."""
    program = torch.export.export(net, (torch.rand(EXAMPLE_SHAPE),), dynamic_shapes=(_dynamic(side_multiple(net)),))
    saved = io.BytesIO()
    torch.export.save(program, saved, extra_files={META_FILE: json.dumps(dict(meta))})
    out.write_bytes(saved.getvalue())
    saved.seek(0)
    return torch.export.load(saved).module()


def export_model(
    source: Path, fmt: str, out: Path, arch: str | None = None, params: Mapping[str, Any] = ()
) -> dict[str, float]:
    """Write `source`'s network to `out` in `fmt`, check it against PyTorch; the max abs difference per input."""
    check_format(fmt, out)
    net = network(Path(source), arch, params).float().cpu()
    step = side_multiple(net)
    meta = {"scale": scale_of(net), "multiple": step, "arch": type(net).__name__, "source": Path(source).name}
    with output_file(out, [Path(source)]) as partial:
        exported = (write_onnx if fmt == "onnx" else write_program)(net, partial, meta)
        differences = {}
        with torch.inference_mode():
            for name, x in check_inputs(step).items():
                differences[name] = (exported(x) - net(x)).abs().max().item()
        worst = max(differences.values())
        if not worst <= TOLERANCE:  # the partial file is removed, an existing `out` kept
            raise SdakdError(f"{out}: the exported model differs from PyTorch by {worst:.3g} (> {TOLERANCE}); "
                             "not written")
    return differences
