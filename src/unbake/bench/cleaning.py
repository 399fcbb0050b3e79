"""``unbake bench cleaning``: find planted poison, unlearn it, and measure the harm left.

For each attack (a backdoor, and label flips in one class) every detector's precision
and recall at k = 1× and 2× the poison count, and its AUROC. For the backdoor, the best
detector's top 2× is removed by every method; each row gives the attack success rate
(ASR), clean test accuracy, seconds and the fraction of retraining time, beside the
original, retraining without the detected set, and the oracle (retraining without the
true poison). After Pawelczyk et al., "Machine Unlearning Fails to Remove Data
Poisoning Attacks" (ICLR 2025).
"""

from __future__ import annotations

from typing import Any

from unbake.bench import BENCHMARKS
from unbake.data import Dataset, load_dataset
from unbake.data.poison import attack_success_rate, planted
from unbake.evaluation.detectors import DETECTORS, detection_scores, top_k
from unbake.evaluation.utility import accuracy
from unbake.methods import METHODS, UnlearnTask
from unbake.training import TrainConfig, TrainedModel, fit

__all__ = ["approximate_methods", "cleaning_benchmark"]


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


def _harm(model: TrainedModel, ds: Dataset) -> dict[str, float]:
    plant = planted(ds)
    return {
        "ta": round(accuracy(model, ds.test), 2),
        "asr": round(
            100 * attack_success_rate(lambda X: model.log_proba(X).numpy(), ds.test, plant), 2
        ),
    }


def _detect(ds: Dataset, model: TrainedModel, attack: str) -> tuple[list[dict], dict]:
    """One row per detector; and each detector's scores."""
    ids = planted(ds).ids
    n = len(ids)
    rows, scores = [], {}
    for name in DETECTORS:
        scores[name] = DETECTORS.create(name).score(model, ds.train)
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
            }
        )
    return rows, scores


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
    rows: list[dict[str, Any]] = []
    flipped = load_dataset(name, poison=flip, **options)
    flip_model = fit(flipped.train, n_classes=flipped.n_classes, model="cnn", config=config)
    rows += _detect(flipped, flip_model, "flip")[0]

    ds = load_dataset(name, poison=backdoor, **options)
    original = fit(ds.train, n_classes=ds.n_classes, model="cnn", config=config, seed=seed)
    det_rows, scores = _detect(ds, original, "backdoor")
    rows += det_rows
    best = max(det_rows, key=lambda r: (r["recall_2x"], r["auroc"]))
    k = 2 * best["poison_count"]
    suspects = top_k(scores[best["detector"]], ds.train.ids, k)
    task = UnlearnTask(original, *ds.train.split(suspects))
    oracle_task = UnlearnTask(original, *ds.train.split(planted(ds).ids))

    retrain = METHODS.create("retrain").unlearn(task, seed=seed)
    oracle = METHODS.create("retrain").unlearn(oracle_task, seed=seed)
    removal = [
        {"method": "original", "seconds": 0.0, **_harm(original, ds)},
        {
            "method": "retrain (detected)",
            "seconds": round(retrain.seconds, 3),
            **_harm(retrain.model, ds),
        },
        {
            "method": "retrain (oracle)",
            "seconds": round(oracle.seconds, 3),
            **_harm(oracle.model, ds),
        },
    ]
    for method in approximate_methods():
        result = METHODS.create(method).unlearn(task, seed=seed)
        removal.append(
            {"method": method, "seconds": round(result.seconds, 3), **_harm(result.model, ds)}
        )
    for row in removal:
        row["table"] = "removal"
        row["fraction_of_retrain"] = (
            round(row["seconds"] / retrain.seconds, 4) if row["method"] != "original" else None
        )
    rows += removal
    approx = removal[3:]
    best_approx = min(approx, key=lambda r: r["asr"]) if approx else None
    return {
        "dataset": ds.name,
        "config": {
            "model": "cnn",
            "train": config.model_dump(),
            "backdoor": backdoor,
            "flip": flip,
            "seed": seed,
            "k": k,
        },
        "rows": rows,
        "summary": {
            "best_detector": best["detector"],
            "best_recall_at_2x": best["recall_2x"],
            "asr_original": removal[0]["asr"],
            "asr_exact_after": removal[1]["asr"],
            "asr_oracle": removal[2]["asr"],
            "best_approximate": best_approx["method"] if best_approx else None,
            "best_approximate_asr": best_approx["asr"] if best_approx else None,
        },
    }
