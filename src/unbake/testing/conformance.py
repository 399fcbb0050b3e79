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
from unbake.service import DeletionService
from unbake.service.apply import train
from unbake.testing.snapshot import workspace_snapshot
from unbake.training import TrainConfig, TrainedModel, differing_tensors, fit, model_tensors
from unbake.workspace import Workspace

__all__ = [
    "CHECKS",
    "applicable_checks",
    "assert_bitwise_equal",
    "check_unlearner",
    "model_tensors",
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
#: Accuracy points (forget set, original over retrain) that show memorisation where the
#: loss cannot: LoRA adapters on the tiny random Llama (whose embeddings, tied to its
#: output layer, stay frozen and small) raise the right tokens to the top without making
#: them probable.
LEAST_ACCURACY_GAP = 10.0

#: The text setting: a tiny random Llama fine-tuned on a generated TOFU-style set.
TINY_TEXT_CONFIG = TrainConfig(epochs=3, batch_size=8, lr=3e-3)
MEMORISE_TEXT_CONFIG = TrainConfig(epochs=25, batch_size=8, lr=3e-3)
_TEXT_CONFIGS = {TINY_CONFIG: TINY_TEXT_CONFIG, MEMORISE_CONFIG: MEMORISE_TEXT_CONFIG}
FORGET_TEXT = 4
#: The hyperparameters text methods are checked with (scikit-learn's
#: ``_set_checking_parameters``): their defaults are sized for a pretrained model of about
#: 100M parameters; the tiny random model of the checks needs larger steps to move.
TEXT_CHECKING_PARAMETERS = {"lr": 2e-3, "epochs": 5}

Check = Callable[[Unlearner], None]


def _is_text(unlearner: Unlearner) -> bool:
    """Checked on the text setting: the method unlearns language models only."""
    return "arrays" not in unlearner.tags.inputs


@functools.lru_cache(maxsize=1)
def tiny_lm_path() -> str:
    """A tiny random Llama-style model and byte tokenizer, written once per process."""
    from unbake.models.hf import write_tiny_llama

    root = Path(tempfile.mkdtemp(prefix="unbake-tiny-llama-"))
    return str(write_tiny_llama(root / "model", seed=0))


@functools.lru_cache(maxsize=1)
def tiny_text_dataset() -> Dataset:
    """Ten generated persons, two facts each, and one canary; held-out persons as test."""
    from unbake.data.text import text_dataset
    from unbake.data.tofu import generate_tofu

    tofu = generate_tofu(10, seed=0, facts=2, holdout_fraction=0.2)
    empty = tofu.train.subset(np.zeros(len(tofu.train), bool))
    return text_dataset("tofu-tiny", tofu.train, empty, tofu.holdout, {"name": "__memory__"})


def _dataset_for(unlearner: Unlearner) -> Dataset:
    return tiny_text_dataset() if _is_text(unlearner) else tiny_dataset()


def _checking(unlearner: Unlearner) -> Unlearner:
    """``unlearner`` as checked: text methods with :data:`TEXT_CHECKING_PARAMETERS`."""
    if not _is_text(unlearner):
        return unlearner
    params = unlearner.get_params()
    update = {k: v for k, v in TEXT_CHECKING_PARAMETERS.items() if k in params}
    return copy.deepcopy(unlearner).set_params(**update)


def _in_setting(check: Check) -> Check:
    """Run ``check`` on the method as :func:`_checking` sets it up."""

    @functools.wraps(check)
    def run(unlearner: Unlearner) -> None:
        check(_checking(unlearner))

    return run


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
    reason = getattr(check, "skip_reason", "")
    return f"{check.__name__} does not apply to {unlearner.name}: {reason}"


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
    from unbake.models import ModelSpec

    kwargs: dict = {"model": "mlp", "config": config}
    if _is_text(unlearner):
        kwargs = {"model": ModelSpec(f"hf:{tiny_lm_path()}"), "config": _TEXT_CONFIGS[config]}
    if unlearner.requires_strategy:
        suggested = dict(unlearner.suggested_original or {"strategy": unlearner.requires_strategy})
        extra = suggested.pop("model_params", None)
        kwargs.update(suggested)
        if extra:
            spec = kwargs["model"]
            spec = ModelSpec(spec) if isinstance(spec, str) else spec
            kwargs["model"] = ModelSpec(spec.name, {**spec.params, **extra})
    return kwargs


@functools.lru_cache(maxsize=8)
def _cached_original(key: str) -> TrainedModel:
    kwargs = json.loads(key)
    from unbake.models import ModelSpec

    ds = tiny_dataset()
    if isinstance(kwargs.get("model"), dict):
        kwargs["model"] = ModelSpec.from_dict(kwargs["model"])
        if kwargs["model"].name.startswith("hf:"):
            ds = tiny_text_dataset()
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
    ds = _dataset_for(unlearner)
    forget, retain = ds.train.split(ds.train.ids[: FORGET_TEXT if _is_text(unlearner) else FORGET])
    return UnlearnTask(tiny_original(unlearner), forget, retain)


def assert_bitwise_equal(a: TrainedModel, b: TrainedModel, what: str) -> None:
    """Weights and artifacts of ``a`` and ``b`` are the same tensors, bit for bit."""
    diff = differing_tensors(a, b)
    assert not diff, f"{what}: tensors differ bitwise (or exist in one model only): {diff[:5]}"


def _snapshot(root: Path) -> dict[str, str]:
    return workspace_snapshot(root)


def check_deterministic(unlearner: Unlearner) -> None:
    """The same task and seed give bitwise-identical results."""
    a = unlearner.unlearn(_task(unlearner), seed=7).model
    b = unlearner.unlearn(_task(unlearner), seed=7).model
    assert_bitwise_equal(a, b, f"{unlearner.name} is not deterministic given a seed")


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
    data = copy.deepcopy((task.forget, task.retain))
    unlearner.unlearn(task)
    assert_bitwise_equal(task.original, before, f"{unlearner.name} modified the original model")
    assert _same_data(task.forget, data[0]) and _same_data(task.retain, data[1]), (
        f"{unlearner.name} modified the task's data"
    )


def _same_data(a, b) -> bool:
    fields = ("X", "y") if hasattr(a, "X") else ("prompts", "answers")
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in (*fields, "ids"))


def check_rejects_empty(unlearner: Unlearner) -> None:
    """An empty forget set is rejected with EmptyRequestError."""
    ds = _dataset_for(unlearner)
    empty = ds.train.subset(np.zeros(len(ds.train), dtype=bool))
    try:
        UnlearnTask(tiny_original(unlearner), empty, ds.train)
    except EmptyRequestError:
        return
    raise AssertionError("an empty request was not rejected")


def check_workspace_requests(unlearner: Unlearner) -> None:
    """Through the deletion service: bad requests change nothing, a good one only its IDs."""
    ds = _dataset_for(unlearner)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        ws = Workspace.create(root, dataset=ds)
        try:
            kwargs = _original_kwargs(unlearner)
            train(ws, seed=0, **kwargs)
            with DeletionService(ws) as svc:
                _check_requests(unlearner, svc, [str(i) for i in ds.train.ids])
        finally:
            ws.close()


def _check_requests(unlearner: Unlearner, svc: DeletionService, train_ids: list[str]) -> None:
    root, catalog = svc.root, svc.workspace.catalog
    method = {"method": unlearner.name, "params": unlearner.get_params()}
    snap = _snapshot(root)
    bad_requests: list[tuple[dict, type[Exception]]] = [
        ({"ids": []}, EmptyRequestError),
        ({"ids": ["no-such-sample"]}, UnknownSampleError),
        ({"ids": [train_ids[0], "no-such-sample"]}, UnknownSampleError),
    ]
    for request, error in bad_requests:
        try:
            svc.forget(**method, **request)
        except error:
            pass
        else:
            raise AssertionError(f"{unlearner.name} accepted bad request {request}")
        assert _snapshot(root) == snap, f"bad request {request} changed the workspace"
    target = train_ids[:3]
    before = catalog.sample_status()
    svc.forget(ids=target, **method)
    after = catalog.sample_status()
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == sorted(target), (
        f"{unlearner.name} changed the status of samples outside the request: {changed}"
    )
    snap = _snapshot(root)
    try:
        svc.forget(ids=target[:1], **method)
    except UnknownSampleError:
        pass
    else:
        raise AssertionError("an already-forgotten ID was accepted")
    assert _snapshot(root) == snap, "a rejected re-deletion changed the workspace"


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
    assert_bitwise_equal(
        out, _scratch(task), f"exact method {unlearner.name} differs from retraining"
    )


def _forget_loss_and_accuracy(model: TrainedModel, forget: Samples) -> tuple[float, float]:
    """Mean loss and accuracy (%) on ``forget``: per answer token for text."""
    if not hasattr(forget, "X"):
        return _answer_loss_and_accuracy(model, forget)
    probs = model.predict_proba(forget.X)
    y = torch.from_numpy(forget.y)
    loss = float(-torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean())
    return loss, float((probs.argmax(1) == y).float().mean() * 100)


@torch.no_grad()
def _answer_loss_and_accuracy(model: TrainedModel, forget) -> tuple[float, float]:
    from unbake.training.lm import lm_streams

    ids, labels = lm_streams(model.module, model.spec, forget=forget)["forget"]
    model.module.eval()
    logits = model.module(input_ids=ids).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    nll = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    return float(nll), float((logits[keep].argmax(-1) == target[keep]).float().mean() * 100)


def _forget_setting(unlearner: Unlearner) -> tuple[Samples, Samples, float]:
    """The forget and retain sets of :func:`check_forgets`, and the least gap it needs."""
    ds = _dataset_for(unlearner)
    if _is_text(unlearner):
        from unbake.data.tofu import generate_tofu

        persons = generate_tofu(10, seed=0, facts=2, holdout_fraction=0.2).forget["forget10"]
        forget, retain = ds.train.split(ds.train.ids[np.isin(ds.train.subjects, persons)])
        return forget, retain, 0.5
    forget, retain = ds.train.split(ds.train.ids[ds.train.y == FORGET_CLASS])
    return forget, retain, 1.0


def check_forgets(unlearner: Unlearner) -> None:
    """The method measurably forgets, where the original has memorised.

    Setting: an MLP trained long enough on 240 digits to memorise them, asked to forget
    every sample of one class, and the same model retrained without them. The method must
    close at least ``FORGET_SHARE`` of the original→retrain gap in the forget set's
    accuracy, or in its mean loss on a log scale (the retrained loss is orders of magnitude
    above the memorised one, so the share is of ``log(loss)``). Returning a copy of the
    original closes neither. For text methods: the tiny Llama fine-tuned until it has
    memorised the generated persons, asked to forget every row (canary included) of the
    ``forget10`` persons; loss and accuracy are per answer token. The setting must show
    memorisation: retraining raises the forget loss, or lowers the forget accuracy by
    ``LEAST_ACCURACY_GAP`` points.
    """
    forget, retain, least_gap = _forget_setting(unlearner)
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
    assert lr - l0 > least_gap or a0 - ar > LEAST_ACCURACY_GAP, (
        f"the setting is broken: retraining raised the forget loss only {l0}→{lr} and "
        f"lowered the forget accuracy only {a0:.1f}→{ar:.1f}%"
    )
    closed_loss = math.log(max(lm, 1e-12) / max(l0, 1e-12)) / math.log(lr / max(l0, 1e-12))
    closed_acc = (a0 - am) / max(a0 - ar, 1e-9)
    assert max(closed_loss, closed_acc) >= FORGET_SHARE, (
        f"{unlearner.name} does not forget: on the forget set the loss went {l0:.3f}→{lm:.3f} "
        f"and the accuracy {a0:.1f}→{am:.1f}%, closing {closed_loss:.1%} and {closed_acc:.1%} "
        f"of the gap to retraining (loss {lr:.3f} [log scale], accuracy {ar:.1f}%); it "
        f"must close {FORGET_SHARE:.0%} of one of them"
    )


def _without_retain(unlearner: Unlearner) -> UnlearnTask:
    ds = _dataset_for(unlearner)
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
    _in_setting(check)
    for check in (
        check_deterministic,
        check_same_architecture,
        check_original_untouched,
        check_rejects_empty,
        check_workspace_requests,
        check_exact_matches_retrain,
        check_forgets,
        check_rejects_missing_retain,
        check_runs_without_retain,
    )
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
