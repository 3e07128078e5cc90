"""``vol-transfer slices``: 2D slices (or candidate-centred patches) from volumes, DICOM series or manifests.

Examples:
    vol-transfer slices ../shared/data/lung_ct_dicom/series_B40f --out ct_slices --budget 8 \\
        --normalise hu:genesis --body-threshold -500
    vol-transfer slices data_manifests/msd_hippocampus.csv --split train --out hippo_slices \\
        --plane axial --budget 5 --skip-empty --normalise mri_max --format npz
    vol-transfer slices ../shared/data/lung_ct_dicom/series_B40f --candidates candidates.csv \\
        --out nodule_patches --patch-size 64 --cube 32
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from vol_transfer.commands import examples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slices", help="write 2D slices (PNG/NPZ + slices.csv) or candidate patches (NPZ + patches.csv)",
        description="Slices along a plane with a per-volume budget, skipping empty or out-of-body slices, "
                    "normalised with a shared preset; or, with --candidates, patches around LUNA16 candidates.",
        **examples(
            "vol-transfer slices data_manifests/msd_hippocampus.csv --split train --out runs/hippo_slices "
            "--budget 5 --skip-empty --normalise mri_max",
            "vol-transfer slices data_manifests/brats2015_flair_t1c.csv --out runs/brats_slices --budget 4   "
            "# 2 channels: NPZ chosen",
            "vol-transfer slices ../shared/data/lung_ct_dicom/series_B40f --out runs/ct_slices --budget 8 "
            "--normalise hu:genesis --body-threshold -500"),
    )
    parser.add_argument("sources", nargs="+", help="image files, DICOM series folders or manifest CSVs")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--data-root", help="data root for manifest paths (default: $VOL_TRANSFER_DATA or ../shared/data)")
    parser.add_argument("--split", default=None, help="only this manifest split (train, validation, test, unlabelled)")
    parser.add_argument("--plane", default="axial", help="axial, coronal, sagittal or an array axis 0/1/2 (default axial)")
    parser.add_argument("--budget", type=int, default=None, help="at most N evenly spaced slices per volume")
    parser.add_argument("--skip-empty", action="store_true", help="drop slices with no label (or, unlabelled, no non-zero voxel)")
    parser.add_argument("--body-threshold", type=float, default=None,
                        help="drop slices with under --min-body-fraction of voxels above this value (CT: -500)")
    parser.add_argument("--min-body-fraction", type=float, default=0.05)
    parser.add_argument("--normalise", default="none",
                        help="none | hu:<window> (hu:genesis, hu:lung, hu:-1000,1400) | mri_max | percentile | xray")
    parser.add_argument("--clahe", action="store_true", help="contrast-limited adaptive histogram equalisation")
    parser.add_argument("--format", choices=("auto", "png", "npz"), default="auto",
                        help="auto (default): PNG for 1- or 3-channel volumes, NPZ for other channel counts "
                             "(a PNG holds grey or RGB only)")
    parser.add_argument("--candidates", type=Path, default=None,
                        help="LUNA16 candidates.csv (seriesuid,coordX,coordY,coordZ,class; LPS mm): cut patches instead")
    parser.add_argument("--coordinates", choices=("LPS", "RAS"), default="LPS",
                        help="world system of --candidates (LUNA16/ITK/DICOM: LPS)")
    parser.add_argument("--patch-size", type=int, default=64, help="2D patch side in voxels (default 64)")
    parser.add_argument("--cube", type=int, default=None, help="also cut 3D cubes of this side")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing slice/patch index in --out")
    parser.set_defaults(handler=run_slices)


def run_slices(args: argparse.Namespace) -> int:
    from vol_transfer.preprocessing.slices import SliceSpec, sources_from_paths, write_slice_dataset

    sources = sources_from_paths(args.sources, data_root=args.data_root, split=args.split)
    if args.candidates is not None:
        return _run_patches(args, sources)
    spec = SliceSpec(plane=args.plane, budget=args.budget, skip_empty=args.skip_empty,
                     body_threshold=args.body_threshold, min_body_fraction=args.min_body_fraction,
                     normalise=args.normalise, clahe=args.clahe)
    file_format, sources = choose_format(args.format, sources)
    index = write_slice_dataset(sources, args.out, spec, file_format=file_format, overwrite=args.overwrite)
    count = len(index.read_text().splitlines()) - 1
    print(f"wrote {count} slice(s) as {file_format.upper()} → {index}")
    return 0


def choose_format(requested: str, sources):
    """(``png`` or ``npz``, the sources): ``auto`` is PNG when the first volume has 1 or 3 channels, else NPZ.

    An explicit ``png`` for another channel count is refused before anything is written.
    """
    from vol_transfer.errors import RecipeError

    sources = iter(sources)
    first = next(sources, None)
    if first is None:
        return ("png" if requested == "auto" else requested), iter(())
    channels = first.volume.num_channels
    png_ok = channels in (1, 3)
    if requested == "png" and not png_ok:
        raise RecipeError("--format png", f"{first.subject_id} has {channels} channels and a PNG holds 1 (grey) or 3 "
                                          "(RGB)", "use --format npz (or --format auto), or slice one channel's file")
    chosen = requested if requested != "auto" else ("png" if png_ok else "npz")
    if requested == "auto" and not png_ok:
        print(f"format: NPZ ({first.subject_id} has {channels} channels; a PNG holds 1 or 3)")
    return chosen, itertools.chain([first], sources)


def _run_patches(args: argparse.Namespace, sources) -> int:
    from vol_transfer.preprocessing.patches import read_candidates, write_candidate_patches

    candidates = read_candidates(args.candidates, system=args.coordinates)
    written = 0
    for source in sources:
        out = args.out if len(args.sources) == 1 else args.out / source.subject_id
        index = write_candidate_patches(source.volume, candidates, out, size=args.patch_size, cube=args.cube,
                                        overwrite=args.overwrite)
        written += len(index.read_text().splitlines()) - 1
        print(f"{source.subject_id}: → {index}")
    print(f"wrote {written} candidate patch file(s)")
    return 0
