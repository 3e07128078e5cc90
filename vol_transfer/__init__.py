"""vol_transfer: transfer learning for 3D medical image segmentation.

Train HighRes3DNet on a source task, fine-tune it on a target task with layer-freezing
schedules, sample class-weighted windows, run sliding-window inference that writes NIfTI in the
input's geometry, and run freezing-ablation and training-set-size studies from recipe files.
"""

__version__ = "0.1.0"
