"""``vol-transfer export``: write one format and check it against the checkpoint.

| format | writes | checked with |
|---|---|---|
| ``torchscript`` | ``model.ts`` | ``torch.jit.load`` |
| ``onnx`` | ``model.onnx`` | onnxruntime |
| ``monai-bundle`` | the bundle folder (:mod:`vol_transfer.export.bundle`) | ``model.ts``, MONAI ``HighResNet`` with ``model.pt``, and the bundle's MONAI preprocessing against ours |

Every format also gets ``export.json``: the checkpoint's channels, classes and preprocessing (what a
user of the bare network must do before calling it) and the checks, with max |Δlogit|.

Example::

    report = export_checkpoint("hippo.pt", "onnx", "out/", check_inputs=["hippocampus_001.nii.gz"])
    report["checks"][0]["max_abs_diff"]     # 2e-06
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from vol_transfer import __version__
from vol_transfer.errors import PathLike, RecipeError
from vol_transfer.export import check as checks
from vol_transfer.export.traced import (
    export_onnx,
    export_torchscript,
    inference_model,
    module_runner,
    onnx_runner,
    torchscript_runner,
)
from vol_transfer.io.atomic import atomic_write_text, refuse_to_overwrite
from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

log = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx", "monai-bundle")
REPORT = "export.json"


def _outputs(fmt: str, out: Path) -> list[Path]:
    from vol_transfer.export.bundle import BUNDLE_FILES

    names = {"torchscript": ["model.ts"], "onnx": ["model.onnx"], "monai-bundle": list(BUNDLE_FILES)}[fmt]
    return [out / name for name in names] + [out / REPORT]


def export_checkpoint(checkpoint_path: PathLike, fmt: str, out: PathLike, *,
                      check_inputs: Sequence[PathLike] | None = None, channels: str | None = None,
                      overwrite: bool = False, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Export ``checkpoint_path`` as ``fmt`` into ``out``, check it, write and return ``export.json``'s content."""
    if fmt not in FORMATS:
        raise RecipeError("--format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    out = Path(out)
    for target in _outputs(fmt, out):
        refuse_to_overwrite(target, [checkpoint_path], overwrite=overwrite)
    checkpoint = load_checkpoint(checkpoint_path)
    metadata = checkpoint.metadata or {}
    in_channels = int((metadata.get("architecture") or {}).get("in_channels", 1))
    reference = module_runner(build_from_checkpoint(checkpoint).float().cpu().eval())
    image, source, volume = checks.check_image(checkpoint_path, check_inputs, channels, in_channels)
    results: list[dict[str, Any]] = []

    def record(result: checks.LogitCheck | checks.PreprocessingCheck | None) -> None:
        if result is not None:
            say(result.describe())
            results.append(result.to_dict())

    if fmt == "torchscript":
        path = export_torchscript(inference_model(checkpoint), out / "model.ts", in_channels)
        record(checks.compare(reference, torchscript_runner(path), image, "torchscript model.ts", source))
    elif fmt == "onnx":
        path = export_onnx(inference_model(checkpoint), out / "model.onnx", in_channels)
        record(checks.compare(reference, onnx_runner(path), image, "onnx model.onnx (onnxruntime)", source))
    else:
        from vol_transfer.export.bundle import bundle_network, write_bundle

        paths = write_bundle(checkpoint, out)
        record(checks.compare(reference, torchscript_runner(paths["models/model.ts"]), image,
                              "bundle models/model.ts", source))
        record(checks.compare(reference, module_runner(bundle_network(out)), image,
                              "bundle network (MONAI HighResNet + models/model.pt)", source))
        if volume is not None:
            record(checks.check_bundle_preprocessing(out, volume, metadata.get("preprocessing")))
    if source == "random":
        say("checked on a random volume; pass --check IMAGE to check on a real one")
    report = {
        "format": fmt, "checkpoint": str(checkpoint_path), "vol_transfer_version": __version__,
        "input": "(N, C, X, Y, Z) float32, the image after the preprocessing below; output (N, K, X, Y, Z) logits",
        "channels": metadata.get("channels"), "classes": metadata.get("classes"),
        "preprocessing": metadata.get("preprocessing"), "label_mapping": metadata.get("label_mapping"),
        "checks": results,
    }
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    return report


__all__ = ["export_checkpoint", "FORMATS", "REPORT"]
