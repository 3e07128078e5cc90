"""The plain-text summary table printed by ``vol-transfer data check``.

One block per split: number of cases, range of shapes, spacings, intensity range per channel and
the label histogram (voxel share per value for segmentation, case count per class otherwise).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

MAX_LABELS_SHOWN = 12

if TYPE_CHECKING:
    from vol_transfer.io.manifest import CaseSummary, ValidationReport


def _shape_range(cases: list[CaseSummary]) -> str:
    shapes = [c.shape for c in cases if c.shape]
    if not shapes:
        return "-"
    low = tuple(min(s[i] for s in shapes) for i in range(len(shapes[0])))
    high = tuple(max(s[i] for s in shapes) for i in range(len(shapes[0])))
    fmt = lambda s: "x".join(str(v) for v in s)  # noqa: E731
    return fmt(low) if low == high else f"{fmt(low)} .. {fmt(high)}"


def _spacings(cases: list[CaseSummary]) -> str:
    spacings = Counter(c.spacing for c in cases if c.spacing)
    if not spacings:
        return "-"
    text = ", ".join("x".join(f"{v:g}" for v in s) for s, _ in spacings.most_common(3))
    return text + (f" (+{len(spacings) - 3} more)" if len(spacings) > 3 else "")


def _ranges(cases: list[CaseSummary], channel_names: tuple[str, ...]) -> list[str]:
    lines = []
    for index, name in enumerate(channel_names):
        ranges = [c.channel_ranges[index] for c in cases if len(c.channel_ranges) > index]
        if ranges:
            lines.append(f"{name} {min(r[0] for r in ranges):.4g} .. {max(r[1] for r in ranges):.4g}")
    return lines


def _histogram(cases: list[CaseSummary], classification: bool) -> str:
    total: Counter = Counter()
    for case in cases:
        total.update(case.label_counts)
    if not total:
        return "-"
    if classification:
        return ", ".join(f"{k}: {v}" for k, v in sorted(total.items()))
    voxels = sum(total.values())
    shown = sorted(total.items()) if len(total) <= MAX_LABELS_SHOWN else sorted(total.most_common(MAX_LABELS_SHOWN))
    text = ", ".join(f"{k}: {100.0 * v / voxels:.2f}%" for k, v in shown)
    if len(total) > len(shown):
        text += f" (largest {len(shown)} of {len(total)} values)"
    return text


def format_summary(report: ValidationReport) -> str:
    """Render the report as an aligned text table, one block per split."""
    manifest = report.manifest
    rows: list[tuple[str, str]] = [
        ("manifest", f"{manifest.path} ({manifest.kind}, {len(manifest.all_subjects)} cases, "
                     f"channels: {', '.join(manifest.channel_names)})"),
        ("checked", f"{report.checked} case(s) opened"),
    ]
    if manifest.label_values is not None:
        rows.append(("declared labels", ", ".join(str(v) for v in manifest.label_values)))
    if manifest.classes:
        rows.append(("declared classes", ", ".join(manifest.classes)))
    classification = manifest.kind == "classification"
    for split in manifest.splits:
        cases = [c for c in report.cases if c.split == split]
        count = len(manifest.subjects(split))
        patients = len({s.patient_id for s in manifest.subjects(split)})
        rows.append((f"[{split}] cases", f"{count}" + (f" ({patients} patients)" if patients != count else "")))
        if not cases:
            continue
        rows.append(("  shape", _shape_range(cases)))
        if not classification:
            rows.append(("  spacing (mm)", _spacings(cases)))
        for line in _ranges(cases, manifest.channel_names):
            rows.append(("  intensity", line))
        rows.append(("  labels" if not classification else "  classes", _histogram(cases, classification)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
