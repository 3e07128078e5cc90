"""A tiny classification manifest over real chest X-rays, split by patient (shared by tests)."""

from __future__ import annotations

from pathlib import Path

KERMANY = "chest_xray_kermany_224"


def write_tiny_manifest(data_root: Path, target: Path, per_class: int = 8) -> Path:
    """``per_class`` NORMAL and PNEUMONIA images per split; NORMAL patients from the file name."""
    lines = ["# kind: classification", "# classes: NORMAL,PNEUMONIA", "subject_id,split,patient_id,image,label"]
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((data_root / KERMANY / "train" / label).glob("*.jpeg"))
        by_patient: dict[str, list[Path]] = {}
        for path in files:
            by_patient.setdefault(path.name.split("_")[0].rsplit("-", 1)[0], []).append(path)
        patients = sorted(by_patient)
        picked = {"train": [], "validation": []}
        for index, patient in enumerate(patients):
            split = "train" if index % 2 == 0 else "validation"
            if len(picked[split]) < per_class:
                picked[split].extend((patient, p) for p in by_patient[patient][: per_class - len(picked[split])])
            if all(len(v) >= per_class for v in picked.values()):
                break
        for split, items in picked.items():
            for patient, path in items:
                relative = path.relative_to(data_root).as_posix()
                lines.append(f"{path.stem},{split},{label}_{patient},{relative},{label}")
    target.write_text("\n".join(lines) + "\n")
    return target
