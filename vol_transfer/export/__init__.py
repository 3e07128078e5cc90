"""Models out to the field's tools: TorchScript, ONNX, MONAI bundles, MONAI ``HighResNet`` weights.

- :mod:`~vol_transfer.export.traced` — TorchScript / ONNX files of the BN-folded inference model.
- :mod:`~vol_transfer.export.highresnet` — our HighRes3DNet weights as a MONAI ``HighResNet`` state dict.
- :mod:`~vol_transfer.export.monai_transforms` — a checkpoint's preprocessing as MONAI transforms.
- :mod:`~vol_transfer.export.bundle` — a MONAI bundle folder that ``python -m monai.bundle run`` executes.
- :mod:`~vol_transfer.export.check` — logits of an export against the checkpoint on a real volume.
- :mod:`~vol_transfer.export.exporter` — ``vol-transfer export``: one format, written and checked.
"""
