"""``vol-transfer datasets list|download``: fetch public datasets with checksum and resume."""

from __future__ import annotations

import argparse

from vol_transfer.commands import examples
from vol_transfer.datasets.download import download_file, extract_archive
from vol_transfer.datasets.registry import DATASETS
from vol_transfer.errors import InputDataError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datasets", help="list or download public datasets",
                                   **examples("vol-transfer datasets list",
                                              "vol-transfer datasets download msd-hippocampus runs/downloads"))
    actions = parser.add_subparsers(dest="datasets_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="the datasets this command knows",
                                 **examples("vol-transfer datasets list"))
    listing.set_defaults(handler=_list)

    download = actions.add_parser("download", help="download (resumable, md5-checked) and unpack a dataset",
                                  **examples("vol-transfer datasets download msd-hippocampus runs/downloads",
                                             "vol-transfer datasets download msd-hippocampus runs/downloads --no-extract"))
    download.add_argument("name", choices=sorted(DATASETS))
    download.add_argument("dest", help="folder to download and unpack into")
    download.add_argument("--url", help="a mirror address to use instead of the default")
    download.add_argument("--md5", help="expected md5 of the archive (default: the registry's)")
    download.add_argument("--no-extract", action="store_true", help="keep the archive packed")
    download.set_defaults(handler=_download)


def _list(args: argparse.Namespace) -> int:
    for source in DATASETS.values():
        how = source.url or "registration required"
        print(f"{source.name:18s} {source.description}\n{'':18s} {how}")
    return 0


def _download(args: argparse.Namespace) -> int:
    source = DATASETS[args.name]
    url = args.url or source.url
    if url is None:
        raise InputDataError(args.name, "cannot be downloaded automatically", source.instructions or "see its website")
    archive = download_file(url, args.dest, md5=args.md5 or source.md5)
    print(f"downloaded and verified {archive}")
    if not args.no_extract:
        folder = extract_archive(archive, args.dest)
        print(f"unpacked into {folder}")
    if source.layout:
        print(
            f"next: vol-transfer data manifest --layout {source.layout} {args.dest}/<unpacked folder> "
            f"--out data_manifests/{source.name}.csv"
        )
    return 0
