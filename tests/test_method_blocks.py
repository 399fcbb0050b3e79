"""The shared building blocks, the tags object and plug-in registration."""

import importlib.metadata

import pytest
import torch
from torch import nn

from unbake.evaluation.compare import class_forget_ids
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS, MethodTags, Unlearner
from unbake.methods._blocks import (
    diag_fisher,
    frozen_teacher,
    kl_distill,
    perturb_,
    random_wrong_labels,
    saliency_mask,
)
from unbake.registry import Registry
from unbake.testing import tiny_dataset


def test_kl_distill_is_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert kl_distill(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_distill(torch.zeros(1, 3), t, temperature=2.0).item() > 0


def test_perturb_is_seeded_relative_and_zero_is_a_no_op():
    def net():
        torch.manual_seed(0)  # test-only
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def same(m, n):
        return all(torch.equal(p, q) for p, q in zip(m.parameters(), n.parameters(), strict=True))

    base = net()
    a, b, c = perturb_(net(), 1e-3, 7), perturb_(net(), 1e-3, 7), perturb_(net(), 1e-3, 8)
    assert same(a, b) and not same(a, c) and same(base, perturb_(net(), 0.0, 7))
    for p, q in zip(base.parameters(), a.parameters(), strict=True):
        rel = ((q - p).pow(2).mean().sqrt() / p.pow(2).mean().sqrt()).item()
        assert 2e-4 < rel < 5e-3  # each tensor moves by about 1e-3 of its own size


def test_diag_fisher_matches_per_sample_gradients():
    torch.manual_seed(0)  # test-only
    net = nn.Linear(3, 2)
    X, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    fisher = diag_fisher(net, X, y)
    expected = torch.zeros_like(net.weight)
    for i in range(5):
        net.zero_grad()
        nn.functional.cross_entropy(net(X[i : i + 1]), y[i : i + 1]).backward()
        expected += net.weight.grad**2 / 5
    assert torch.allclose(fisher["weight"], expected, atol=1e-6)


def test_saliency_mask_keeps_the_requested_fraction_and_teacher_is_frozen():
    torch.manual_seed(0)  # test-only
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    X, y = torch.randn(20, 6), torch.randint(3, (20,))
    mask = saliency_mask(net, X, y, 0.25)
    share = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert share == pytest.approx(0.25, abs=0.02)
    teacher = frozen_teacher(net)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_random_wrong_labels_are_never_the_true_label():
    y = torch.arange(10).repeat(50) % 10
    wrong = random_wrong_labels(y, 10, torch.Generator().manual_seed(0))
    assert not torch.any(wrong == y) and wrong.min() >= 0 and wrong.max() < 10


def test_tags_and_legacy_flags_stay_in_step():
    class Legacy(Unlearner):
        name = "legacy"
        needs_retain_data = False
        exact = True

    assert Legacy.tags.kind == "exact" and Legacy.tags.reads == ("forget",)
    assert METHODS.create("neggrad").needs_retain_data is False
    assert METHODS.create("salun").tags.reads == ("forget", "retain")
    with pytest.raises(InvalidParameterError, match="unknown data"):
        MethodTags(reads=("test",))


def test_a_method_that_reads_no_retain_data_is_given_none():
    seen = []

    class Spy(Unlearner):
        name = "spy"
        tags = MethodTags(reads=("forget",))

        def __init__(self):
            pass

        def _unlearn(self, task, seed):
            seen.append(len(task.retain))
            return task.original, {}

    from unbake.testing.conformance import _task

    Spy().unlearn(_task(Spy()))
    assert seen == [0]


def test_retain_samples_reads_that_many_seeded_retain_rows():
    from unbake.testing.conformance import _task

    seen = []

    class Spy(Unlearner):
        name = "spy-retain"

        def __init__(self, *, retain_samples=None):
            self.retain_samples = retain_samples

        def _unlearn(self, task, seed):
            seen.append(list(task.retain.ids))
            return task.original, {}

    task = _task(Spy())
    every = set(task.retain.ids)
    first = Spy(retain_samples=25).unlearn(task, seed=3)
    Spy(retain_samples=25).unlearn(task, seed=3)
    Spy(retain_samples=25).unlearn(task, seed=4)
    whole = Spy(retain_samples=10**6).unlearn(task, seed=3)
    assert first.info["retain_rows_read"] == 25 and whole.info["retain_rows_read"] == len(every)
    assert seen[0] == seen[1] and seen[0] != seen[2] and set(seen[0]) <= every
    assert len(set(seen[0])) == 25


@pytest.mark.parametrize(
    "name",
    [m for m in METHODS.available() if "retain_samples" in METHODS.get(m)().get_params()],
)
def test_every_method_with_retain_samples_reads_only_those_rows(name):
    from unbake.testing.conformance import _task

    method = METHODS.get(name)(retain_samples=30)
    assert "retain_samples" in method.search_space
    result = method.unlearn(_task(method), seed=0)
    assert result.info["retain_rows_read"] == 30
    with pytest.raises(InvalidParameterError, match="retain_samples"):
        METHODS.get(name)(retain_samples=0).unlearn(_task(method), seed=0)


def test_entry_point_plugins_are_loaded_once(monkeypatch):
    registry = Registry("widget", entry_points="unbake.test-widgets")
    loads = []

    class EP:
        name, value = "blue", "pkg.blue"

        def load(self):
            loads.append(1)
            registry.register("blue")(lambda: "blue")

    def fake(group):
        return [EP()] if group == "unbake.test-widgets" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    assert registry.available() == ["blue"] and registry.create("blue") == "blue"
    assert "blue" in registry and loads == [1]


def test_class_scenario_ids_and_bad_class():
    ds = tiny_dataset()
    ids = class_forget_ids(ds, 3)
    assert len(ids) == int((ds.train.y == 3).sum()) > 0
    assert list(class_forget_ids(ds, "3")) == list(ids)  # a name or an index written out
    with pytest.raises(InvalidParameterError, match=r"index 0\.\.9"):
        class_forget_ids(ds, 10)


def test_neggrad_max_steps_caps_the_ascent_batches_of_each_pass():
    from unbake.testing.conformance import _task

    def moved(**kw):
        method = METHODS.create("neggrad", epochs=2, batch_size=4, **kw)
        task = _task(method)
        got = method.unlearn(task, seed=0).model.module.state_dict()
        before = task.original.module.state_dict()
        return {k: got[k] for k in got}, sum((got[k] - before[k]).abs().sum() for k in got)

    whole, d_whole = moved()
    enough, _ = moved(max_steps=10**6)  # a cap above the pass changes nothing
    _, d_one = moved(max_steps=1)
    assert all(torch.equal(whole[k], enough[k]) for k in whole)
    assert 0 < d_one < d_whole / 2  # one ascent batch a pass moves the weights far less
    bad = METHODS.create("neggrad", max_steps=0)
    with pytest.raises(InvalidParameterError, match="max_steps"):
        bad.unlearn(_task(bad), seed=0)
