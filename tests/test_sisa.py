"""SISA: layout, exactness of deletion, batching, purge, aggregation and bad input."""

import hashlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unbake import TrainConfig, Workspace, fit
from unbake.cli import app
from unbake.data import Samples
from unbake.evaluation.compare import compare_methods
from unbake.exceptions import IntegrityError, InvalidParameterError, UnsupportedModelError
from unbake.families.sisa import (
    SISA,
    ShardLayout,
    SISAEnsemble,
    checkpoint_key,
    slice_epochs,
    train_shard,
)
from unbake.methods import METHODS, UnlearnTask
from unbake.service import apply
from unbake.testing import tiny_dataset
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace import decode_checkpoint, encode_checkpoint

CFG = TrainConfig.parse(epochs=3, batch_size=32, lr=3e-3)
PARAMS = {"shards": 4, "slices": 3, "assignment": "hash"}
#: 12 subjects hashed into 3 shards leave none empty with seed 0 (4 would).
SUBJECT_PARAMS = {"shards": 3, "slices": 3, "assignment": "subject"}


def train_sisa(samples=None, seed=0, **params):
    samples = tiny_dataset().train if samples is None else samples
    return fit(
        samples,
        n_classes=10,
        model="mlp",
        config=CFG,
        seed=seed,
        strategy="sisa",
        strategy_params={**PARAMS, **params},
    )


def unlearn(original, forget_ids, **params):
    forget, retain = tiny_dataset().train.split(forget_ids)
    return METHODS.create("sisa", **params).unlearn(UnlearnTask(original, forget, retain))


def states(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ bitwise: {diff[:5]}"


def scratch_shard(model, samples, shard):
    """Train ``shard`` alone from scratch on ``samples`` with the model's seed and schedule."""
    strategy = SISA(**model.strategy_params)
    layout = strategy.layout(samples, model.seed)
    job = strategy.job(
        samples,
        layout,
        shard,
        spec=model.spec,
        config=model.config,
        seed=model.seed,
        n_classes=model.n_classes,
        device=torch.device("cpu"),
    )
    return train_shard(job)


def ids_in(model, shard, step, samples=None):
    samples = tiny_dataset().train if samples is None else samples
    layout = SISA(**model.strategy_params).layout(samples, model.seed)
    return samples.ids[(layout.shard == shard) & (layout.slice == step)].astype(str)


# --- layout -------------------------------------------------------------------------


def test_layout_is_a_pure_function_of_ids_and_seed():
    train = tiny_dataset().train
    full = ShardLayout.of(train, shards=4, slices=3, assignment="hash", seed=0)
    perm = np.random.default_rng(1).permutation(len(train))[:150]
    part = ShardLayout.of(train.subset(perm), shards=4, slices=3, assignment="hash", seed=0)
    assert np.array_equal(part.shard, full.shard[perm])
    assert np.array_equal(part.slice, full.slice[perm])
    other = ShardLayout.of(train, shards=4, slices=3, assignment="hash", seed=1)
    assert not np.array_equal(other.shard, full.shard)
    # every shard gets a fair share of 240 samples
    assert full.sizes().sum() == len(train) and full.sizes().sum(axis=1).min() > 30


def test_rows_are_ordered_by_slice_then_id_whatever_the_input_order():
    train = tiny_dataset().train
    perm = np.random.default_rng(2).permutation(len(train))
    a = ShardLayout.of(train, shards=3, slices=4, assignment="hash", seed=0)
    b = ShardLayout.of(train.subset(perm), shards=3, slices=4, assignment="hash", seed=0)
    for s in range(3):
        rows_a, ends_a = a.rows(s)
        rows_b, ends_b = b.rows(s)
        assert ends_a == ends_b and ends_a[-1] == (a.shard == s).sum()
        assert list(a.ids[rows_a]) == list(b.ids[rows_b])
        assert np.all(np.diff(a.slice[rows_a]) >= 0)


def test_subject_assignment_keeps_each_subject_in_one_shard_and_slice():
    train = tiny_dataset().train  # 12 subjects of 20 samples
    subj = ShardLayout.of(train, shards=4, slices=3, assignment="subject", seed=0)
    flat = ShardLayout.of(train, shards=4, slices=3, assignment="hash", seed=0)
    for subject in np.unique(train.subjects):
        rows = train.subjects == subject
        assert len(np.unique(subj.shard[rows])) == 1
        assert len(np.unique(subj.slice[rows])) == 1
        assert len(np.unique(flat.shard[rows])) > 1


def test_samples_without_subject_fall_back_to_their_id():
    train = tiny_dataset().train
    subjects = np.where(np.arange(len(train)) % 2 == 0, train.subjects, "").astype(object)
    mixed = Samples(train.X, train.y, train.ids, subjects)
    subj = ShardLayout.of(mixed, shards=4, slices=3, assignment="subject", seed=0)
    flat = ShardLayout.of(mixed, shards=4, slices=3, assignment="hash", seed=0)
    loose = subjects == ""
    assert np.array_equal(subj.shard[loose], flat.shard[loose])
    for subject in np.unique(subjects[~loose]):
        assert len(np.unique(subj.shard[subjects == subject])) == 1


def test_slice_epochs_follow_the_papers_schedule():
    assert slice_epochs(10, 1) == 10
    assert slice_epochs(10, 4) == 4  # 2e/(R+1): the R steps cost about e epochs in all
    assert slice_epochs(1, 9) == 1 and slice_epochs(0, 4) == 0


# --- training -----------------------------------------------------------------------


def test_sisa_model_has_a_checkpoint_after_every_slice():
    model = train_sisa()
    assert isinstance(model.module, SISAEnsemble) and len(model.module.shards) == 4
    assert model.strategy_params == {**PARAMS, "aggregation": "vote"}
    names = model.module.shards[0].state_dict().keys()
    for s in range(4):
        for r in range(2):  # the last checkpoint is the shard's own weights
            for name in names:
                assert checkpoint_key(s, r, name) in model.artifacts
    assert len(model.artifacts) == 4 * 2 * len(names)
    meta = model.meta["sisa"]
    assert np.array(meta["sizes"]).sum() == len(tiny_dataset().train)
    # the scratch schedule of one shard reproduces the model's shard and its checkpoints
    steps = scratch_shard(model, tiny_dataset().train, 2)
    assert_bitwise(steps[-1], model.module.shards[2].state_dict())
    for r in range(2):
        assert_bitwise(steps[r], {n: model.artifacts[checkpoint_key(2, r, n)] for n in names})


def test_sisa_checkpoint_round_trip_and_accuracy():
    model = train_sisa(aggregation="mean")
    data = encode_checkpoint(model, model_id="m", parent_id=None)
    back, _ = decode_checkpoint(data, expected_sha256=None)
    assert back.strategy == "sisa" and back.module.aggregation == "mean"
    assert_bitwise(states(back.module), states(model.module))
    assert_bitwise(back.artifacts, model.artifacts)
    X = torch.from_numpy(tiny_dataset().test.X)
    assert torch.equal(back.predict_proba(X), model.predict_proba(X))
    acc = (model.predict_proba(X).argmax(1).numpy() == tiny_dataset().test.y).mean()
    assert acc > 0.5  # 4 shards of ~60 digits each, 3 epochs: far above chance (0.1)


def test_aggregation_vote_and_mean():
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor(logits))

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    # two shards mildly prefer class 0, one strongly prefers class 1
    shards = [Fixed([1.0, 0.0, 0.0]), Fixed([1.0, 0.0, 0.0]), Fixed([0.0, 9.0, 0.0])]
    x = torch.zeros(2, 1)
    vote = torch.softmax(SISAEnsemble(shards, "vote")(x), 1)
    mean = torch.softmax(SISAEnsemble(shards, "mean")(x), 1)
    probs = torch.stack([torch.softmax(m(x), 1) for m in shards]).mean(0)
    assert vote.argmax(1).tolist() == [0, 0]
    assert mean.argmax(1).tolist() == [1, 1]
    torch.testing.assert_close(mean, probs)
    torch.testing.assert_close(vote.sum(1), torch.ones(2))


def test_sisa_training_is_deterministic_and_seeded():
    a, b, c = train_sisa(seed=3), train_sisa(seed=3), train_sisa(seed=4)
    assert_bitwise(states(a.module), states(b.module))
    assert_bitwise(a.artifacts, b.artifacts)
    assert not torch.equal(a.module.shards[0].head.weight, c.module.shards[0].head.weight)


# --- exact deletion -----------------------------------------------------------------


@pytest.mark.parametrize("params", [PARAMS, SUBJECT_PARAMS], ids=["hash", "subject"])
def test_deletion_is_bitwise_training_each_shard_from_scratch(params):
    train = tiny_dataset().train
    original = train_sisa(**params)
    # from shard 0 two samples of its last non-empty slice, from shard 1 one of its first
    last = max(r for r in range(3) if len(ids_in(original, 0, r)))
    first = min(r for r in range(3) if len(ids_in(original, 1, r)))
    forget_ids = [*ids_in(original, 0, last)[:2], *ids_in(original, 1, first)[:1]]
    assert len(forget_ids) == 3
    result = unlearn(original, forget_ids)
    model = result.model
    assert result.info["shards_retrained"] == [0, 1]
    _, retain = train.split(forget_ids)
    names = model.module.shards[0].state_dict().keys()
    for s in range(params["shards"]):
        steps = scratch_shard(model, retain, s)
        assert_bitwise(states(model.module.shards[s]), steps[-1])
        for r in range(2):
            saved = {n: model.artifacts[checkpoint_key(s, r, n)] for n in names}
            assert_bitwise(saved, steps[r])
    # and the ensemble as a whole equals the SISA model retrained on the retain set
    scratch = SISA(**original.strategy_params).fit(
        retain, spec=original.spec, config=CFG, seed=0, n_classes=10
    )
    assert_bitwise(states(model.module), states(scratch.module))
    assert_bitwise(model.artifacts, scratch.artifacts)
    assert model.meta == scratch.meta
    # exactness is not vacuous: the affected shards did change
    assert not torch.equal(
        model.module.shards[0].head.weight, original.module.shards[0].head.weight
    )


def test_deletion_restores_the_checkpoint_before_the_earliest_slice():
    original = train_sisa()
    forget_ids = [*ids_in(original, 1, 2)[:1], *ids_in(original, 3, 1)[:1]]
    model = unlearn(original, forget_ids).model
    names = list(original.module.shards[0].state_dict().keys())

    def ckpt(m, s, r):
        return {n: m.artifacts[checkpoint_key(s, r, n)] for n in names}

    # untouched: shards 0 and 2 entirely, and every checkpoint before the earliest slice
    for s in (0, 2):
        assert_bitwise(states(model.module.shards[s]), states(original.module.shards[s]))
        assert_bitwise(ckpt(model, s, 0), ckpt(original, s, 0))
    assert_bitwise(ckpt(model, 1, 0), ckpt(original, 1, 0))
    assert_bitwise(ckpt(model, 1, 1), ckpt(original, 1, 1))
    assert_bitwise(ckpt(model, 3, 0), ckpt(original, 3, 0))
    # replaced: every checkpoint that had seen the forgotten data
    assert not torch.equal(ckpt(model, 3, 1)["head.weight"], ckpt(original, 3, 1)["head.weight"])
    for s in (1, 3):
        assert not torch.equal(
            model.module.shards[s].head.weight, original.module.shards[s].head.weight
        )


def test_successive_deletions_stay_exact():
    train = tiny_dataset().train
    original = train_sisa()
    first = [str(i) for i in train.ids[:5]]
    second = [str(i) for i in train.ids[100:103]]
    _, retain1 = train.split(first)
    f2, retain2 = retain1.split(second)
    step1 = unlearn(original, first).model
    step2 = METHODS.create("sisa").unlearn(UnlearnTask(step1, f2, retain2)).model
    scratch = SISA(**original.strategy_params).fit(
        retain2, spec=original.spec, config=CFG, seed=0, n_classes=10
    )
    assert_bitwise(states(step2.module), states(scratch.module))
    assert_bitwise(step2.artifacts, scratch.artifacts)


def test_a_batch_retrains_each_affected_shard_once(monkeypatch):
    from unbake.backends.local import LocalBackend

    calls = []
    real_map = LocalBackend.map

    def spy(self, fn, jobs):
        calls.append([(job.shard, job.start) for job in jobs])
        return real_map(self, fn, jobs)

    original = train_sisa()
    # eight samples spread over slices 1-3 of two shards
    forget_ids = [*ids_in(original, 0, 0)[:2], *ids_in(original, 0, 2)[:3]]
    forget_ids += [*ids_in(original, 2, 1)[:2], *ids_in(original, 2, 2)[:1]]
    monkeypatch.setattr(LocalBackend, "map", spy)
    result = unlearn(original, forget_ids)
    assert calls == [[(0, 0), (2, 1)]]  # one job per shard, from its earliest slice
    info = result.info
    assert info["shards_retrained"] == [0, 2]
    assert info["earliest_slice"] == {"0": 1, "2": 2}
    assert info["slices_retrained"] == 3 + 2
    assert 0 < info["cost_fraction"] < 1


def test_seed_argument_replays_the_models_own_seed():
    original = train_sisa()
    ids = [str(tiny_dataset().train.ids[0])]
    a = unlearn(original, ids).model
    b = METHODS.create("sisa").unlearn(
        UnlearnTask(original, *tiny_dataset().train.split(ids)), seed=99
    )
    assert b.info["seed"] == 0
    assert_bitwise(states(a.module), states(b.model.module))


def test_sisa_row_in_the_demo_comparison():
    ds = tiny_dataset()
    report = compare_methods(
        ds, methods=["sisa"], model="mlp", config=CFG, forget_fraction=0.05, seed=0
    )
    row = next(r for r in report.rows if r.method == "sisa")
    assert row.exact and "sisa(" in row.model
    assert row.avg_gap == pytest.approx(0.0, abs=1e-9)  # bitwise the retrain reference


# --- purge --------------------------------------------------------------------------


def _files(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _found(needle: bytes, files) -> list:
    return [p for p, data in files.items() if needle in data]


def test_forget_leaves_no_copy_of_the_forgotten_samples(workspace_dir):
    ds = tiny_dataset()
    ws = Workspace.create(workspace_dir, dataset=ds)
    try:
        params = {**SUBJECT_PARAMS, "slices": 2}
        first = apply.train(ws, model="mlp", config=CFG, strategy="sisa", strategy_params=params)
        forget_ids = [str(i) for i in ds.train.ids[:3]]
        rows = ds.train.mask_of(forget_ids)
        hashes = [
            hashlib.sha256(x.tobytes() + int(y).to_bytes(8, "little")).hexdigest().encode()
            for x, y in zip(ds.train.X[rows].reshape(3, -1), ds.train.y[rows], strict=True)
        ]
        raw = [x.tobytes() for x in ds.train.X[rows]]
        before = _files(workspace_dir)
        # the scanner works: the catalog holds each sample's content hash until it is forgotten
        assert all(_found(h, before) for h in hashes)
        assert len(list((workspace_dir / "checkpoints").iterdir())) == 1
        old_file = workspace_dir / ws.catalog.model(first)["checkpoint"]

        record = apply.forget(ws, ids=forget_ids, method="sisa")

        after = _files(workspace_dir)
        assert not any(_found(h, after) for h in hashes), "a content hash survived"
        assert not any(_found(x, after) for x in raw), "raw feature bytes survived"
        assert not old_file.exists()
        live = workspace_dir / ws.catalog.model(record.model_after)["checkpoint"]
        assert list((workspace_dir / "checkpoints").iterdir()) == [live]
        # the only live checkpoint is bitwise the SISA model trained without the samples
        _, retain = ds.train.split(forget_ids)
        scratch = train_sisa(retain, **params)
        model = ws.load_model(record.model_after)
        assert_bitwise(states(model.module), states(scratch.module))
        assert_bitwise(model.artifacts, scratch.artifacts)
        rows_left = ws.catalog.query(
            "SELECT subject, content_hash, status FROM samples WHERE sample_id IN (?, ?, ?)",
            tuple(forget_ids),
        )
        assert [tuple(r) for r in rows_left] == [(None, None, "forgotten")] * 3
        assert ws.log()[-1]["info"]["shards_retrained"]
    finally:
        ws.close()


# --- bad input ----------------------------------------------------------------------


def _snapshot(root):
    return workspace_snapshot(root)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"shards": 241, "assignment": "hash"}, "more than the 240 samples"),
        (
            {"shards": 13, "assignment": "subject"},
            "more than the 12 subjects and 0 samples without a subject",
        ),
        ({"slices": 0}, r"'slices' parameter of sisa must be an int in \[1, inf\). Got 0"),
        ({"aggregation": "median"}, "'aggregation' parameter of sisa"),
        ({"backend": "dask"}, "'backend' parameter of sisa"),
        ({"workers": 0}, "'workers' parameter of sisa"),
    ],
)
def test_bad_strategy_parameters_are_one_line_errors(params, match):
    with pytest.raises(InvalidParameterError, match=match) as info:
        train_sisa(**params)
    assert "\n" not in str(info.value)


def test_a_shard_left_empty_by_chance_is_rejected():
    train = tiny_dataset().train
    few = train.subset(np.arange(6))
    seed = next(
        s
        for s in range(50)
        if ShardLayout.of(few, shards=5, slices=1, assignment="hash", seed=s).sizes().min() == 0
    )
    with pytest.raises(InvalidParameterError, match="gets no samples"):
        train_sisa(few, seed=seed, shards=5, slices=1, assignment="hash")


def test_a_request_that_empties_a_shard_changes_nothing(workspace_dir):
    ds = tiny_dataset()
    ws = Workspace.create(workspace_dir, dataset=ds)
    try:
        apply.train(ws, model="mlp", config=CFG, strategy="sisa", strategy_params=PARAMS)
        model = ws.load_model()
        layout = SISA(**model.strategy_params).layout(ds.train, 0)
        shard_ids = [str(i) for i in ds.train.ids[layout.shard == 1]]
        snap = _snapshot(workspace_dir)
        with pytest.raises(UnsupportedModelError, match="empties shard 1 of 4") as info:
            apply.forget(ws, ids=shard_ids, method="sisa")
        assert "\n" not in str(info.value)
        assert _snapshot(workspace_dir) == snap
    finally:
        ws.close()


def test_sisa_method_on_a_monolithic_model_changes_nothing(workspace_dir):
    ws = Workspace.create(workspace_dir, dataset=tiny_dataset())
    try:
        apply.train(ws, model="mlp", config=CFG)
        snap = _snapshot(workspace_dir)
        with pytest.raises(UnsupportedModelError, match="needs a model trained with --strategy"):
            apply.forget(ws, ids=[str(tiny_dataset().train.ids[0])], method="sisa")
        assert _snapshot(workspace_dir) == snap
    finally:
        ws.close()


def test_forget_and_retain_must_be_the_models_training_data():
    original = train_sisa()
    train = tiny_dataset().train
    forget, retain = train.split([str(train.ids[0])])
    with pytest.raises(IntegrityError, match="differ from the data shard"):
        METHODS.create("sisa").unlearn(UnlearnTask(original, forget, retain.subset(slice(1, None))))


def test_cli_trains_and_forgets_with_sisa(tmp_path):
    runner = CliRunner()
    ws = str(tmp_path / "ws")
    out = runner.invoke(
        app,
        [
            "train",
            "--workspace",
            ws,
            "--dataset",
            "digits",
            "--model",
            "logreg",
            "--strategy",
            "sisa",
            "--shards",
            "3",
            "--slices",
            "2",
            "--epochs",
            "1",
            "--backend",
            "local",
            "--workers",
            "1",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "logreg/sisa(shards=3,slices=2)" in out.output
    out = runner.invoke(
        app, ["forget", "--workspace", ws, "--ids", "digits-0001", "--method", "sisa", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert '"shards_retrained"' in out.output
    bad = runner.invoke(app, ["train", "--workspace", ws, "--strategy", "sisa", "--slices", "0"])
    assert bad.exit_code == 2 and "'slices' parameter of sisa" in bad.output


def test_key_hash_is_pinned_and_independent_of_the_other_keys():
    from unbake.families.sisa import fnv1a

    # the published FNV-1a 64-bit value of "a": the layout must not change across versions
    assert int(fnv1a(np.array(["a"]))[0]) == 0xAF63DC4C8601EC8C
    alone = fnv1a(np.array(["digits-0001"]))
    among = fnv1a(np.array(["x", "digits-0001", "a-much-longer-sample-identifier-é"]))
    assert alone[0] == among[1]
