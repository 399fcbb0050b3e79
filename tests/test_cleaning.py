"""Planted attacks, detectors scored against them, and `unbake clean` end to end."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.data import load_dataset
from unbake.data.poison import PoisonSpec, apply_poison, attack_success_rate, planted, triggered
from unbake.evaluation.detectors import DETECTORS, detection_scores
from unbake.exceptions import InvalidParameterError, UnknownNameError
from unbake.service import apply
from unbake.service.cleaning import clean
from unbake.testing.snapshot import workspace_snapshot
from unbake.training import TrainConfig, fit
from unbake.workspace import Workspace

BACKDOOR = "backdoor:fraction=0.05,target=0,size=3"
FLIP = "flip:fraction=0.3,source=3,target=8"


@pytest.fixture(scope="module")
def clean_digits():
    return load_dataset("digits")


# --- planted attacks -------------------------------------------------------------------


def test_backdoor_stamps_and_relabels_only_the_planted_training_rows(clean_digits):
    ds = load_dataset("digits", poison=BACKDOOR)
    p = planted(ds)
    mask = ds.train.mask_of(p.ids)
    assert mask.sum() == len(p.ids) == round(0.05 * (clean_digits.train.y != 0).sum())
    assert (clean_digits.train.y[mask] != 0).all() and (ds.train.y[mask] == 0).all()
    assert (ds.train.X[mask][:, :, -3:, -3:] == 1.0).all()
    np.testing.assert_array_equal(ds.train.X[~mask], clean_digits.train.X[~mask])
    np.testing.assert_array_equal(ds.train.y[~mask], clean_digits.train.y[~mask])
    np.testing.assert_array_equal(ds.test.X, clean_digits.test.X)  # held-out stays clean
    np.testing.assert_array_equal(ds.val.X, clean_digits.val.X)


def test_flip_relabels_a_fraction_of_one_class(clean_digits):
    ds = load_dataset("digits", poison=FLIP)
    p = planted(ds)
    mask = ds.train.mask_of(p.ids)
    assert (clean_digits.train.y[mask] == 3).all() and (ds.train.y[mask] == 8).all()
    assert len(p.ids) == round(0.3 * (clean_digits.train.y == 3).sum())
    np.testing.assert_array_equal(ds.train.X, clean_digits.train.X)


def test_planting_is_seeded_and_reloads_identically_from_the_spec():
    a = load_dataset("digits", poison=BACKDOOR)
    spec = dict(a.spec)
    b = load_dataset(spec.pop("name"), **spec)  # what a workspace does on reopening
    assert planted(a) == planted(b)
    np.testing.assert_array_equal(a.train.X, b.train.X)
    other = load_dataset("digits", poison=BACKDOOR + ",seed=1")
    assert set(planted(other).ids) != set(planted(a).ids)


def test_a_changed_source_is_refused_on_reload():
    spec = dict(load_dataset("digits", poison=BACKDOOR).spec)
    spec["poison_ids"] = '["digits-0000"]'
    with pytest.raises(Exception, match="no longer selects"):
        load_dataset(spec.pop("name"), **spec)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("backdoor:fraction=0.05,target=0,size=9", "larger than the input"),
        ("backdoor:fraction=0,target=0", "(0, 1)"),
        ("backdoor:fraction=1.5,target=0", "(0, 1)"),
        ("flip:fraction=0.1,source=3,target=3", "same"),
        ("flip:fraction=0.1,source=3", "needs target"),
        ("backdoor:fraction=0.1,target=12", "not a class index"),
        ("backdoor:fraction=x,target=0", "not a number"),
        ("trojan:fraction=0.1", "Unknown poison"),
        ("backdoor:fraction=0.1,target=0,colour=red", "colour"),
    ],
)
def test_bad_attacks_are_refused_in_one_line(clean_digits, text, fragment):
    with pytest.raises(InvalidParameterError, match=None) as info:
        apply_poison(clean_digits, text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_attack_success_rate_counts_triggered_other_class_predictions(clean_digits):
    p = planted(load_dataset("digits", poison=BACKDOOR))
    trig = triggered(clean_digits.test, p)
    assert len(trig) == (clean_digits.test.y != 0).sum()
    assert (trig.X[:, :, -3:, -3:] == 1.0).all()

    def always(label):
        return lambda X: np.eye(10)[np.full(len(X), label)]

    assert attack_success_rate(always(0), clean_digits.test, p) == 1.0
    assert attack_success_rate(always(5), clean_digits.test, p) == 0.0
    flip = planted(load_dataset("digits", poison=FLIP))
    with pytest.raises(InvalidParameterError, match="backdoor"):
        attack_success_rate(always(0), clean_digits.test, flip)


def test_a_flip_built_without_a_source_class_is_refused_in_one_line(clean_digits):
    spec = PoisonSpec("flip", 0.1, target=3)  # built directly: parse() needs source=
    with pytest.raises(InvalidParameterError, match="names no source class") as info:
        apply_poison(clean_digits, spec)
    assert "\n" not in str(info.value)


def test_the_cleaning_benchmark_refuses_data_without_a_planted_attack(clean_digits):
    from unbake.bench.cleaning import _planted
    from unbake.exceptions import UnbakeError

    with pytest.raises(UnbakeError, match="no planted attack"):
        _planted(clean_digits)
    assert _planted(load_dataset("digits", poison=FLIP)).spec.kind == "flip"


def test_poison_spec_round_trips():
    spec = PoisonSpec.parse(FLIP)
    assert PoisonSpec.parse(str(spec)) == spec


# --- detectors ---------------------------------------------------------------------------


def _scores(poison, model, names=tuple(DETECTORS)):
    ds = load_dataset("digits", poison=poison)
    p = planted(ds)
    m = fit(
        ds.train,
        n_classes=10,
        model=model,
        config=TrainConfig.parse(epochs=20),
        seed=0,
        strategy_params={"checkpoints": 4},
    )
    n = len(p.ids)
    out = {}
    for name in names:
        s = DETECTORS.create(name).score(m, ds.train)
        assert s.shape == (len(ds.train),) and np.isfinite(s).all()
        out[name] = detection_scores(s, ds.train.ids, p.ids, [n, 2 * n])
    return out, n


def test_detectors_find_a_label_flip():
    # Measured (mlp, 20 epochs, seed 0): recall@2x loss 0.78, self-influence 0.81, tracin
    # (4 checkpoints) 0.84; AUROC 0.97, 0.97, 0.98. The band leaves room for thread-count
    # noise; chance would be 2x/n_train ≈ 0.06.
    out, n = _scores(FLIP, "mlp", ("loss", "self-influence", "tracin"))
    for name in ("loss", "self-influence", "tracin"):
        assert out[name][f"recall@{2 * n}"] >= 0.6, (name, out[name])
        assert out[name]["auroc"] >= 0.9, (name, out[name])


def test_the_best_detector_finds_a_backdoor():
    # Measured (cnn, 20 epochs) for attack and training seeds 0, 1, 2: activation
    # clustering's recall at 2x the poison count is 0.98, 1.00 and 0.91; loss, spectral
    # signatures and self-influence stay under 0.25 on this small 8x8 trigger.
    # tracin (4 checkpoints on this cnn: recall 0.12) runs in the slow quick-bench test.
    out, n = _scores(BACKDOOR, "cnn", tuple(d for d in DETECTORS if d != "tracin"))
    best = max(out, key=lambda name: out[name][f"recall@{2 * n}"])
    assert best == "activation-clustering", out
    assert out[best][f"recall@{2 * n}"] >= 0.85, out
    assert out[best]["auroc"] >= 0.9, out


def test_detection_scores_need_both_planted_and_clean_rows():
    with pytest.raises(InvalidParameterError, match="planted"):
        detection_scores(np.ones(3), ["a", "b", "c"], ["z"], [1])


def test_detector_parameters_are_checked():
    with pytest.raises(InvalidParameterError, match="'components' parameter"):
        DETECTORS.create("activation-clustering", components=0)
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        DETECTORS.create("self-influence", batch_size=-1)


def test_unknown_detector_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="activation-clustering"):
        DETECTORS.create("nope")


# --- unbake clean ------------------------------------------------------------------------


def _snapshot(root):
    return workspace_snapshot(root, skip=(".lock",))


@pytest.fixture(scope="module")
def poisoned_template(tmp_path_factory):
    """A digits workspace with a planted backdoor and a CNN trained on it, once a module."""
    root = tmp_path_factory.mktemp("poisoned") / "ws"
    ws = Workspace.create(root, dataset="digits", dataset_options={"poison": BACKDOOR})
    apply.train(ws, model="cnn", config=TrainConfig.parse(epochs=20))
    ws.close()
    return root


@pytest.fixture
def poisoned_ws(poisoned_template, tmp_path):
    """A fresh copy of :func:`poisoned_template` (training is seeded: the same bytes)."""
    root = tmp_path / "ws"
    shutil.copytree(poisoned_template, root)
    return root


def test_clean_removes_the_backdoor_through_one_logged_request(poisoned_ws):
    with Workspace.open(poisoned_ws) as ws:
        n = len(planted(ws.dataset()).ids)
        report = clean(ws, detect="activation-clustering", budget=2 * n)
        log = ws.log()
    # Measured: ASR 83% before, 0% after exact retraining without the 2x suspects.
    assert report.method == "retrain"
    assert report.asr_before > 50 and report.asr_after < 10, report
    assert report.ta_after > 85, report
    assert report.detection[f"recall@{2 * n}"] >= 0.85
    assert [r["request_id"] for r in log] == [report.request_id]
    assert log[0]["info"]["reason"] == "cleaning" and log[0]["n_samples"] == 2 * n

    res = CliRunner().invoke(app, ["log", "--workspace", str(poisoned_ws)])
    assert res.exit_code == 0 and f"cleaning ({2 * n} suspects)" in res.output
    res = CliRunner().invoke(app, ["status", "--workspace", str(poisoned_ws)])
    assert res.exit_code == 0 and "Planted attack: backdoor:" in res.output
    assert f"({n} training samples)" in res.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--detect", "loss", "--budget", "0"], "between 1 and"),
        (["--detect", "loss", "--budget", "100000"], "between 1 and"),
        (["--detect", "nope", "--budget", "5"], "Unknown detector"),
        (["--detect", "spectral", "--budget", "5", "--detector-param", "k=2"], "no parameter"),
        (["--detect", "loss", "--budget", "5", "--method", "nope"], "Unknown unlearning method"),
    ],
)
def test_clean_bad_input_is_one_line_and_changes_nothing(poisoned_ws, args, fragment):
    before = _snapshot(poisoned_ws)
    res = CliRunner().invoke(app, ["clean", "--workspace", str(poisoned_ws), *args])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and fragment in err, err
    assert _snapshot(poisoned_ws) == before


def test_train_poison_bad_input_leaves_no_workspace(tmp_path):
    root = tmp_path / "ws"
    res = CliRunner().invoke(
        app, ["train", "--workspace", str(root), "--poison", "backdoor:fraction=2,target=0"]
    )
    assert res.exit_code == 2 and "(0, 1)" in res.stderr, res.output
    assert not root.exists()


# --- unbake bench cleaning ----------------------------------------------------------------


def test_bench_compares_only_approximate_array_methods():
    from unbake.bench.cleaning import approximate_methods

    names = approximate_methods()
    assert "finetune" in names and "scrub" in names
    assert not {"retrain", "sisa", "certified", "llm_ga"} & set(names)


def test_bench_summary_checks_the_targets_and_names_failing_methods():
    from unbake.bench.cleaning import _summary, _targets

    def row(method, asr, ta):
        return {"method": method, "asr": asr, "ta": ta}

    removal = [
        row("original", 80.0, 90.0),
        row("retrain (detected)", 3.0, 90.0),
        row("retrain (oracle)", 0.0, 91.0),
        row("retrain (oracle, seed + 1)", 0.5, 90.0),
        row("keeps-a-little", 10.0, 89.0),
        row("keeps-it", 10.5, 89.5),
        row("breaks-the-model", 0.0, 84.0),
    ]
    s = _summary("backdoor", {"detector": "d", "recall_2x": 0.85}, removal, 1.0)
    assert (s["asr_original"], s["asr_exact_after"], s["asr_oracle"]) == (80.0, 3.0, 0.0)
    assert s["asr_noise_floor"] == 0.5 and "retrain (oracle, seed + 1)" not in s["asr_by_method"]
    assert s["failing"]["methods"] == ["keeps-it"] and s["failing"]["margin_points"] == 10
    assert s["damaging"]["methods"] == ["breaks-the-model"]
    assert (s["best_approximate"], s["best_approximate_asr"]) == ("breaks-the-model", 0.0)
    targets = _targets(s)
    assert not targets["recall_at_2x"]["met"] and not targets["asr_exact_vs_oracle"]["met"]
    assert targets["asr_exact_vs_oracle"]["value"] == 3.0


@pytest.mark.slow
def test_bench_cleaning_quick(tmp_path):
    from unbake.bench import run_benchmark

    out = run_benchmark("cleaning", quick=True, out=tmp_path / "c.json")
    s = out["summary"]
    # Measured on digits (cnn, seed 0; benchmarks/results/cleaning-quick.json): ASR 100% →
    # 0% after exact removal; oracle 0%; ssd (90%) and influence (80%) leave the backdoor
    # in place, scrub (1.5%, since its max_steps cap) removes it.
    assert s["best_detector"] == "activation-clustering" and s["best_recall_at_2x"] >= 0.85
    assert s["asr_original"] > 50 and s["targets"]["asr_exact_vs_oracle"]["met"]
    assert {"ssd", "influence"} <= set(s["failing"]["methods"])
    assert "scrub" not in s["failing"]["methods"]
    for attack, key, part in (("backdoor", "asr", s), ("flip", "flip_rate", s["flip"])):
        removal = [r for r in out["rows"] if r["table"] == "removal" and r["attack"] == attack]
        assert [r["method"] for r in removal[:4]] == [
            "original",
            "retrain (detected)",
            "retrain (oracle)",
            "retrain (oracle, seed + 1)",
        ]
        approx, limit = removal[4:], removal[2][key] + part["failing"]["margin_points"]
        assert part[f"best_approximate_{key}"] == min(r[key] for r in approx)
        assert part["failing"]["methods"] == [r["method"] for r in approx if r[key] > limit]
    assert {r["detector"] for r in out["rows"] if r["table"] == "detection"} >= {"tracin"}
    # Each detector and method has its own peak memory, and the run's covers them all.
    peaks = [r["peak_rss_mib"] for r in out["rows"] if r.get("method") != "original"]
    assert all(p > 0 for p in peaks) and out["memory"]["peak_rss_mib"] >= max(peaks)


def test_a_backdoor_on_tabular_rows_sets_the_last_features():
    from unbake.data import Dataset, Samples

    rng = np.random.default_rng(0)
    X, y = rng.random((60, 5)).astype(np.float32), np.arange(60) % 3
    ds = Dataset("t", Samples.build(X[:40], y[:40]), Samples.build(X[40:], y[40:]), 3)
    poisoned, plant = apply_poison(ds, "backdoor:fraction=0.25,target=1,size=2,value=9")
    rows = poisoned.train.mask_of(plant.ids)
    assert rows.sum() == round(0.25 * (y[:40] != 1).sum())
    assert (poisoned.train.X[rows][:, -2:] == 9).all()
    np.testing.assert_array_equal(poisoned.train.X[rows][:, :3], X[:40][rows][:, :3])
    with pytest.raises(InvalidParameterError, match="larger than the input"):
        apply_poison(ds, "backdoor:fraction=0.25,target=1,size=6")
