"""``unbake bench cleaning``: find planted poison, unlearn it, and measure the harm left.

Two attacks, each on its own copy of the dataset: a backdoor, and label flips in one
class. For each, one original model is trained (keeping checkpoints for ``tracin``)
and every detector ranks its training set: precision and recall at k = 1× and 2× the
poison count, AUROC and seconds. The best detector's top 2× is then removed by
retraining without it (timed once), every approximate method unlearns the same
suspects from that one original, and the oracle retrains without the true poison
(timed once; and once more with the next seed, the noise floor). Each row gives the harm left beside the clean test accuracy: for the
backdoor the attack success rate (ASR); for the flips the accuracy on the source
class and the share of it classified as the target (flip rate); and seconds and the
fraction of the detected-set retrain's time.

The summary checks the issue's targets (the best detector's recall at 2× ≥ 0.9 on the
backdoor; the ASR after exact removal of the detected set within 2 points of the
oracle's) and names the methods that leave the harm in place: an ASR (flip rate) more
than ``FAIL_MARGIN`` points above the oracle's. After Pawelczyk et al., "Machine
Unlearning Fails to Remove Data Poisoning Attacks" (ICLR 2025).
"""

from __future__ import annotations

import time
from typing import Any

from unbake.bench import BENCHMARKS
from unbake.bench.memory import peak_rss
from unbake.data import Dataset, load_dataset
from unbake.data.poison import Planted, planted
from unbake.evaluation.detectors import DETECTORS, attack_harm, detection_scores, top_k
from unbake.exceptions import UnbakeError
from unbake.methods import METHODS, UnlearnTask
from unbake.training import TrainConfig, TrainedModel, fit

__all__ = ["FAIL_MARGIN", "approximate_methods", "cleaning_benchmark"]

#: The issue's targets on the backdoor.
RECALL_TARGET = 0.9
EXACT_WITHIN = 2.0
#: A method fails to remove an attack when its harm (ASR, or flip rate) stays more than
#: this many points above the oracle's.
FAIL_MARGIN = {"asr": 10.0, "flip_rate": 5.0}
#: And it damages the model when its clean TA falls this many points below the exact
#: removal's.
DAMAGE_MARGIN = 5.0
#: Checkpoints kept during the original's training for the ``tracin`` detector.
CHECKPOINTS = 5
#: The noise floor: the oracle retrained with another seed.
NOISE_FLOOR = "retrain (oracle, seed + 1)"
#: The harm each attack leaves, by the key of :func:`attack_harm`.
HARM = {"backdoor": "asr", "flip": "flip_rate"}


def approximate_methods() -> list[str]:
    """Every registered approximate method for classifiers that needs no special strategy."""
    return [
        n
        for n in METHODS.available()
        if "arrays" in (t := METHODS.get(n).tags).inputs
        and not t.exact
        and not t.certified
        and t.requires_strategy is None
    ]


def _planted(ds: Dataset) -> Planted:
    """What was planted in ``ds``; clean data raises (the benchmark poisons it first)."""
    plant = planted(ds)
    if plant is None:
        raise UnbakeError(f"{ds.name} has no planted attack; load it with poison=.")
    return plant


def _harm(model: TrainedModel, ds: Dataset) -> dict[str, float]:
    return {k: round(v, 2) for k, v in attack_harm(model, ds.test, planted(ds)).items()}


def _detect(ds: Dataset, model: TrainedModel, attack: str) -> tuple[list[dict], dict]:
    """One row per detector; and each detector's scores."""
    ids = _planted(ds).ids
    n = len(ids)
    rows, scores = [], {}
    for name in DETECTORS:
        start = time.perf_counter()
        with peak_rss() as peak:
            scores[name] = DETECTORS.create(name).score(model, ds.train)
        seconds = time.perf_counter() - start
        s = detection_scores(scores[name], ds.train.ids, ids, [n, 2 * n])
        rows.append(
            {
                "table": "detection",
                "attack": attack,
                "detector": name,
                "poison_count": n,
                "precision_1x": round(s[f"precision@{n}"], 3),
                "recall_1x": round(s[f"recall@{n}"], 3),
                "precision_2x": round(s[f"precision@{2 * n}"], 3),
                "recall_2x": round(s[f"recall@{2 * n}"], 3),
                "auroc": round(s["auroc"], 3),
                "seconds": round(seconds, 3),
                "peak_rss_mib": peak.mib,
            }
        )
    return rows, scores


def _attack(
    ds: Dataset, attack: str, config: TrainConfig, seed: int
) -> tuple[list[dict], dict[str, Any]]:
    """Detection and removal rows for one attack, and its part of the summary."""
    start = time.perf_counter()
    original = fit(
        ds.train,
        n_classes=ds.n_classes,
        model="cnn",
        config=config,
        seed=seed,
        strategy_params={"checkpoints": CHECKPOINTS},
    )
    train_seconds = time.perf_counter() - start
    det_rows, scores = _detect(ds, original, attack)
    best = max(det_rows, key=lambda r: (r["recall_2x"], r["auroc"]))
    suspects = top_k(scores[best["detector"]], ds.train.ids, 2 * best["poison_count"])
    task = UnlearnTask(original, *ds.train.split(suspects))
    oracle_task = UnlearnTask(original, *ds.train.split(_planted(ds).ids))

    runs = [
        ("retrain (detected)", "retrain", task, seed),
        ("retrain (oracle)", "retrain", oracle_task, seed),
        (NOISE_FLOOR, "retrain", oracle_task, seed + 1),
        *((m, m, task, seed) for m in approximate_methods()),
    ]
    removal: list[dict[str, Any]] = [
        {"method": "original", "seconds": 0.0, "peak_rss_mib": None, **_harm(original, ds)}
    ]
    for label, method, run_task, run_seed in runs:
        with peak_rss() as peak:
            result = METHODS.create(method).unlearn(run_task, seed=run_seed)
        removal.append(
            {
                "method": label,
                "seconds": round(result.seconds, 3),
                "peak_rss_mib": peak.mib,
                **_harm(result.model, ds),
            }
        )
    retrain_seconds = removal[1]["seconds"]
    for row in removal:
        row["table"] = "removal"
        row["attack"] = attack
        row["fraction_of_retrain"] = (
            round(row["seconds"] / retrain_seconds, 4) if row["method"] != "original" else None
        )
    return [*det_rows, *removal], _summary(attack, best, removal, train_seconds)


def _summary(attack: str, best: dict, removal: list[dict], train_seconds: float) -> dict[str, Any]:
    key = HARM[attack]
    original, exact, oracle, floor, *approx = removal
    margin = FAIL_MARGIN[key]
    best_approx = min(approx, key=lambda r: r[key]) if approx else None
    out: dict[str, Any] = {
        "best_detector": best["detector"],
        "best_recall_at_2x": best["recall_2x"],
        "original_train_seconds": round(train_seconds, 3),
        f"{key}_original": original[key],
        f"{key}_exact_after": exact[key],
        f"{key}_oracle": oracle[key],
        f"{key}_noise_floor": floor[key],
        "best_approximate": best_approx["method"] if best_approx else None,
        f"best_approximate_{key}": best_approx[key] if best_approx else None,
        f"{key}_by_method": {r["method"]: r[key] for r in approx},
        "failing": {
            "rule": f"{key} more than {margin:g} points above the oracle's "
            f"({oracle[key]:g}), i.e. above {oracle[key] + margin:g}",
            "margin_points": margin,
            "methods": [r["method"] for r in approx if r[key] > oracle[key] + margin],
        },
        "damaging": {
            "rule": f"clean TA more than {DAMAGE_MARGIN:g} points below the exact removal's "
            f"({exact['ta']:g})",
            "margin_points": DAMAGE_MARGIN,
            "methods": [r["method"] for r in approx if r["ta"] < exact["ta"] - DAMAGE_MARGIN],
        },
    }
    if attack == "flip":
        out |= {
            f"source_acc_{name}": row["source_acc"]
            for name, row in (("original", original), ("exact_after", exact), ("oracle", oracle))
        }
    return out


def _targets(s: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on the backdoor, each with its threshold and whether it is met."""
    gap = round(abs(s["asr_exact_after"] - s["asr_oracle"]), 2)
    return {
        "recall_at_2x": {
            "target": f">= {RECALL_TARGET}",
            "value": s["best_recall_at_2x"],
            "met": s["best_recall_at_2x"] >= RECALL_TARGET,
        },
        "asr_exact_vs_oracle": {
            "target": f"within {EXACT_WITHIN:g} points",
            "value": gap,
            "met": gap <= EXACT_WITHIN,
        },
    }


@BENCHMARKS.register("cleaning")
def cleaning_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Fashion-MNIST with the cnn (backdoor on 1%, flips on 10% of one class); digits
    under ``--quick`` (a 3×3 trigger on 5%: digits' 8×8 images need a larger share to
    plant a backdoor a small model learns)."""
    if quick:
        name, options = "digits", {}
        backdoor = "backdoor:fraction=0.05,target=0,size=3"
        config = TrainConfig.parse(epochs=20)
    else:
        name, options = "fashion-mnist", {"data_dir": data_dir}
        backdoor = "backdoor:fraction=0.01,target=0,size=3"
        config = TrainConfig.parse(epochs=10, batch_size=128)
    flip = "flip:fraction=0.1,source=3,target=8"
    seed = 0
    flip_rows, flip_summary = _attack(
        load_dataset(name, poison=flip, **options), "flip", config, seed
    )
    ds = load_dataset(name, poison=backdoor, **options)
    rows, summary = _attack(ds, "backdoor", config, seed)
    summary["targets"] = _targets(summary)
    summary["flip"] = flip_summary
    return {
        "dataset": ds.name,
        "config": {
            "model": "cnn",
            "train": config.model_dump(),
            "checkpoints": CHECKPOINTS,
            "backdoor": backdoor,
            "flip": flip,
            "seed": seed,
            "k": "2x the poison count",
        },
        "rows": flip_rows + rows,
        "summary": summary,
    }
