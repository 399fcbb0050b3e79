"""``check_unlearner``: the API contract of an unlearning method, as executable checks.

Each check takes an :class:`~unbake.methods.Unlearner` and raises ``AssertionError``
with a message naming the broken promise. A check declares which methods it applies to,
from their :class:`~unbake.methods.MethodTags`; :func:`parametrize_with_checks` yields
every (method, check) pair and marks the ones that do not apply as *skipped, with the
reason*, as scikit-learn's ``parametrize_with_checks`` does, so nothing passes by
returning early.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from unbake.data import Dataset, Samples, load_dataset
from unbake.exceptions import EmptyRequestError, InvalidParameterError, UnknownSampleError
from unbake.methods import METHODS, MethodTags, Unlearner, UnlearnTask
from unbake.training import TrainConfig, TrainedModel, fit
from unbake.workspace import Workspace

__all__ = [
    "CHECKS",
    "applicable_checks",
    "check_unlearner",
    "parametrize_with_checks",
    "tiny_dataset",
    "tiny_original",
]

TINY_CONFIG = TrainConfig(epochs=3, batch_size=32, lr=3e-3)
#: Long enough on 240 digits for the MLP to memorise its training set.
MEMORISE_CONFIG = TrainConfig(epochs=30, batch_size=32, lr=3e-3)
FORGET = 12
#: The class forgotten by :func:`check_forgets`.
FORGET_CLASS = 0
#: Share of the original→retrain gap (forget loss, or forget accuracy) a method must close.
FORGET_SHARE = 0.1

Check = Callable[[Unlearner], None]


def _applies(when: Callable[[MethodTags], bool], reason: str) -> Callable[[Check], Check]:
    """Declare which methods a check applies to, and why it is skipped for the others."""

    def decorator(check: Check) -> Check:
        check.applies = when  # type: ignore[attr-defined]
        check.skip_reason = reason  # type: ignore[attr-defined]
        return check

    return decorator


def _skip_reason(check: Check, unlearner: Unlearner) -> str | None:
    when = getattr(check, "applies", None)
    if when is None or when(unlearner.tags):
        return None
    return f"{check.__name__} does not apply to {unlearner.name}: {check.skip_reason}"


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


def _original_kwargs(unlearner: Unlearner, config: TrainConfig = TINY_CONFIG) -> dict:
    kwargs = {"model": "mlp", "config": config}
    if unlearner.requires_strategy:
        kwargs.update(unlearner.suggested_original or {"strategy": unlearner.requires_strategy})
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


def tiny_original(unlearner: Unlearner, config: TrainConfig = TINY_CONFIG) -> TrainedModel:
    """A small trained model suitable for ``unlearner`` (cached; always returns a copy)."""
    kwargs = _original_kwargs(unlearner, config)
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


def _scratch(task: UnlearnTask) -> TrainedModel:
    original = task.original
    return original.make_strategy().fit(
        task.retain,
        spec=original.spec,
        config=original.config,
        seed=original.seed,
        n_classes=original.n_classes,
    )


#: Retrain references of :func:`check_forgets`, by the original's training arguments.
_REFERENCES: dict[str, TrainedModel] = {}


@_applies(lambda tags: tags.exact, "it is not exact (tags.exact is False)")
def check_exact_matches_retrain(unlearner: Unlearner) -> None:
    """An exact method's result is bitwise the model trained from scratch on the retain set."""
    task = _task(unlearner)
    out = unlearner.unlearn(task).model
    _assert_bitwise_equal(
        out, _scratch(task), f"exact method {unlearner.name} differs from retraining"
    )


def _forget_loss_and_accuracy(model: TrainedModel, forget: Samples) -> tuple[float, float]:
    probs = model.predict_proba(torch.from_numpy(forget.X))
    y = torch.from_numpy(forget.y)
    loss = float(-torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean())
    return loss, float((probs.argmax(1) == y).float().mean() * 100)


def check_forgets(unlearner: Unlearner) -> None:
    """The method measurably forgets, where the original has memorised.

    Setting: an MLP trained long enough on 240 digits to memorise them, asked to forget
    every sample of one class, and the same model retrained without them. The method must
    close at least ``FORGET_SHARE`` of the original→retrain gap in the forget set's
    accuracy, or in its mean loss on a log scale (the retrained loss is orders of magnitude
    above the memorised one, so the share is of ``log(loss)``). Returning a copy of the
    original closes neither.
    """
    ds = tiny_dataset()
    forget_ids = ds.train.ids[ds.train.y == FORGET_CLASS]
    forget, retain = ds.train.split(forget_ids)
    original = tiny_original(unlearner, MEMORISE_CONFIG)
    task = UnlearnTask(original, forget, retain)
    key = json.dumps(_original_kwargs(unlearner, MEMORISE_CONFIG), sort_keys=True, default=str)
    if key not in _REFERENCES:
        _REFERENCES[key] = _scratch(task)
    reference = _REFERENCES[key]
    out = unlearner.unlearn(task).model
    (l0, a0), (lr, ar), (lm, am) = (
        _forget_loss_and_accuracy(m, forget) for m in (original, reference, out)
    )
    assert lr - l0 > 1.0, f"the setting is broken: retraining raised the forget loss {l0}→{lr}"
    closed_loss = math.log(max(lm, 1e-12) / max(l0, 1e-12)) / math.log(lr / max(l0, 1e-12))
    closed_acc = (a0 - am) / max(a0 - ar, 1e-9)
    assert max(closed_loss, closed_acc) >= FORGET_SHARE, (
        f"{unlearner.name} does not forget: on the forget set the loss went {l0:.3f}→{lm:.3f} "
        f"and the accuracy {a0:.1f}→{am:.1f}%, closing {closed_loss:.1%} and {closed_acc:.1%} "
        f"of the gap to retraining (loss {lr:.3f} [log scale], accuracy {ar:.1f}%); it "
        f"must close {FORGET_SHARE:.0%} of one of them"
    )


def _without_retain(unlearner: Unlearner) -> UnlearnTask:
    ds = tiny_dataset()
    return UnlearnTask(tiny_original(unlearner), ds.train, ds.train.subset(np.zeros(0, int)))


@_applies(lambda tags: tags.needs_retain_data, "it reads no retain data")
def check_rejects_missing_retain(unlearner: Unlearner) -> None:
    """A method that reads the retain set refuses, clearly, a request that leaves none."""
    try:
        unlearner.unlearn(_without_retain(unlearner))
    except InvalidParameterError as exc:
        assert "retain" in str(exc), f"the error does not name the retain set: {exc}"
        return
    raise AssertionError(f"{unlearner.name} ran with no retain data although it reads it")


@_applies(lambda tags: not tags.needs_retain_data, "it reads the retain set")
def check_runs_without_retain(unlearner: Unlearner) -> None:
    """A method that declares it reads no retain data runs when none is left."""
    out = unlearner.unlearn(_without_retain(unlearner)).model
    assert all(torch.isfinite(p).all() for p in out.module.parameters()), (
        f"{unlearner.name} produced non-finite weights without retain data"
    )


CHECKS: list[Check] = [
    check_deterministic,
    check_same_architecture,
    check_original_untouched,
    check_rejects_empty,
    check_workspace_requests,
    check_exact_matches_retrain,
    check_forgets,
    check_rejects_missing_retain,
    check_runs_without_retain,
]


def applicable_checks(unlearner: Unlearner) -> Iterator[tuple[Check, str | None]]:
    """Each check with ``None``, or the reason it does not apply to ``unlearner``."""
    for check in CHECKS:
        yield check, _skip_reason(check, unlearner)


def parametrize_with_checks(methods: list[str] | None = None):
    """A ``pytest.mark.parametrize`` over (method, check) for ``methods`` (default: all).

    Checks that do not apply to a method's tags are marked skipped with the reason.

    >>> marker = parametrize_with_checks(["neggrad"])
    >>> [p.id for p in marker.args[1] if p.marks][:1]
    ['neggrad-check_exact_matches_retrain']
    """
    import pytest

    params = []
    for name in methods or METHODS.available():
        for check, reason in applicable_checks(METHODS.create(name)):
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(name, check, marks=marks, id=f"{name}-{check.__name__}"))
    return pytest.mark.parametrize(("method", "check"), params)


def check_unlearner(method: str | Unlearner) -> list[str]:
    """Run the conformance checks that apply to ``method``; returns the names of those passed.

    Checks that do not apply to its tags are not run (and not listed).
    """
    unlearner = METHODS.create(method) if isinstance(method, str) else method
    passed = []
    for check, reason in applicable_checks(unlearner):
        if reason is None:
            check(unlearner)
            passed.append(check.__name__.removeprefix("check_"))
    return passed
