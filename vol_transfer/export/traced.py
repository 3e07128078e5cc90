"""TorchScript and ONNX files of the BN-folded inference model, and running them back.

The exported network is :func:`vol_transfer.inference.fusion.fuse_for_inference` of the
checkpoint's model: eval mode, the BatchNorms that follow a convolution folded into it — the model
``vol-transfer infer`` runs. Both files take ``(N, C, X, Y, Z)`` float32 (the prepared image, see
the checkpoint's ``preprocessing``) and return ``(N, K, X, Y, Z)`` logits; every axis but C is
dynamic, so one file serves any volume size.

TorchScript is traced (not scripted): HighRes3DNet has no data-dependent control flow, and the one
Python branch it has (``pad_channels``' "no padding needed") depends on layer widths only, which
are fixed. ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``), which needs the
``onnx`` package only (the newer exporter also needs onnxscript); it runs back through onnxruntime.

PyTorch 2.13 marks ``torch.jit`` deprecated in favour of ``torch.export``; TorchScript is still
what MONAI bundles (``models/model.ts``) and libtorch load, so it stays, and those warnings are
silenced here.

Example::

    model = inference_model(load_checkpoint("hippo.pt"))
    export_onnx(model, "out/model.onnx", in_channels=1)
    onnx_runner("out/model.onnx")(torch.randn(1, 1, 35, 51, 35)).shape   # (1, 3, 35, 51, 35)
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from vol_transfer.errors import CheckpointError, PathLike
from vol_transfer.inference.fusion import fuse_for_inference
from vol_transfer.io.atomic import atomic_path
from vol_transfer.transfer.checkpoint import Checkpoint, build_from_checkpoint

Runner = Callable[[torch.Tensor], torch.Tensor]
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# traced on a small cube: convolutions do not care about the size, and tracing a big one is slow
TRACE_SIZE = 16


def inference_model(checkpoint: Checkpoint) -> nn.Module:
    """The checkpoint's network, BN-folded, eval mode, float32 on the CPU (what ``infer`` runs)."""
    return fuse_for_inference(build_from_checkpoint(checkpoint).float().cpu())


def _example(in_channels: int) -> torch.Tensor:
    return torch.randn(1, in_channels, TRACE_SIZE, TRACE_SIZE, TRACE_SIZE, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    # the tracer warns about pad_channels' width check, a constant of the architecture (see module docstring)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=DeprecationWarning)
        yield


def _exportable(model: nn.Module, in_channels: int) -> nn.Module:
    """An eval-mode float32 CPU copy, refused in one line unless it maps volumes to volumes."""
    model = copy.deepcopy(model).eval().float().cpu()
    example = _example(in_channels)
    try:
        with torch.no_grad():
            output = model(example)
    except (RuntimeError, ValueError, TypeError) as error:
        output = error
    if not isinstance(output, torch.Tensor) or output.dim() != 5:
        raise CheckpointError(type(model).__name__, f"does not map (N, C, X, Y, Z) volumes to logits volumes "
                              f"({str(output).splitlines()[0][:120] if isinstance(output, Exception) else 'other output'})",
                              "export 3-D segmentation networks only")
    return model


def trace(model: nn.Module, in_channels: int) -> torch.jit.ScriptModule:
    """A traced TorchScript copy of ``model`` (eval mode, CPU, float32)."""
    model = _exportable(model, in_channels)
    with quiet_tracing(), torch.no_grad():
        return torch.jit.trace(model, _example(in_channels), check_trace=False)


def export_torchscript(model: nn.Module, path: PathLike, in_channels: int) -> Path:
    """Write ``model`` as a TorchScript file (``torch.jit.load`` reads it, no vol_transfer needed)."""
    traced = trace(model, in_channels)
    with atomic_path(path) as tmp, quiet_tracing():
        torch.jit.save(traced, str(tmp))
    return Path(path)


def export_onnx(model: nn.Module, path: PathLike, in_channels: int, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` as an ONNX file, input ``image`` and output ``logits``, every axis but C dynamic."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as error:
        raise CheckpointError(path, "exporting ONNX needs the onnx package",
                              "pip install 'vol_transfer[export]' (onnx, onnxruntime)") from error
    model = _exportable(model, in_channels)
    dynamic = {0: "batch", 2: "x", 3: "y", 4: "z"}
    with atomic_path(path) as tmp, quiet_tracing(), torch.no_grad():
        torch.onnx.export(model, (_example(in_channels),), str(tmp), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
                          opset_version=opset, dynamo=False)
    return Path(path)


def torchscript_runner(path: PathLike) -> Runner:
    """Run a TorchScript file on a ``(N, C, X, Y, Z)`` tensor."""
    with quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.float())

    return run


def onnx_runner(path: PathLike) -> Runner:
    """Run an ONNX file with onnxruntime (CPU) on a ``(N, C, X, Y, Z)`` tensor."""
    try:
        import onnxruntime
    except ImportError as error:
        raise CheckpointError(path, "running ONNX needs onnxruntime", "pip install 'vol_transfer[export]'") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.float().contiguous().numpy()})
        return torch.from_numpy(logits)

    return run


def module_runner(model: nn.Module) -> Runner:
    """Run a module (eval mode, no gradients) on a ``(N, C, X, Y, Z)`` tensor."""
    model = model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.float())

    return run


__all__ = ["inference_model", "trace", "export_torchscript", "export_onnx", "torchscript_runner", "onnx_runner",
           "module_runner", "quiet_tracing", "ONNX_OPSET"]
