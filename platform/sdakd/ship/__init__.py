"""Shipping a trained network: apply it to image files, export it (ONNX, torch.export), find what runs it.

`networks` builds the PyTorch network behind a path (a student's run, an official .pth); `runtimes` wraps it or an
.onnx file into one `Upscaler` (a saved torch.export program is written, never loaded); `tiling` applies one to any
image size; `images` reads and writes files; `outputs` says where each goes, never onto an input; `upscale` and
`export` are the commands' routines, `commands` their parsers. The MLflow model of a student lives in
`sdakd.tracking.model` (MLflow stays in tracking/).
"""

ARCHS = ("rrdbnet", "srvgg_compact")  # the families shipped: fully convolutional, any input size, unconditioned
