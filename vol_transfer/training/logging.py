"""What a training run writes while it runs: TensorBoard events, ``metrics.csv`` and a progress bar.

Only the main process logs. ``metrics.csv`` is rewritten atomically at every log step (it is
small), so it is always complete; on resume, rows after the resumed iteration are dropped so the
file reads as if the run had never stopped. TensorBoard events after that iteration are purged too.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vol_transfer.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

# A fixed palette for label overlays: class k → colour (background transparent).
_PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]],
    dtype=np.float32,
) / 255.0


class MetricsTable:
    """``metrics.csv``: one row per logged iteration; columns grow as new metrics appear."""

    def __init__(self, path: Path, resume_iteration: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] = ["iteration"]
        self.rows: list[dict[str, Any]] = []
        if resume_iteration is not None and self.path.is_file():
            with self.path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or ["iteration"])
                self.rows = [r for r in reader if r.get("iteration") and int(r["iteration"]) <= resume_iteration]

    def add(self, iteration: int, values: Mapping[str, Any]) -> None:
        row = next((r for r in self.rows if int(r["iteration"]) == iteration), None)
        if row is None:
            row = {"iteration": iteration}
            self.rows.append(row)
        for key, value in values.items():
            if key not in self.columns:
                self.columns.append(key)
            row[key] = _format(value)

    def write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def overlay_slice(image: np.ndarray, label: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """An RGB ``(3, H, W)`` float image: a grey slice with the label's classes in colour."""
    grey = image.astype(np.float32)
    low, high = np.percentile(grey, [1, 99]) if grey.size else (0.0, 1.0)
    grey = np.clip((grey - low) / max(float(high - low), 1e-6), 0, 1)
    rgb = np.repeat(grey[None], 3, axis=0)
    if label is not None:
        classes = np.clip(label.astype(np.int64), 0, len(_PALETTE) - 1)
        colour = _PALETTE[classes].transpose(2, 0, 1)
        mask = (classes > 0)[None]
        rgb = np.where(mask, (1 - alpha) * rgb + alpha * colour, rgb)
    return rgb.astype(np.float32)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay_panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, case: str,
                  classes: Sequence[str], slices: int = 3, min_side: int = 192, channel: str = "") -> np.ndarray:
    """An RGB ``(3, H, W)`` float image for TensorBoard: ``slices`` axial slices spread over the label
    (rows), truth and prediction side by side (columns), each scaled up to at least ``min_side`` pixels,
    titled with the case, the slice and the column, and a legend of the class colours.

    ``image`` is one channel ``(X, Y, Z)``; ``label`` and ``prediction`` are class indices on its grid.
    Slices show X to the right and Y up (voxel order).

    >>> panel = overlay_panel(np.random.rand(20, 30, 12), np.ones((20, 30, 12), int), np.zeros((20, 30, 12), int),
    ...                       "case_1", ["background", "core"])
    >>> panel.shape[0], panel.shape[1] >= 3 * 192, panel.dtype
    (3, True, dtype('float32'))
    """
    from PIL import Image, ImageDraw

    from vol_transfer.evaluation.plots import spread_slices

    indices = spread_slices(np.asarray(label) > 0, np.asarray(prediction) > 0, slices)
    x, y = image.shape[:2]
    scale = max(1, min(8, -(-min_side // min(x, y))))
    tile_w, tile_h = x * scale, y * scale
    header, row_title, gap, legend_h = 24, 18, 6, 26
    width = 2 * tile_w + 3 * gap
    height = header + len(indices) * (row_title + tile_h + gap) + legend_h
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(12)
    what = f" ({channel})" if channel else ""
    draw.text((gap, 4), f"{case}{what}: truth | prediction", fill=(240, 240, 240), font=font)
    top = header
    for z in indices:
        for column, classes_map in enumerate((label, prediction)):
            rgb = overlay_slice(image[:, :, z], np.asarray(classes_map)[:, :, z])  # (3, X, Y)
            pixels = (np.clip(rgb.transpose(2, 1, 0)[::-1], 0, 1) * 255).astype(np.uint8)  # rows = Y, up
            tile = Image.fromarray(np.ascontiguousarray(pixels)).resize((tile_w, tile_h), Image.NEAREST)
            left = gap + column * (tile_w + gap)
            draw.text((left, top + 2), f"{'truth' if column == 0 else 'prediction'}, slice z={z}",
                      fill=(220, 220, 220), font=small)
            canvas.paste(tile, (left, top + row_title))
        top += row_title + tile_h + gap
    left = gap
    for index, name in enumerate(list(classes)[1:], start=1):
        colour = tuple(int(c * 255) for c in _PALETTE[min(index, len(_PALETTE) - 1)])
        draw.rectangle((left, top + 6, left + 12, top + 18), fill=colour)
        draw.text((left + 16, top + 5), name, fill=(230, 230, 230), font=small)
        left += 16 + int(draw.textlength(name, font=small)) + 14
    return (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def write_hparams(log_dir: Path, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Write one run's hyper-parameters and final metrics for TensorBoard's HParams tab.

    ``log_dir`` is the run's ``tensorboard/`` folder; the record goes to its ``hparams/`` subfolder
    (rewritten each time), so ``tensorboard --logdir STUDY`` lists every arm as a row of the tab.
    Values other than numbers, booleans and strings are written as text; NaN metrics are left out.
    """
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    folder = Path(log_dir) / "hparams"
    if folder.exists():
        shutil.rmtree(folder)
    clean = {k: (v if isinstance(v, (int, float, bool, str)) else str(v)) for k, v in hparams.items()}
    scores = {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    writer = SummaryWriter(str(folder))  # one events file: the hparams summaries and the metrics as scalars
    try:
        for summary in hparams_summaries(clean, scores):
            writer.file_writer.add_summary(summary)
        for key, value in scores.items():
            writer.add_scalar(key, value)
    finally:
        writer.close()
    return folder


class RunLogger:
    """TensorBoard + metrics.csv + tqdm for one run; every method is a no-op on non-main ranks.

    Messages may be written before :meth:`start` (they go to stderr); scalars, images and progress
    need :meth:`start`, which knows the iteration a resumed run continues from.
    """

    def __init__(self, run_dir: Path, total_iterations: int, enabled: bool = True, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.total = total_iterations
        self.enabled = enabled
        self.show_progress = progress
        self.metrics = None
        self.writer = None
        self.bar = None

    def start(self, start_iteration: int = 0, resumed: bool = False) -> None:
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.metrics = MetricsTable(self.run_dir / "metrics.csv", start_iteration if resumed else None)
        # purge_step drops events a killed run wrote after its last checkpoint
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                    purge_step=start_iteration + 1 if resumed else None)
        self.bar = tqdm(total=self.total, initial=start_iteration, desc="train", unit="it",
                        dynamic_ncols=True, file=sys.stderr, disable=not self.show_progress, mininterval=1.0)

    def scalars(self, iteration: int, values: Mapping[str, float], csv_row: bool = True) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(key, float(value), iteration)
        if csv_row:
            self.metrics.add(iteration, {k.replace("/", "_"): v for k, v in values.items()})
            self.metrics.write()

    def image(self, iteration: int, tag: str, rgb: np.ndarray) -> None:
        if self.enabled:
            self.writer.add_image(tag, rgb, iteration, dataformats="CHW")

    def progress(self, iteration: int, postfix: Mapping[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        self.bar.n = iteration
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                 refresh=False)
        self.bar.refresh()

    def message(self, text: str) -> None:
        """Log ``text`` (INFO); the command's console handler writes it above the progress bar."""
        if self.enabled:
            logger.info(text)

    def close(self) -> None:
        if not self.enabled or self.writer is None:
            return
        self.bar.close()
        self.writer.flush()
        self.writer.close()


def class_columns(prefix: str, class_names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """``{"val/dice_anterior": 0.8, ...}`` for the foreground classes."""
    return {f"{prefix}_{name}": float(v) for name, v in zip(class_names, values)}
