from __future__ import annotations

import json

import pytest
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.nets import build_network
from vol_transfer.transfer.freezing import DEFAULT_BN_POLICY, FreezingSchedule, freeze_first, frozen_groups, set_frozen
from vol_transfer.transfer.lr_groups import make_optimizer, param_groups, rebuild_optimizer
from tests.transfer.real_windows import brats_window

torch.set_num_threads(2)

GROUPS = ["conv_0", "res_1", "res_2", "res_3", "conv_1", "conv_2"]


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})


def _real_batch(shared_data, size: int = 24):
    image, label = brats_window(shared_data)
    centre = slice(24 - size // 2, 24 + size // 2)
    return image[..., centre, centre, centre].contiguous(), label[..., centre, centre, centre].contiguous()


def _train(net, optimizer, batch, steps: int, schedule=None):
    image, label = batch
    net.train()
    for iteration in range(steps):
        if schedule is not None and schedule.apply(net, iteration):
            optimizer = rebuild_optimizer(optimizer, param_groups(net, 1e-3, 1e-3))
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(image), label)
        loss.backward()
        optimizer.step()
    return optimizer


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.mark.real_data
@pytest.mark.parametrize("bn_policy", ["update", "freeze"])
def test_frozen_groups_stay_bit_identical_through_adam_with_weight_decay(shared_data, bn_policy):
    net = _net()
    batch = _real_batch(shared_data, size=16)
    frozen = freeze_first(net, 2, bn_policy=bn_policy)
    assert frozen == ["conv_0", "res_1"] and frozen_groups(net) == frozen
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats_before = _bn_stats(net.res_1)

    # no backward through the frozen prefix: its output needs no gradient
    seen = {}

    def record(module, inputs, output) -> None:
        seen["requires_grad"] = output.requires_grad

    net.res_1.register_forward_hook(record)
    optimizer = make_optimizer(net, "adam", lr=1e-2, weight_decay=1e-2)
    assert [g["name"] for g in optimizer.param_groups] == GROUPS[2:]
    _train(net, optimizer, batch, steps=3)
    assert seen["requires_grad"] is False

    after = net.state_dict()
    for name, value in before.items():
        if name.startswith(("conv_0.", "res_1.")) and "running" not in name and "num_batches" not in name:
            assert torch.equal(after[name], value), name
    assert all(p.grad is None for p in net.res_1.parameters())
    assert not torch.equal(after["res_2.0.conv1.weight"], before["res_2.0.conv1.weight"])
    assert not torch.equal(after["conv_2.bn.weight"], before["conv_2.bn.weight"])

    stats_after = _bn_stats(net.res_1)
    stats_changed = any(not torch.equal(stats_after[k], stats_before[k]) for k in stats_before)
    assert stats_changed is (bn_policy == "update")
    # the trainable groups' BN statistics update under either policy
    assert not torch.equal(after["res_2.0.bn1.running_mean"], before["res_2.0.bn1.running_mean"])


def test_bn_freeze_policy_survives_model_train_and_is_undone_on_unfreeze():
    net = _net()
    set_frozen(net, ["conv_0"], bn_policy="freeze")
    net.train()
    net(torch.randn(1, 2, 8, 8, 8))
    assert net.conv_0.bn.training is False and net.res_1[0].bn1.training is True
    set_frozen(net, [], bn_policy="freeze")
    assert net.conv_0.bn.training is True
    assert DEFAULT_BN_POLICY == "update"


def test_freeze_first_schedule_is_the_study_model_k():
    net = _net()
    for k in range(6):
        schedule = FreezingSchedule.freeze_first(k, net)
        schedule.apply(net, 0)
        assert frozen_groups(net) == GROUPS[:k]
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        assert trainable == [809_380, 808_484, 766_820, 614_404, 5_444, 164][k]
    with pytest.raises(RecipeError):
        FreezingSchedule.freeze_first(7, net)


def test_warmup_trains_the_head_first_then_everything():
    net = _net()
    schedule = FreezingSchedule.warmup(5, net)
    assert schedule.apply(net, 0) is True
    assert frozen_groups(net) == GROUPS[:-1]
    assert schedule.apply(net, 4) is False
    assert schedule.apply(net, 5) is True and frozen_groups(net) == []


def test_gradual_and_explicit_phases():
    net = _net()
    gradual = FreezingSchedule.gradual(10, net, start_frozen=3)
    assert [gradual.frozen_at(i) for i in (0, 9, 10, 25, 30, 1000)] == [
        ("conv_0", "res_1", "res_2"), ("conv_0", "res_1", "res_2"), ("conv_0", "res_1"), ("conv_0",), (), ()
    ]
    explicit = FreezingSchedule.at_iterations({0: ["conv_0"], 100: ["conv_0", "res_1"], 200: []}, net)
    assert explicit.frozen_at(150) == ("conv_0", "res_1") and explicit.change_points() == [100, 200]
    explicit.apply(net, 150)
    assert frozen_groups(net) == ["conv_0", "res_1"]  # re-freezing is allowed too
    with pytest.raises(RecipeError):
        FreezingSchedule.at_iterations({0: ["conv_9"]}, net)
    with pytest.raises(RecipeError):
        FreezingSchedule.at_iterations({5: ["conv_0"]}, net)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "none"},
        {"kind": "freeze_first", "k": 2, "bn_policy": "freeze"},
        {"kind": "warmup", "iterations": 50},
        {"kind": "gradual", "every": 20},
        {"kind": "phases", "phases": {"0": ["conv_0"], "30": []}},
    ],
)
def test_specs_round_trip_and_state_dict_resumes(spec):
    net = _net()
    schedule = FreezingSchedule.from_spec(spec, net)
    schedule.apply(net, 42)
    state = json.loads(json.dumps(schedule.state_dict()))  # primitive containers only
    resumed = FreezingSchedule.none()
    resumed.load_state_dict(state)
    assert resumed.phases == schedule.phases and resumed.bn_policy == schedule.bn_policy
    assert resumed.last_iteration == 42
    assert FreezingSchedule.from_spec(schedule.to_spec(), net).phases == schedule.phases


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"kind": "sometimes"}, "freezing.kind"),
        ({"kind": "freeze_first"}, "freezing.k"),
        ({"kind": "warmup", "iterations": 5, "k": 1}, "freezing.k"),
        ({"kind": "none", "bn_policy": "maybe"}, "freezing.bn_policy"),
    ],
)
def test_bad_specs_name_the_key(spec, key):
    with pytest.raises(RecipeError) as info:
        FreezingSchedule.from_spec(spec, GROUPS)
    assert info.value.where == key


@pytest.mark.real_data
def test_rebuilding_the_optimizer_keeps_state_of_groups_that_stay_trainable(shared_data):
    net = _net()
    batch = _real_batch(shared_data, size=16)
    schedule = FreezingSchedule.at_iterations({0: ["conv_0", "res_1"], 2: ["conv_0"]}, net)
    schedule.apply(net, 0)
    optimizer = make_optimizer(net, "adam", lr=1e-3, weight_decay=1e-3)
    optimizer = _train(net, optimizer, batch, steps=2)
    kept = net.res_2[0].conv1.weight
    moments = optimizer.state[kept]["exp_avg"].clone()
    steps = int(optimizer.state[kept]["step"])
    assert schedule.apply(net, 2) is True
    rebuilt = rebuild_optimizer(optimizer, param_groups(net, 1e-3, 1e-3))
    assert torch.equal(rebuilt.state[kept]["exp_avg"], moments) and int(rebuilt.state[kept]["step"]) == steps
    newly_trainable = net.res_1[0].conv1.weight
    assert newly_trainable not in rebuilt.state
    assert [g["name"] for g in rebuilt.param_groups] == GROUPS[1:]
    _train(net, rebuilt, batch, steps=1)
    assert int(rebuilt.state[kept]["step"]) == steps + 1 and int(rebuilt.state[newly_trainable]["step"]) == 1


def test_typed_specs_and_mappings_build_the_same_schedule():
    from vol_transfer.transfer.freezing_spec import FreezeFirst, FreezingPhases, GradualFreezing, WarmupFreezing

    for typed, mapping in [
        (FreezeFirst(k=2, bn_policy="freeze"), {"kind": "freeze_first", "k": 2, "bn_policy": "freeze"}),
        (WarmupFreezing(iterations=5, head=["conv_1", "conv_2"]), {"kind": "warmup", "iterations": 5,
                                                                    "head": ["conv_1", "conv_2"]}),
        (GradualFreezing(every=3, start_frozen=2), {"kind": "gradual", "every": 3, "start_frozen": 2}),
        (FreezingPhases(phases={0: ["conv_0"], 9: []}), {"kind": "phases", "phases": [[9, []], [0, ["conv_0"]]]}),
    ]:
        assert FreezingSchedule.from_spec(typed, GROUPS) == FreezingSchedule.from_spec(mapping, GROUPS)
    assert FreezingSchedule.from_spec(FreezeFirst(k=2), GROUPS).phases == [(0, ("conv_0", "res_1"))]
    assert FreezingSchedule.warmup(5, GROUPS, ["conv_1", "conv_2"]).phases == [(0, tuple(GROUPS[:4])), (5, ())]
    assert FreezingSchedule.gradual(3, GROUPS, 2).phases == [(0, ("conv_0", "res_1")), (3, ("conv_0",)), (6, ())]
    assert FreezingSchedule.from_spec(None, GROUPS).phases == [(0, ())]


@pytest.mark.parametrize(
    "spec, key, words",
    [
        ({"kind": "freez_first", "k": 1}, "freezing.kind", "did you mean 'freeze_first'"),
        ({"kind": "phases", "phases": {0: ["conv0"]}}, "freezing.phases.0", "did you mean 'conv_0'"),
        ({"kind": "phases", "phases": [[0, ["conv_0"]], [0, []]]}, "freezing.phases", "same iteration"),
        ({"kind": "warmup", "iterations": 5, "head": ["head"]}, "freezing.head", "unknown layer group 'head'"),
        ({"kind": "gradual", "every": 5, "start_frozen": 9}, "freezing.start_frozen", "6 layer groups"),
        ({"kind": "gradual", "every": 0}, "freezing.every", "out of range"),
        ({"k": 1}, "freezing.kind", "required key is missing"),
    ],
)
def test_spec_errors_name_the_key_with_the_closest_name(spec, key, words):
    with pytest.raises(RecipeError) as info:
        FreezingSchedule.from_spec(spec, _net())
    assert info.value.where == key and words in info.value.message and "\n" not in info.value.message
