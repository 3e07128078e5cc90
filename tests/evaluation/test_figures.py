"""Pictures a user looks at: TensorBoard overlays (training/logging.py), evaluation overlays, HParams records."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vol_transfer.evaluation.plots import overlay_slices, spread_slices
from vol_transfer.training.logging import _PALETTE, overlay_panel, write_hparams


def _case(shape=(35, 51, 35)):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    label = np.zeros(shape, np.int64)
    label[10:20, 10:30, 12:24] = 1
    label[10:20, 30:40, 12:24] = 2
    return image, label


def test_tensorboard_overlay_is_readable_several_slices_and_coloured_per_class() -> None:
    image, label = _case()
    prediction = np.zeros_like(label)
    panel = overlay_panel(image, label, prediction, "hippocampus_001", ["background", "anterior", "posterior"])
    assert panel.shape[0] == 3 and panel.dtype == np.float32 and 0 <= panel.min() and panel.max() <= 1
    height, width = panel.shape[1:]
    assert width >= 2 * 192 and height >= 3 * 192  # two columns, three slices, each scaled up (was 102×35)
    body = (panel.transpose(1, 2, 0)[:-26] * 255).astype(int)  # the legend row left out
    red = (body[..., 0] > body[..., 1] + 60) & (body[..., 0] > body[..., 2] + 40)  # class 1's colour, blended
    green = (body[..., 1] > body[..., 0] + 40) & (body[..., 1] > body[..., 2] + 40)  # class 2's
    for mask in (red, green):  # the truth column shows each class; the empty prediction shows none
        assert mask[:, : width // 2].sum() > 1000 and mask[:, width // 2:].sum() == 0
    assert tuple((_PALETTE[1] * 255).round().astype(int)) == (230, 25, 75)


def test_overlay_slices_spread_over_the_structure(tmp_path) -> None:
    image, label = _case((20, 20, 40))
    truth = label > 0
    assert spread_slices(truth, truth, 3) == [15, 18, 20]  # inside 12..23, ends left out
    path = overlay_slices(image, truth, np.roll(truth, 2, axis=0), tmp_path / "o.png", title="case: core")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 2 * picture.size[1] > 600  # three panels in a row


def test_hparams_record_is_what_tensorboard_reads(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = write_hparams(tmp_path / "tensorboard", {"arm": "model_1", "frozen_groups": ["conv_0"], "lr": 3e-3},
                           {"hparam/dice_test": 0.61, "hparam/dice_train": float("nan")})
    events = EventAccumulator(str(folder))
    events.Reload()
    assert events.Scalars("hparam/dice_test")[0].value == np.float32(0.61)
    assert "hparam/dice_train" not in events.Tags()["scalars"]  # NaN left out
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and b"model_1" in plugin["_hparams_/session_start_info"]
    again = write_hparams(tmp_path / "tensorboard", {"arm": "model_1"}, {"hparam/dice_test": 0.7})
    assert again == folder and len(list(folder.iterdir())) == 1  # rewritten, not appended
