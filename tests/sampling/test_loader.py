"""Loader: batch format, padding marks, reproducibility, worker seeding and transports, exact resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vol_transfer.errors import InputDataError
from vol_transfer.sampling import Augmentation, BalancedSampler, PatchLoader, SamplingError, UniformSampler

torch.set_num_threads(2)


def make_volumes(count: int = 5, shape=(20, 22, 18)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(42)
    volumes = []
    for _ in range(count):
        image = rng.normal(size=(2,) + shape).astype(np.float32)
        label = np.zeros(shape, dtype=np.uint8)
        label[5:9, 6:10, 4:8] = 1
        volumes.append((image, label))
    return volumes


VOLUMES = make_volumes()


def load(index: int):  # module level: picklable for worker processes
    return VOLUMES[index]


def make_loader(**options) -> PatchLoader:
    settings = dict(batch_size=3, patches_per_volume=4, volumes_per_block=2, seed=5,
                    augmentation=Augmentation(rotation_degrees=10, scaling=0.1, flip_axes=(0,)))
    settings.update(options)
    return PatchLoader(list(range(len(VOLUMES))), load, BalancedSampler(12), **settings)


def take(loader: PatchLoader, n: int) -> list[dict]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def same(a: list[dict], b: list[dict]) -> bool:
    return all(
        x["index"] == y["index"] and torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        and torch.equal(x["centre"], y["centre"])
        for x, y in zip(a, b)
    ) and len(a) == len(b)


def test_batch_format():
    batch = take(make_loader(), 1)[0]
    assert batch["image"].shape == (3, 2, 12, 12, 12) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (3, 12, 12, 12) and batch["label"].dtype == torch.int16
    assert batch["valid"].dtype == torch.bool and batch["centre"].shape == (3, 3)
    assert batch["item"].shape == (3,) and batch["index"] == 0


def test_bf16_output():
    assert take(make_loader(dtype=torch.bfloat16), 1)[0]["image"].dtype == torch.bfloat16


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = take(make_loader(), 6), take(make_loader(), 6), take(make_loader(seed=6), 6)
    assert same(a, b)
    assert not same(a, c)


def test_balanced_classes_reach_the_batches():
    batches = take(make_loader(augmentation=None), 20)
    centre_labels = [VOLUMES[int(i)][1][tuple(c)] for b in batches for i, c in zip(b["item"], b["centre"].numpy())]
    assert 0.3 < np.mean(centre_labels) < 0.7


def test_every_volume_gets_patches_per_volume_patches_per_epoch():
    loader = make_loader(batch_size=2, patches_per_volume=4, volumes_per_block=5, num_batches=10)
    items = torch.cat([b["item"] for b in loader])
    assert sorted(np.bincount(items.numpy()).tolist()) == [4] * 5


@pytest.mark.parametrize("transport", ["torch", "ring"])
def test_two_workers_give_the_same_batches_as_none(transport):
    serial = take(make_loader(), 8)
    parallel = take(make_loader(num_workers=2, worker_transport=transport), 8)
    assert [b["index"] for b in parallel] == list(range(8))
    assert same(serial, parallel)


def test_reused_ring_slots_never_change_delivered_batches():
    """With worker_transport="ring" workers cycle through a few shared-memory slots
    (vol_transfer.sampling.ring). With the fewest slots (prefetch 1), batches spanning two blocks,
    and every batch kept by the caller, 30 batches must still equal the in-process ones and the
    DataLoader's own transport: no slot is reused while still needed."""
    serial = take(make_loader(), 30)
    ring = take(make_loader(num_workers=2, worker_transport="ring", prefetch_factor=1), 30)
    plain = take(make_loader(num_workers=2, worker_transport="torch", prefetch_factor=1), 30)
    assert same(serial, ring) and same(serial, plain)


def test_spawned_workers_give_the_same_batches():
    """Platforms without fork (macOS, Windows) spawn workers: the ring and the stream must pickle."""
    serial = take(make_loader(), 3)
    assert same(serial, take(make_loader(num_workers=1, worker_transport="ring", multiprocessing_context="spawn"), 3))


def test_unknown_worker_transport_is_refused():
    with pytest.raises(SamplingError, match="worker_transport"):
        make_loader(worker_transport="pipe")


def test_resume_with_workers_is_exact():
    reference = take(make_loader(), 7)
    loader = make_loader(num_workers=2)
    loader.load_state_dict({"seed": 5, "next_batch": 3, "fingerprint": loader.stream.fingerprint()})
    assert same(take(loader, 4), reference[3:])


def test_resume_from_state_dict_is_exact():
    reference = take(make_loader(), 9)
    first = make_loader()
    take(first, 4)
    state = first.state_dict()
    assert state["next_batch"] == 4
    resumed = make_loader()
    resumed.load_state_dict(state)
    assert same(take(resumed, 5), reference[4:])


def test_state_from_another_configuration_is_refused():
    state = make_loader().state_dict()
    with pytest.raises(SamplingError, match="different"):
        make_loader(batch_size=4).load_state_dict(state)


def test_volume_smaller_than_window_is_padded_and_marked():
    small = [(np.ones((1, 6, 7, 8), np.float32), np.ones((6, 7, 8), np.uint8))]
    loader = PatchLoader([0], lambda i: small[i], UniformSampler(10), batch_size=2, augmentation=None,
                         image_fill=-3.0, padding_label=-1)
    batch = take(loader, 1)[0]
    valid = batch["valid"][0]
    assert int(valid.sum()) == 6 * 7 * 8
    assert (batch["label"][0][~valid] == -1).all() and (batch["label"][0][valid] == 1).all()
    assert (batch["image"][0, 0][~valid] == -3).all()


def broken_load(item):  # module level: picklable for a worker
    return np.zeros((1, 10, 10, 10), np.float32), np.zeros((9, 10, 10), np.uint8)


def test_load_errors_name_the_item():
    def broken(item):
        return np.zeros((1, 10, 10, 10), np.float32), np.zeros((9, 10, 10), np.uint8)

    loader = PatchLoader(["case_9"], broken, UniformSampler(4))
    with pytest.raises(InputDataError, match="case_9.*label shape"):
        take(loader, 1)
    for transport in ("torch", "ring"):
        in_worker = PatchLoader(["case_9"], broken_load, UniformSampler(4), num_workers=1, worker_transport=transport)
        with pytest.raises(InputDataError, match="case_9.*label shape"):
            take(in_worker, 1)
    with pytest.raises(SamplingError, match="no volumes"):
        PatchLoader([], broken, UniformSampler(4))


def test_weight_map_from_load_steers_the_weighted_sampler():
    from vol_transfer.sampling import WeightedSampler

    image, label = VOLUMES[0]
    weights = np.zeros(label.shape)
    weights[10:12, 11:13, 9:11] = 1.0

    loader = PatchLoader([0], lambda i: (image, label, weights), WeightedSampler(6), batch_size=4,
                         patches_per_volume=8, volumes_per_block=1)
    centres = torch.cat([b["centre"] for b in take(loader, 4)]).numpy()
    assert ((centres >= [10, 11, 9]) & (centres < [12, 13, 11])).all()


def test_volumes_are_loaded_once():
    loads = []

    def counting_load(index):
        loads.append(index)
        return VOLUMES[index]

    settings = dict(batch_size=3, patches_per_volume=4, volumes_per_block=2, seed=5, augmentation=None)
    take(PatchLoader(list(range(5)), counting_load, BalancedSampler(12), **settings), 14)  # 42 patches: 2 epochs
    assert sorted(loads) == list(range(5))


def test_resume_with_another_seed_after_iterating_uses_that_seed():
    reference = take(make_loader(seed=9), 3)
    loader = make_loader(seed=5)
    take(loader, 2)
    loader.load_state_dict({"seed": 9, "next_batch": 1, "fingerprint": loader.stream.fingerprint()})
    assert same(take(loader, 2), reference[1:])


def test_fortran_ordered_volumes_give_the_same_batches():
    """NIfTI arrays arrive in Fortran order; the loader must not care."""

    def fortran(index):
        image, label = VOLUMES[index]
        return np.asfortranarray(image), np.asfortranarray(label)

    settings = dict(batch_size=3, patches_per_volume=4, volumes_per_block=2, seed=5,
                    augmentation=Augmentation(rotation_degrees=10, scaling=0.1))
    a = take(PatchLoader(list(range(5)), fortran, BalancedSampler(12), **settings), 4)
    b = take(PatchLoader(list(range(5)), load, BalancedSampler(12), **settings), 4)
    assert same(a, b)
