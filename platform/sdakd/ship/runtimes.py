"""What runs a shipped network: PyTorch eager, or onnxruntime on an .onnx file.

A saved torch.export program (.pt2, what `sdakd export --format exported-program` writes) is refused:
torch.export.load unpickles weights stored as pickles and evaluates the shape expressions in the file with sympy
(Python's eval), so a .pt2 can run any code, and torch has no mode that loads one without either.

Every runtime maps a float32 NCHW RGB batch in [0, 1] (on the CPU) to the same at `scale` times the size; its
output is not clamped (Real-ESRGAN's convention: clamp when writing pixels).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sdakd.errors import SdakdError
from sdakd.ship.networks import network, scale_of, side_multiple

DEPLOY_EXTRA = 'pip install "sdakd[deploy]"'
INPUT, OUTPUT = "input", "output"  # the exported models' tensor names
META_FILE = "sdakd.json"  # an exported program's extra file: {"scale": .., "multiple": .., ...}; ONNX: sdakd.<key>
FOREIGN_MULTIPLE = 4  # an .onnx without our metadata: sides padded to a multiple that every Real-ESRGAN net takes


def optional(module: str) -> ModuleType:
    """An optional package of the `deploy` extra, or one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SdakdError(f"{module} is not installed: it comes with the deploy extra ({DEPLOY_EXTRA})") from None


@dataclass
class Upscaler:
    """A network ready to apply: `forward` maps (N, 3, h, w) to (N, 3, scale*h, scale*w), CPU tensors in and out;
    h and w must be multiples of `multiple`."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    multiple: int
    name: str
    tile_bytes: float = 0.0  # working memory per output pixel of a tile, where known (PyTorch networks)


def torch_upscaler(net: nn.Module, device: torch.device, bf16: bool = False, name: str = "") -> Upscaler:
    net = net.to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast("cuda", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return net(x.to(device)).float().cpu()

    scale, multiple = scale_of(net), side_multiple(net)
    return Upscaler(forward, scale, multiple, name or type(net).__name__, layer_bytes(net, device, multiple, scale))


def layer_bytes(net: nn.Module, device: torch.device, multiple: int, scale: int) -> float:
    """Float32 bytes per output pixel that `net`'s largest layer holds at once (its inputs and output), measured on
    a small probe: the part of a tile's working memory that grows with the tile."""
    side, largest = 8 * multiple, 0

    def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal largest
        largest = max(largest, sum(t.numel() for t in (*inputs, output) if isinstance(t, torch.Tensor)))

    hooks = [m.register_forward_hook(record) for m in net.modules() if not any(m.children())]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 3, side, side, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return 4 * largest / (side * scale) ** 2


def onnx_upscaler(path: Path, device: torch.device, threads: int | None = None) -> Upscaler:
    ort = optional("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning: spinning ones hold cores that the rest of the process (PyTorch
    # next to it, the next tile's reading) needs; a conv-heavy graph loses nothing measurable by it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    if providers[0] not in ort.get_available_providers():
        raise SdakdError(f"{path}: onnxruntime here has no {providers[0]} (has {ort.get_available_providers()})")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for any bad file
        raise SdakdError(f"{path}: onnxruntime cannot load it ({' '.join(str(err).split())[:300]})") from None
    names = session.get_inputs()[0].name, session.get_outputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([names[1]], {names[0]: x.float().numpy()})[0])

    meta = {k.removeprefix("sdakd."): v for k, v in session.get_modelmeta().custom_metadata_map.items()}
    return _with_meta(forward, meta, f"onnxruntime {path.name}")


def _with_meta(forward: Callable[[torch.Tensor], torch.Tensor], meta: Mapping[str, Any], name: str) -> Upscaler:
    """An exported model's scale and side multiple from its metadata, else the scale measured on a small input."""
    multiple = int(meta.get("multiple", FOREIGN_MULTIPLE))
    scale = int(meta["scale"]) if "scale" in meta else forward(torch.zeros(1, 3, 16, 16)).shape[-1] // 16
    return Upscaler(forward, scale, multiple, name)


def load_upscaler(
    path: Path, device: torch.device, bf16: bool = False, arch: str | None = None, params: Mapping[str, Any] = ()
) -> Upscaler:
    """The runtime for `path`: .onnx -> onnxruntime, else a PyTorch network (a .pt2 is refused, see above)."""
    path = Path(path)
    if path.suffix == ".pt2":
        raise SdakdError(f"{path}: sdakd does not load saved torch.export programs: torch.export.load can run code "
                         "a .pt2 carries (pickled weights, shape expressions it evaluates); upscale with the run "
                         "folder, its student.pt or an .onnx export")
    exported = path.suffix == ".onnx"
    if bf16 and (device.type != "cuda" or exported):
        raise SdakdError(f"--bf16 applies to PyTorch networks on a CUDA device (got {device.type}, {path.name})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SdakdError(f"--device {device}: torch sees no CUDA device here; use --device cpu (or auto)")
    if exported and not path.is_file():
        raise SdakdError(f"{path} does not exist")
    if exported:
        return onnx_upscaler(path, device)
    return torch_upscaler(network(path, arch, params), device, bf16, name=path.name)
