from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.nets import build_network
from vol_transfer.transfer.checkpoint import (
    METADATA_KEYS,
    build_from_checkpoint,
    load_checkpoint,
    make_metadata,
    save_checkpoint,
)

torch.set_num_threads(2)

CONFIG = {"name": "highres3dnet", "in_channels": 2, "num_classes": 2}


class NotAWeight:
    """A custom class: pickling it stores a reference to code."""

    def __init__(self) -> None:
        self.payload = 1


def _trained_model_and_optimizer():
    torch.manual_seed(0)
    net = build_network(CONFIG)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    net(torch.randn(1, 2, 8, 8, 8)).mean().backward()
    optimizer.step()
    return net, optimizer


def _metadata():
    return make_metadata(
        CONFIG,
        ["flair", "t1c"],
        ["background", "tumour_core"],
        preprocessing={"orientation": "RAS", "spacing": None, "intensity": [{"kind": "zscore", "mask": "nonzero"}]},
        label_mapping={1: 1, 3: 1, 4: 1},
        recipe={"name": "brats_tc_finetune"},
        iteration=500,
        metrics={"val_dice": 0.47},
    )


def test_round_trip_pt_with_optimizer_state(tmp_path: Path):
    net, optimizer = _trained_model_and_optimizer()
    extra = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "sampler": {"seed": 3}}
    path = save_checkpoint(tmp_path / "model.pt", net.state_dict(), _metadata(), extra=extra)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind

    ckpt = load_checkpoint(path)
    assert set(METADATA_KEYS) <= set(ckpt.metadata)
    assert ckpt.metadata["iteration"] == 500
    assert ckpt.metadata["label_mapping"] == {"1": 1, "3": 1, "4": 1}  # JSON keys are strings
    assert ckpt.state_dict.keys() == net.state_dict().keys()
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in net.state_dict().items())

    rebuilt = build_from_checkpoint(ckpt)
    new_optimizer = torch.optim.Adam(rebuilt.parameters(), lr=1e-3, weight_decay=1e-4)
    new_optimizer.load_state_dict(ckpt.extra["optimizer"])
    first = next(iter(new_optimizer.state.values()))
    assert torch.equal(first["exp_avg"], next(iter(optimizer.state.values()))["exp_avg"])
    assert torch.equal(ckpt.extra["torch_rng"], extra["torch_rng"])


def test_round_trip_safetensors(tmp_path: Path):
    net, _ = _trained_model_and_optimizer()
    path = save_checkpoint(tmp_path / "model.safetensors", net.state_dict(), _metadata())
    ckpt = load_checkpoint(path)
    assert ckpt.metadata == json.loads(json.dumps(_metadata()))
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in net.state_dict().items())
    with pytest.raises(CheckpointError, match="cannot hold optimizer"):
        save_checkpoint(tmp_path / "other.safetensors", net.state_dict(), _metadata(), extra={"x": 1})


def test_bare_state_dict_from_elsewhere_loads_with_empty_metadata(tmp_path: Path):
    net, _ = _trained_model_and_optimizer()
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("bare.pth", "wrapped.pth"):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt.metadata == {} and len(ckpt.state_dict) == len(net.state_dict())


@pytest.mark.parametrize(
    "payload",
    [
        {"weights": torch.zeros(2), "hook": NotAWeight()},
        {"weights": torch.zeros(2), "call": functools.partial(print, "hello")},
    ],
)
def test_pickled_code_is_refused(tmp_path: Path, payload):
    path = tmp_path / "unsafe.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unsafe_extra_is_refused_before_writing(tmp_path: Path):
    net, _ = _trained_model_and_optimizer()
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "model.pt", net.state_dict(), _metadata(), extra={"obj": NotAWeight()})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "model.pt", net.state_dict(), {"when": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_and_corrupt_files_name_the_file(tmp_path: Path, suffix: str):
    net, _ = _trained_model_and_optimizer()
    good = save_checkpoint(tmp_path / f"good{suffix}", net.state_dict(), _metadata())
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="corrupt") as info:
            load_checkpoint(path)
        assert info.value.where == str(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_overwriting_keeps_a_complete_file(tmp_path: Path):
    net, _ = _trained_model_and_optimizer()
    path = tmp_path / "model.pt"
    save_checkpoint(path, net.state_dict(), _metadata())
    metadata = _metadata()
    metadata["iteration"] = 1000
    save_checkpoint(path, net.state_dict(), metadata)
    assert load_checkpoint(path).metadata["iteration"] == 1000


def test_build_from_checkpoint_refuses_mismatched_weights(tmp_path: Path):
    net, _ = _trained_model_and_optimizer()
    metadata = _metadata()
    metadata["architecture"] = {**CONFIG, "num_classes": 3}
    path = save_checkpoint(tmp_path / "model.pt", net.state_dict(), metadata)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_from_checkpoint(load_checkpoint(path))


def test_metadata_resolves_a_label_preset_name_and_refuses_an_unknown_one():
    from vol_transfer.errors import RecipeError

    assert make_metadata(CONFIG, ["flair", "t1c"], ["bg", "core"], label_mapping="brats_tc_2015")["label_mapping"] \
        == {1: 1, 3: 1, 4: 1}
    with pytest.raises(RecipeError, match="brats_tc_2099"):
        make_metadata(CONFIG, ["flair"], ["bg"], label_mapping="brats_tc_2099")
