"""A MONAI bundle of a checkpoint: a folder that ``python -m monai.bundle run`` executes on NIfTI files.

Layout (MONAI's bundle convention)::

    configs/metadata.json    network_data_format (channels, classes), versions, our checkpoint metadata
    configs/inference.json   datalist → preprocessing → network → argmax → Invertd → SaveImaged
    configs/logging.conf     MONAI's usual logging set-up
    models/model.pt          the weights as MONAI HighResNet's state dict (``network_def``)
    models/model.ts          the BN-folded network, TorchScript, with the configs inside (MONAI's
                             ``save_net_with_metadata``)
    docs/README.md           what the bundle does, the preprocessing and how to run it

Run it from the bundle folder::

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/imagesTs

It writes ``eval/<case>_seg.nii.gz`` (uint8 class indices on each input's own grid), the file
``vol-transfer infer`` writes for the same input. The network is MONAI's ``HighResNet`` with our
widths, without its last activation (ours outputs logits, see
:mod:`vol_transfer.export.highresnet`); ``--network '$torch.jit.load(@bundle_root +
"/models/model.ts")'`` runs the TorchScript file instead. Other architectures than HighRes3DNet
run the TorchScript file and ship our state dict as ``model.pt``. The preprocessing is MONAI
transforms (:mod:`vol_transfer.export.monai_transforms`); the inferer is MONAI's
``SimpleInferer`` (one whole-volume pass, what ``infer`` does when the volume fits in memory;
``--inferer#_target_ SlidingWindowInferer --inferer#roi_size [96,96,96]`` for big volumes).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vol_transfer import __version__
from vol_transfer.errors import PathLike
from vol_transfer.export.highresnet import to_monai_highresnet
from vol_transfer.export.monai_transforms import KEY, MonaiPreprocessing, monai_preprocessing
from vol_transfer.export.traced import quiet_tracing, trace
from vol_transfer.inference.fusion import fuse_for_inference
from vol_transfer.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from vol_transfer.nets.highres3dnet import HighRes3DNet
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.transfer.checkpoint import Checkpoint, build_from_checkpoint

SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_FILES = ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.pt",
                "models/model.ts", "docs/README.md")
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
_LOGITS_NETWORK = ("$torch.nn.Sequential(*@network_def.blocks[:-1], @network_def.blocks[-1].conv, "
                   "@network_def.blocks[-1].adn.N).to(@device).eval()")
_TORCHSCRIPT_NETWORK = "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device).eval()"


def channel_suffixes(num_channels: int) -> list[str]:
    """File-name endings of a case's channel files: ``.nii.gz`` alone, or nnU-Net's ``_0000.nii.gz`` …"""
    return [".nii.gz"] if num_channels == 1 else [f"_{i:04d}.nii.gz" for i in range(num_channels)]


def inference_config(network_def: dict[str, Any] | None, num_channels: int,
                     preprocessing: MonaiPreprocessing) -> dict[str, Any]:
    """``configs/inference.json``: ``network_def`` is HighResNet's config, or None for the TorchScript network."""
    config: dict[str, Any] = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "/workspace/data",
        "output_dir": "$@bundle_root + '/eval'",
        "channel_suffixes": channel_suffixes(num_channels),
        "datalist": "$[{'image': f if len(@channel_suffixes) == 1 else [f[:-len(@channel_suffixes[0])] + s "
                    "for s in @channel_suffixes]} for f in sorted(glob.glob(os.path.join(@dataset_dir, '**', "
                    "'*' + @channel_suffixes[0]), recursive=True))]",
    }
    if network_def is not None:
        config["network_def"] = {"_target_": "HighResNet", **network_def}
        config["network"] = _LOGITS_NETWORK
        config["load_weights"] = ("$@network_def.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
                                  "map_location='cpu', weights_only=True))")
    else:
        config["network"] = _TORCHSCRIPT_NETWORK
        config["load_weights"] = "$None"
    config.update(preprocessing.helpers)
    config["preprocessing"] = {"_target_": "Compose", "transforms": preprocessing.transforms}
    config["dataset"] = {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"}
    config["inferer"] = {"_target_": "SimpleInferer"}
    config["postprocessing"] = {"_target_": "Compose", "transforms": [
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": KEY,
         "nearest_interp": True, "to_tensor": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "output_ext": ".nii.gz", "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False,
         "output_name_formatter": "$lambda meta, saver: {'subject': str(meta['filename_or_obj'])"
                                  "[:-len(@channel_suffixes[0])], 'idx': None}"},
    ]}
    config["predict"] = ("$lambda d: @postprocessing({**d, 'pred': @inferer(d['image'].as_tensor()[None]"
                         ".to(@device), @network)[0].cpu()})")
    config["initialize"] = ["$torch.set_grad_enabled(False)", "$@load_weights"]
    config["run"] = ["$[@predict(d) for d in @dataset]"]
    return config


def _versions() -> dict[str, Any]:
    import monai
    import nibabel

    return {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": np.__version__, "required_packages_version": {"nibabel": nibabel.__version__}}


def bundle_metadata(checkpoint: Checkpoint, channels: Sequence[str], classes: Sequence[str],
                    notes: Sequence[str]) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's network_data_format plus our checkpoint metadata."""
    name = checkpoint.path.stem if checkpoint.path else "model"
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by vol_transfer {__version__} from {name}"},
        **_versions(),
        "name": f"{name} (vol_transfer)",
        "task": f"3D segmentation: {', '.join(classes)}",
        "description": "Segmentation network trained with vol_transfer, exported as a MONAI bundle; "
                       "see docs/README.md for the preprocessing.",
        "authors": "exported with vol_transfer",
        "copyright": "see the training data's licence",
        "network_data_format": {
            "inputs": {KEY: {"type": "image", "format": "magnitude", "num_channels": len(channels),
                             "spatial_shape": ["*", "*", "*"], "dtype": "float32", "value_range": [],
                             "is_patch_data": False, "channel_def": {str(i): c for i, c in enumerate(channels)}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(classes),
                                 "spatial_shape": ["*", "*", "*"], "dtype": "float32", "value_range": [],
                                 "is_patch_data": False,
                                 "channel_def": {str(i): c for i, c in enumerate(classes)}}},
        },
        "vol_transfer": {"checkpoint": str(checkpoint.path) if checkpoint.path else None,
                         "exactness_notes": list(notes), **dict(checkpoint.metadata)},
    }


def _readme(metadata: Mapping[str, Any], preprocessor: Preprocessor, preprocessing: MonaiPreprocessing,
            channels: Sequence[str], classes: Sequence[str], highresnet: bool) -> str:
    suffixes = channel_suffixes(len(channels))
    files = ", ".join(f"`<case>{s}` = {c}" for s, c in zip(suffixes, channels))
    steps = "\n".join(f"- `{t['_target_']}`" + (f" ({', '.join(f'{k}={v}' for k, v in t.items() if k not in ('_target_', 'keys'))})"
                                                 if len(t) > 2 else "") for t in preprocessing.transforms)
    notes = "".join(f"- {n}\n" for n in preprocessing.notes)
    network = ("MONAI `HighResNet` (`network_def`, weights `models/model.pt`) without the activation after its "
               "last BatchNorm, so it outputs our logits" if highresnet else
               "the TorchScript file `models/model.ts` (`models/model.pt` holds vol_transfer's state dict)")
    return f"""# {metadata['name']}

{metadata['description']}

Input channels, in order: {', '.join(channels)}. Output classes (the values written): {', '.join(f'{i} = {c}' for i, c in enumerate(classes))}.

## Run

    cd <this folder>
    python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/images

Each case is found as {files} under `dataset_dir` (sub-folders included); another naming, e.g.
BraTS files: `--channel_suffixes "['_t1.nii.gz', '_t2.nii.gz']"`; an nnU-Net image folder:
`--channel_suffixes "['_0000.nii.gz', ...]"`; one 4-D file holding the channels in this order:
`--channel_suffixes "['.nii.gz']"`. Outputs: `eval/<case>_seg.nii.gz`
(`--output_dir` to change), uint8 class indices on the input's own grid — what
`vol-transfer infer` writes for the same files.

Network: {network}. `--network '$torch.jit.load(@bundle_root + "/models/model.ts", map_location=@device)'`
runs the BN-folded TorchScript export instead. Inferer: `SimpleInferer` (one whole-volume pass);
for volumes too big for memory: `--inferer#_target_ SlidingWindowInferer --inferer#roi_size "[96, 96, 96]"`
(windows differ from the whole-volume pass near window borders).

## Preprocessing

vol_transfer's spec (checkpoint metadata `preprocessing`):

    {json.dumps(preprocessor.to_spec())}

as MONAI transforms (`preprocessing` in `configs/inference.json`), in this order:

{steps}

`border_background` is the most common value on the faces of each channel (0 for skull-stripped
MRI); `foreground` is any channel differing from it (no crop when nothing does). After the network:
`AsDiscreted(argmax)`, `Invertd` (undoes the spatial steps, nearest neighbour), `SaveImaged`.

Where MONAI cannot match vol_transfer exactly:

{notes}- rounding only otherwise: e.g. MONAI computes z-score statistics in float32, vol_transfer in
  float64 (about 1e-7 relative; the bundle folder's `export.json` has the measured difference).
"""


def write_bundle(checkpoint: Checkpoint, out: PathLike) -> dict[str, Path]:
    """Write the bundle folder (every file atomically); return the paths by name in :data:`BUNDLE_FILES`."""
    from monai.data import save_net_with_metadata

    out = Path(out)
    model = build_from_checkpoint(checkpoint).float().cpu().eval()
    metadata_in = checkpoint.metadata or {}
    architecture = metadata_in.get("architecture") or {}
    num_channels = int(architecture.get("in_channels", 1))
    channels = list(metadata_in.get("channels") or [f"channel_{i}" for i in range(num_channels)])
    classes = list(metadata_in.get("classes") or [f"class_{i}" for i in range(int(architecture.get("num_classes", 1)))])
    preprocessor = Preprocessor.from_spec(metadata_in.get("preprocessing"))
    preprocessing = monai_preprocessing(preprocessor, num_channels)
    highresnet = isinstance(model, HighRes3DNet)
    if highresnet:
        network_def, state = to_monai_highresnet(model)
    else:
        network_def, state = None, {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = inference_config(network_def, num_channels, preprocessing)
    metadata = bundle_metadata(checkpoint, channels, classes, preprocessing.notes)
    paths = {name: out / name for name in BUNDLE_FILES}
    traced = trace(fuse_for_inference(model), num_channels)
    stream = io.BytesIO()
    with quiet_tracing():
        save_net_with_metadata(traced, stream, meta_values=metadata,
                               more_extra_files={"inference.json": json.dumps(config).encode()})
    atomic_write_bytes(paths["models/model.ts"], stream.getvalue())
    with atomic_path(paths["models/model.pt"]) as tmp:
        torch.save(state, tmp)
    atomic_write_text(paths["configs/inference.json"], json.dumps(config, indent=2) + "\n")
    atomic_write_text(paths["configs/metadata.json"], json.dumps(metadata, indent=2) + "\n")
    atomic_write_text(paths["configs/logging.conf"], LOGGING_CONF)
    atomic_write_text(paths["docs/README.md"], _readme(metadata, preprocessor, preprocessing, channels, classes,
                                                      highresnet))
    return paths


def bundle_network(bundle: PathLike, network: str | None = None) -> nn.Module:
    """The bundle's ``network`` with its weights, built by MONAI's ``ConfigParser`` (``network`` overrides it)."""
    parser = _parser(bundle, {"network": network} if network else {})
    parser.get_parsed_content("load_weights")  # not "initialize": it turns gradients off process-wide
    return parser.get_parsed_content("network")


def bundle_preprocessing(bundle: PathLike):
    """The bundle's ``preprocessing`` Compose, built by MONAI's ``ConfigParser``."""
    return _parser(bundle, {}).get_parsed_content("preprocessing")


def _parser(bundle: PathLike, override: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **override})
    return parser


__all__ = ["write_bundle", "inference_config", "bundle_metadata", "channel_suffixes", "bundle_network",
           "bundle_preprocessing", "BUNDLE_FILES"]
