"""Checkpoints: one format = weights (state dict) + JSON metadata (+ optional ``extra`` state).

``.pt``/``.pth`` files are written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: only tensors and primitive containers are accepted, so a file
carrying pickled code is refused instead of run. ``.safetensors`` files hold the weights and the
metadata (as a JSON string under the ``"vol_transfer"`` key); they cannot hold ``extra``.

Metadata keys (all JSON-serialisable; ``make_metadata`` fills the defaults):
``architecture`` (the ``build_network`` config), ``channels``, ``classes``, ``preprocessing``
(a Preprocessor spec), ``label_mapping``, ``recipe``, ``iteration``, ``metrics``.
JSON turns integer dict keys (e.g. in ``label_mapping``) into strings.

Example:
    >>> import tempfile
    >>> from vol_transfer.nets import build_network
    >>> architecture = {"name": "highres3dnet", "in_channels": 1, "num_classes": 2}
    >>> net = build_network(architecture)
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "model.pt"
    >>> _ = save_checkpoint(path, net.state_dict(), make_metadata(architecture, ["t1"], ["bg", "hippo"]))
    >>> ckpt = load_checkpoint(path)
    >>> ckpt.metadata["channels"], ckpt.metadata["classes"]
    (['t1'], ['bg', 'hippo'])
    >>> rebuilt = build_from_checkpoint(ckpt)
    >>> folder.cleanup()
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from vol_transfer.errors import CheckpointError, PathLike
from vol_transfer.io.atomic import atomic_path

FORMAT_NAME = "vol_transfer.checkpoint"
FORMAT_VERSION = 1
METADATA_KEYS = (
    "architecture",
    "channels",
    "classes",
    "preprocessing",
    "label_mapping",
    "recipe",
    "iteration",
    "metrics",
)
SAFETENSORS_SUFFIX = ".safetensors"
_SAFETENSORS_METADATA_KEY = "vol_transfer"


@dataclass
class Checkpoint:
    """What a checkpoint file holds. ``metadata`` is empty for a bare state dict from elsewhere."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] | None = None
    path: Path | None = None


def make_metadata(
    architecture: Mapping[str, Any],
    channels: list[str],
    classes: list[str],
    *,
    preprocessing: Mapping[str, Any] | None = None,
    label_mapping: Mapping[Any, Any] | str | None = None,
    recipe: Mapping[str, Any] | None = None,
    iteration: int = 0,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metadata with every standard key present; a preset ``label_mapping`` name is stored resolved."""
    if isinstance(label_mapping, str):
        from vol_transfer.preprocessing.labels import resolve_mapping  # RecipeError for an unknown name

        label_mapping = resolve_mapping(label_mapping)
    return {
        "architecture": dict(architecture),
        "channels": list(channels),
        "classes": list(classes),
        "preprocessing": dict(preprocessing) if preprocessing is not None else None,
        "label_mapping": dict(label_mapping) if label_mapping is not None else None,
        "recipe": dict(recipe) if recipe is not None else None,
        "iteration": int(iteration),
        "metrics": dict(metrics) if metrics is not None else {},
    }


def _metadata_json(path: PathLike, metadata: Mapping[str, Any]) -> str:
    if not isinstance(metadata, Mapping):
        raise CheckpointError(path, f"metadata must be a dict, not {type(metadata).__name__}", "pass a dict")
    try:
        return json.dumps(dict(metadata), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            path, f"metadata is not JSON-serialisable ({error})", "store only str/int/float/bool/None/list/dict values"
        ) from error


def _plain_state_dict(path: PathLike, state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    bad = [str(key) for key, value in state_dict.items() if not isinstance(key, str) or not torch.is_tensor(value)]
    if bad:
        raise CheckpointError(path, f"state dict entries that are not named tensors: {bad}", "pass model.state_dict()")
    # detach and move to CPU so the file does not depend on the device it was saved from
    return {key: value.detach().cpu() for key, value in state_dict.items()}


def save_checkpoint(
    path: PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; the format follows the suffix (``.safetensors`` or torch).

    ``extra`` (optimizer, scheduler, sampler or RNG state) must contain only tensors and primitive
    containers, so that it loads with ``weights_only=True``; it is checked before anything is written.
    """
    path = Path(path)
    weights = _plain_state_dict(path, state_dict)
    metadata_json = _metadata_json(path, metadata)
    if path.suffix == SAFETENSORS_SUFFIX:
        if extra:
            raise CheckpointError(path, "a .safetensors file cannot hold optimizer/extra state", "save to a .pt file")
        from safetensors.torch import save_file

        # safetensors refuses shared or non-contiguous storage
        tensors = {key: value.contiguous().clone() for key, value in weights.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={_SAFETENSORS_METADATA_KEY: metadata_json})
        return path
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "state_dict": weights,
        "metadata_json": metadata_json,
        "extra": dict(extra) if extra is not None else None,
    }
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise CheckpointError(
                path, f"extra state cannot be saved ({_first_line(error)})", "store tensors and plain containers only"
            ) from error
        _check_weights_only(tmp, path)
    return path


def _check_weights_only(tmp: Path, path: Path) -> None:
    """Refuse to publish a file that ``load_checkpoint`` would refuse (e.g. a class in ``extra``)."""
    try:
        torch.load(tmp, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            path,
            f"extra state holds objects that are not tensors or plain containers ({_unsafe_global(error)})",
            "store state_dict()s, numbers, strings, lists and dicts only",
        ) from error


def _first_line(error: BaseException) -> str:
    """The first sentence of an exception message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first.split(". ")[0].rstrip(".")


def _unsafe_global(error: BaseException) -> str:
    """What the refused pickle wanted to import, e.g. ``builtins.print`` (or the first sentence)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return f"it references {found.group(1)}" if found else _first_line(error)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint safely (no code execution).

    Also accepts a bare state dict or a ``{"state_dict": ...}``/``{"model": ...}`` dict saved by
    other tools (e.g. MONAI), with empty metadata.

    Raises:
        CheckpointError: missing, truncated or corrupt file; pickled code; unexpected contents.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist", "check the path")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path, map_location)
    with open(path, "rb") as handle:
        start = handle.read(2)
    if start not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):  # torch's zip, or a legacy pickle
        raise CheckpointError(path, "is not a PyTorch checkpoint (neither torch's zip format nor a pickle)",
                              "pass the .pt/.pth file saved by torch.save, or a .safetensors file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            path,
            f"refused: the file carries pickled code or objects, not just tensors ({_unsafe_global(error)})",
            "load it only if you trust its source and re-save model.state_dict() with vol_transfer",
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as error:  # KeyError: not a pickle
        raise CheckpointError(
            path, f"file is corrupt or truncated ({_first_line(error)})", "re-copy or re-create the checkpoint"
        ) from error
    return _from_payload(path, payload)


def _from_payload(path: Path, payload: Any) -> Checkpoint:
    if isinstance(payload, dict) and payload.get("format") == FORMAT_NAME:
        version = payload.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(path, f"checkpoint format version {version} is not supported", "upgrade vol_transfer")
        try:
            metadata = json.loads(payload["metadata_json"])
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise CheckpointError(path, "metadata is missing or not valid JSON", "re-create the checkpoint") from error
        state = payload.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(path, "has no state dict", "re-create the checkpoint")
        return Checkpoint(_plain_state_dict(path, state), metadata, payload.get("extra"), path)
    if isinstance(payload, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            inner = payload.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return Checkpoint(_plain_state_dict(path, inner), {}, None, path)
        if payload and all(isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items()):
            return Checkpoint(dict(payload), {}, None, path)
    raise CheckpointError(
        path, f"holds a {type(payload).__name__} that is not a state dict", "save model.state_dict() or use save_checkpoint"
    )


def _load_safetensors(path: Path, map_location: str | torch.device) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(path, f"file is corrupt or truncated ({_first_line(error)})", "re-copy or re-create it") from error
    metadata_json = header.get(_SAFETENSORS_METADATA_KEY)
    try:
        metadata = json.loads(metadata_json) if metadata_json else {}
    except json.JSONDecodeError as error:
        raise CheckpointError(path, "metadata is not valid JSON", "re-create the checkpoint") from error
    return Checkpoint(dict(tensors), metadata, None, path)


def build_from_checkpoint(checkpoint: Checkpoint, strict: bool = True) -> torch.nn.Module:
    """Rebuild the network from ``metadata["architecture"]`` and load the weights into it."""
    from vol_transfer.nets import build_network

    architecture = checkpoint.metadata.get("architecture")
    where = checkpoint.path or "checkpoint"
    if not isinstance(architecture, dict):
        raise CheckpointError(where, "metadata has no 'architecture'", "build the network yourself and use transfer_weights")
    model = build_network(architecture)
    problems = state_dict_problems(model, checkpoint.state_dict)
    if problems and strict:
        raise CheckpointError(where, f"weights do not fit the architecture: {'; '.join(problems)}", "re-create the checkpoint")
    fitting = {k: v for k, v in checkpoint.state_dict.items() if k in model.state_dict() and not _shape_differs(model, k, v)}
    model.load_state_dict(fitting, strict=False)
    return model


def _shape_differs(model: torch.nn.Module, key: str, value: torch.Tensor) -> bool:
    return model.state_dict()[key].shape != value.shape


def state_dict_problems(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Every reason ``state_dict`` does not load strictly into ``model`` (missing, unexpected, shape)."""
    target = model.state_dict()
    problems = [f"missing {key}" for key in target if key not in state_dict]
    problems += [f"unexpected {key}" for key in state_dict if key not in target]
    problems += [
        f"{key} has shape {tuple(value.shape)}, the model needs {tuple(target[key].shape)}"
        for key, value in state_dict.items()
        if key in target and target[key].shape != value.shape
    ]
    return problems


__all__ = [
    "Checkpoint",
    "METADATA_KEYS",
    "make_metadata",
    "save_checkpoint",
    "load_checkpoint",
    "build_from_checkpoint",
    "state_dict_problems",
]
