"""``check_unlearner``: the API contract of an unlearning method, as executable checks.

Each check takes an :class:`~unbake.methods.Unlearner` and raises ``AssertionError``
with a message naming the broken promise. Tests parametrise over
``METHODS.available() × CHECKS`` so every registered method runs every check.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from unbake.data import Dataset, Samples, load_dataset
from unbake.exceptions import EmptyRequestError, UnknownSampleError
from unbake.methods import METHODS, Unlearner, UnlearnTask
from unbake.training import TrainConfig, TrainedModel, fit
from unbake.workspace import Workspace

__all__ = ["CHECKS", "check_unlearner", "tiny_dataset", "tiny_original"]

TINY_CONFIG = TrainConfig(epochs=3, batch_size=32, lr=3e-3)
FORGET = 12


@functools.lru_cache(maxsize=1)
def tiny_dataset() -> Dataset:
    """240 digits for training (with 12 synthetic subjects), 60 for validation, 120 for testing."""
    ds = load_dataset("digits")
    rng = np.random.default_rng(0)
    tr = rng.choice(len(ds.train), 240, replace=False)
    te = rng.choice(len(ds.test), 120, replace=False)
    train = ds.train.subset(np.sort(tr))
    subjects = np.array([f"subject-{i % 12:02d}" for i in range(len(train))], dtype=object)
    train = Samples(train.X, train.y, train.ids, subjects)
    val = ds.val.subset(np.sort(rng.choice(len(ds.val), 60, replace=False)))
    test = ds.test.subset(np.sort(te))
    return Dataset("digits-tiny", train, test, 10, {"name": "__memory__"}, val, ds.classes)


def _original_kwargs(unlearner: Unlearner) -> dict:
    kwargs = {"model": "mlp", "config": TINY_CONFIG}
    if unlearner.requires_strategy:
        kwargs.update(unlearner.suggested_original or {"strategy": unlearner.requires_strategy})
    kwargs.setdefault("config", TINY_CONFIG)
    return kwargs


@functools.lru_cache(maxsize=8)
def _cached_original(key: str) -> TrainedModel:
    ds = tiny_dataset()
    kwargs = json.loads(key)
    from unbake.models import ModelSpec

    if isinstance(kwargs.get("model"), dict):
        kwargs["model"] = ModelSpec.from_dict(kwargs["model"])
    if isinstance(kwargs.get("config"), dict):
        kwargs["config"] = TrainConfig(**kwargs["config"])
    return fit(ds.train, n_classes=ds.n_classes, seed=0, **kwargs)


def tiny_original(unlearner: Unlearner) -> TrainedModel:
    """A small trained model suitable for ``unlearner`` (cached; always returns a copy)."""
    kwargs = _original_kwargs(unlearner)
    key = json.dumps(
        {
            k: (
                v.model_dump()
                if isinstance(v, TrainConfig)
                else v.to_dict()
                if hasattr(v, "to_dict")
                else v
            )
            for k, v in kwargs.items()
        },
        sort_keys=True,
    )
    return copy.deepcopy(_cached_original(key))


def _task(unlearner: Unlearner) -> UnlearnTask:
    ds = tiny_dataset()
    forget, retain = ds.train.split(ds.train.ids[:FORGET])
    return UnlearnTask(tiny_original(unlearner), forget, retain)


def _state(model: TrainedModel) -> dict[str, torch.Tensor]:
    out = {f"module.{k}": v for k, v in model.module.state_dict().items()}
    out.update({f"artifact.{k}": v for k, v in model.artifacts.items()})
    return out


def _assert_bitwise_equal(a: TrainedModel, b: TrainedModel, what: str) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys(), f"{what}: different tensors ({set(sa) ^ set(sb)})"
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"{what}: tensors differ bitwise: {diff[:5]}"


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_deterministic(unlearner: Unlearner) -> None:
    """The same task and seed give bitwise-identical results."""
    a = unlearner.unlearn(_task(unlearner), seed=7).model
    b = unlearner.unlearn(_task(unlearner), seed=7).model
    _assert_bitwise_equal(a, b, f"{unlearner.name} is not deterministic given a seed")


def check_same_architecture(unlearner: Unlearner) -> None:
    """The output has the input's module type, parameter names and shapes."""
    task = _task(unlearner)
    out = unlearner.unlearn(task).model
    assert type(out.module) is type(task.original.module), (
        f"{unlearner.name} changed the module type"
    )
    before = {k: v.shape for k, v in task.original.module.state_dict().items()}
    after = {k: v.shape for k, v in out.module.state_dict().items()}
    assert before == after, f"{unlearner.name} changed the architecture"
    assert out.n_classes == task.original.n_classes
    assert out.input_shape == task.original.input_shape


def check_original_untouched(unlearner: Unlearner) -> None:
    """Neither the original model nor the task's data is modified."""
    task = _task(unlearner)
    before = copy.deepcopy(task.original)
    fx, rx = task.forget.X.copy(), task.retain.X.copy()
    unlearner.unlearn(task)
    _assert_bitwise_equal(task.original, before, f"{unlearner.name} modified the original model")
    assert np.array_equal(task.forget.X, fx) and np.array_equal(task.retain.X, rx), (
        f"{unlearner.name} modified the task's data"
    )


def check_rejects_empty(unlearner: Unlearner) -> None:
    """An empty forget set is rejected with EmptyRequestError."""
    ds = tiny_dataset()
    empty = ds.train.subset(np.zeros(len(ds.train), dtype=bool))
    try:
        UnlearnTask(tiny_original(unlearner), empty, ds.train)
    except EmptyRequestError:
        return
    raise AssertionError("an empty request was not rejected")


def check_workspace_requests(unlearner: Unlearner) -> None:
    """Through a workspace: bad requests change nothing; a good one touches only its IDs."""
    ds = tiny_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        ws = Workspace.create(root, dataset=ds)
        try:
            kwargs = _original_kwargs(unlearner)
            ws.train(seed=0, **kwargs)
            snap = _snapshot(root)
            bad_requests: list[tuple[dict, type[Exception]]] = [
                ({"ids": []}, EmptyRequestError),
                ({"ids": ["no-such-sample"]}, UnknownSampleError),
                ({"ids": [str(ds.train.ids[0]), "no-such-sample"]}, UnknownSampleError),
            ]
            for request, error in bad_requests:
                try:
                    ws.forget(method=unlearner.name, params=unlearner.get_params(), **request)
                except error:
                    pass
                else:
                    raise AssertionError(f"{unlearner.name} accepted bad request {request}")
                assert _snapshot(root) == snap, f"bad request {request} changed the workspace"
            target = [str(i) for i in ds.train.ids[:3]]
            before = ws.catalog.sample_status()
            ws.forget(ids=target, method=unlearner.name, params=unlearner.get_params())
            after = ws.catalog.sample_status()
            changed = sorted(k for k in before if before[k] != after[k])
            assert changed == sorted(target), (
                f"{unlearner.name} changed the status of samples outside the request: {changed}"
            )
            snap = _snapshot(root)
            try:
                ws.forget(ids=target[:1], method=unlearner.name, params=unlearner.get_params())
            except UnknownSampleError:
                pass
            else:
                raise AssertionError("an already-forgotten ID was accepted")
            assert _snapshot(root) == snap, "a rejected re-deletion changed the workspace"
        finally:
            ws.close()


def check_exact_matches_retrain(unlearner: Unlearner) -> None:
    """An exact method's result is bitwise the model trained from scratch on the retain set."""
    if not unlearner.exact:
        return
    task = _task(unlearner)
    out = unlearner.unlearn(task).model
    original = task.original
    scratch = original.make_strategy().fit(
        task.retain,
        spec=original.spec,
        config=original.config,
        seed=original.seed,
        n_classes=original.n_classes,
    )
    _assert_bitwise_equal(out, scratch, f"exact method {unlearner.name} differs from retraining")


CHECKS: list[Callable[[Unlearner], None]] = [
    check_deterministic,
    check_same_architecture,
    check_original_untouched,
    check_rejects_empty,
    check_workspace_requests,
    check_exact_matches_retrain,
]


def check_unlearner(method: str | Unlearner) -> list[str]:
    """Run every conformance check on ``method``; returns the names of the checks passed."""
    unlearner = METHODS.create(method) if isinstance(method, str) else method
    passed = []
    for check in CHECKS:
        check(unlearner)
        passed.append(check.__name__.removeprefix("check_"))
    return passed
