"""Known public datasets: download address, checksum, archive layout, or instructions.

Example:
    >>> DATASETS["msd-hippocampus"].archive_name
    'Task04_Hippocampus.tar'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSource:
    """One downloadable dataset (``url`` set) or one that needs registration (``instructions`` set)."""

    name: str
    description: str
    url: str | None = None
    md5: str | None = None
    layout: str | None = None  # the `vol-transfer data manifest --layout` that fits it
    instructions: str | None = None

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else ""


DATASETS: dict[str, DatasetSource] = {
    "msd-hippocampus": DatasetSource(
        name="msd-hippocampus",
        description="Medical Segmentation Decathlon Task04_Hippocampus (260 labelled MRI crops, CC BY-SA 4.0)",
        url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
        md5="9d24dba78a72977dbd1d2e110310f31b",
        layout="msd",
    ),
    "brats": DatasetSource(
        name="brats",
        description="BraTS (2018 or later) multi-modal glioma MRI with tumour labels",
        layout="brats",
        instructions=(
            "BraTS needs a registration: request the data at the challenge's Synapse page "
            "(BraTS 2018: https://www.med.upenn.edu/sbia/brats2018/registration.html), unpack it so that "
            "DIR/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, then run: "
            "vol-transfer data manifest --layout brats DIR --out data_manifests/brats.csv"
        ),
    ),
}
