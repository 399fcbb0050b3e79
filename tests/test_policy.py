"""The deletion policy: its file format, its checks against a model, and its executor."""

import json
from pathlib import Path

import pytest
import torch

from unbake.exceptions import InvalidParameterError, UnsupportedModelError
from unbake.service.policy import (
    BatchWindow,
    ModelInfo,
    check_policy,
    load_policy,
    parse_policy,
)
from unbake.service.policy_executor import Outcome, PolicyFailedError, run_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "policy.toml"
BATCH = "[batch]\nmax_requests = 4\nmax_seconds = 30\n"
MLP = ModelInfo("mlp")


def policy(sections: str, head: str = "") -> object:
    return parse_policy(head + BATCH + sections, source="p.toml")


DEFAULT = """
[models.default]
fallback = "retrain"
[[models.default.steps]]
method = "finetune"
params = { epochs = 2, lr = 0.001 }
thresholds = { ra = { min = 90 }, mia = { max = 60 } }
[[models.default.steps]]
method = "scrub"
thresholds = { ra = { min = 80 } }
"""


# --- the file ---------------------------------------------------------------------------


def test_the_example_policy_loads_and_plans_in_order():
    p = load_policy(EXAMPLE)
    assert p.version == 1 and p.deadline_days == 30
    assert (p.batch.max_requests, p.batch.max_seconds) == (16, 60.0)
    name, section = p.section_for(MLP)
    assert name == "default"
    plan = section.plan()
    assert [s.method for s in plan] == ["finetune", "scrub", "retrain"]
    assert [s.fallback for s in plan] == [False, False, True]
    assert plan[0].params == {"epochs": 2, "lr": 0.001}
    assert plan[0].thresholds["mia"].max == 60
    assert p.section_for(ModelInfo("mlp", "sisa"))[1].fallback == "sisa"


@pytest.mark.parametrize(
    "text, fragments",
    [
        (DEFAULT.replace("fallback =", "fallbak ="), ["models.default.fallbak", "spelling"]),
        ("[models.default]\nsteps = []\n", ["models.default.fallback is missing", "add it"]),
        ('[models.default]\nfallback = "finetune"\n', ["approximate", "must be exact", "retrain"]),
        ('[models.default]\nfallback = "sisa"\n', ["--strategy sisa", 'strategy = "sisa"']),
        (DEFAULT.replace('"scrub"', '"scrubb"'), ["steps[1].method", "Unknown", "scrub"]),
        (DEFAULT.replace("lr = 0.001", "lr = -1"), ["steps[0].params", "'lr'", "Got -1"]),
        (DEFAULT.replace("lr = 0.001", "lr = '1e-3'"), ["steps[0].params", "'lr'", "float"]),
        (DEFAULT.replace("lr = 0.001", "lrr = 1"), ["steps[0].params", "no parameter 'lrr'"]),
        (DEFAULT.replace("mia = {", "acc = {"), ["steps[0].thresholds", "'acc'", "mia_lr"]),
        (DEFAULT.replace("max = 60", "mx = 60"), ["thresholds.mia.mx", "allowed: min, max"]),
        (DEFAULT.replace("max = 60", "min = 70, max = 60"), ["thresholds.mia", "swap"]),
        (DEFAULT.replace("{ max = 60 }", "{}"), ["thresholds.mia", "min, max or both"]),
        (DEFAULT.replace("max = 60", "max = nan"), ["thresholds.mia", "finite"]),
        (DEFAULT.replace("max = 60", 'max = "60"'), ["thresholds.mia.max", "valid number"]),
        ('[models.a]\nmatch = { strategy = "sisaa" }\nfallback = "retrain"\n', ["sisaa"]),
        ('[models.a]\nmatch = { architecture = "vit" }\nfallback = "retrain"\n', ["'vit'"]),
        ('[models.a]\nfallback = "retrain"\n[models.b]\nfallback = "retrain"\n', ["same models"]),
        (
            '[models.a]\nfallback = "retrain"\n[[models.a.steps]]\nmethod = "certified"\n',
            ["steps[0] 'certified'", "--strategy certified", "drop the step"],
        ),
        ("", ["models is missing"]),
        ("[models]\n", ["models", "at least 1"]),
        ("[models.default\n", ["not valid TOML", "line"]),
    ],
)
def test_every_mistake_is_one_line_naming_the_key_and_the_fix(text, fragments):
    with pytest.raises(InvalidParameterError) as info:
        policy(text)
    message = str(info.value)
    assert message.startswith("p.toml") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "head, fragment",
    [
        ("version = 2\n", "version"),
        ("deadline_days = 0\n", "deadline_days"),
        ("deadline_days = 400\n", "art. 12(3)"),
        ("colour = 1\n", "unknown key colour"),
    ],
)
def test_top_level_keys(head, fragment):
    with pytest.raises(InvalidParameterError, match=r"p\.toml") as info:
        policy(DEFAULT, head=head)
    assert fragment in str(info.value)


def test_batch_window_is_validated_and_decides_when_a_batch_is_due():
    with pytest.raises(InvalidParameterError, match=r"batch\.max_requests"):
        parse_policy("[batch]\nmax_requests = 0\nmax_seconds = 5\n" + DEFAULT)
    with pytest.raises(InvalidParameterError, match="batch is missing"):
        parse_policy(DEFAULT)
    window = BatchWindow(max_requests=3, max_seconds=10)
    assert not window.due(0, 99.0)  # nothing queued
    assert not window.due(2, 9.9)
    assert window.due(3, 0.0) and window.due(1, 10.0)


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(InvalidParameterError, match="Cannot read the policy"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(InvalidParameterError, match="not UTF-8"):
        load_policy(bad)


# --- which section governs a model, and whether it applies ------------------------------


SECTIONS = """
[models.default]
fallback = "retrain"
[models.sisa]
match = { strategy = "sisa" }
fallback = "sisa"
[models.sisa-cnn]
match = { strategy = "sisa", architecture = "cnn" }
fallback = "retrain"
[models.cnn]
match = { architecture = "cnn" }
fallback = "retrain"
"""


def test_the_most_specific_section_governs():
    p = policy(SECTIONS)
    assert p.section_for(ModelInfo("mlp"))[0] == "default"
    assert p.section_for(ModelInfo("mlp", "sisa"))[0] == "sisa"
    assert p.section_for(ModelInfo("cnn"))[0] == "cnn"
    assert p.section_for(ModelInfo("cnn", "sisa"))[0] == "sisa-cnn"


def test_no_section_or_two_equal_ones_are_refused():
    only_logreg = '[models.x]\nmatch = { architecture = "logreg" }\nfallback = "retrain"\n'
    with pytest.raises(InvalidParameterError, match=r"No section .* governs model mlp"):
        policy(only_logreg).section_for(MLP)
    tie = policy(
        '[models.a]\nmatch = { architecture = "cnn" }\nfallback = "retrain"\n'
        '[models.b]\nmatch = { strategy = "sisa" }\nfallback = "sisa"\n'
    )
    assert tie.section_for(ModelInfo("cnn"))[0] == "a"
    with pytest.raises(InvalidParameterError, match=r"'a' and 'b' govern .* equally"):
        tie.section_for(ModelInfo("cnn", "sisa"))


def test_check_against_a_model():
    p = load_policy(EXAMPLE)
    summary = check_policy(p, MLP)
    assert summary["section"] == "default"
    assert [s["method"] for s in summary["steps"]] == ["finetune", "scrub", "retrain"]
    assert summary["steps"][-1]["guarantee"] == "exact"
    assert summary["steps"][0]["checks"] == ["ra >= 90", "ta >= 85", "mia <= 60"]
    assert check_policy(p, ModelInfo("mlp", "sisa"))["steps"][0]["method"] == "sisa"
    # a method for language models on a classifier; a class-probability metric on an LM
    lm_step = DEFAULT.replace('"scrub"', '"llm_ga"')
    with pytest.raises(InvalidParameterError, match=r"models.default.steps\[1\]: method 'llm_ga'"):
        check_policy(policy(lm_step), MLP)
    on_text = DEFAULT.replace('"finetune"', '"llm_ga"').replace('"scrub"', '"npo"')
    on_text = on_text.replace("params = { epochs = 2, lr = 0.001 }\n", "")
    assert check_policy(policy(on_text), ModelInfo("hf:tiny"))["section"] == "default"
    with pytest.raises(InvalidParameterError, match="class probabilities"):
        check_policy(
            policy(on_text.replace("ra = { min = 80 }", "mia_entropy = { max = 60 }")),
            ModelInfo("hf:tiny"),
        )


def test_search_range_notes_without_refusing():
    summary = check_policy(policy(DEFAULT.replace("epochs = 2", "epochs = 50")), MLP)
    assert any("epochs=50" in n and "unbake tune" in n for n in summary["notes"])
    assert check_policy(policy(DEFAULT), MLP)["notes"] == []


# --- the executor, with plain callables ---------------------------------------------------


def scripted(figures: dict, *, raises: dict | None = None):
    """try_method and audit that play back ``figures`` per method (or raise)."""
    tried = []

    def try_method(step):
        tried.append(step.method)
        if raises and step.method in raises:
            raise raises[step.method]
        return Outcome(f"model-by-{step.method}")

    def audit(step, outcome):
        value = figures[step.method]
        if isinstance(value, Exception):
            raise value
        return value

    return tried, try_method, audit


def test_the_first_step_that_passes_is_accepted():
    tried, t, a = scripted({"finetune": {"ra": 95.0, "mia": 50.0, "note": "x"}})
    result = run_policy(policy(DEFAULT), MLP, t, a)
    assert tried == ["finetune"] and not result.fell_back
    assert result.accepted.method == "finetune" and result.outcome.value == "model-by-finetune"
    assert result.attempts[0].figures == {"ra": 95.0, "mia": 50.0}  # numbers only


def test_rejected_and_failed_steps_fall_back_with_their_reasons():
    tried, t, a = scripted(
        {"finetune": {"ra": 95.0, "mia": 70.0}, "scrub": {}, "retrain": {"ra": 97.0}}
    )
    result = run_policy(policy(DEFAULT), MLP, t, a)
    assert tried == ["finetune", "scrub", "retrain"] and result.fell_back
    first, second, last = result.attempts
    assert (first.status, first.reasons) == ("rejected", ["mia = 70 > max 60"])
    assert (second.status, second.reasons) == ("rejected", ["the audit gave no 'ra' figure"])
    assert (last.status, last.figures) == ("accepted", {"ra": 97.0})
    record = json.loads(json.dumps(result.to_dict()))
    assert record["method"] == "retrain" and record["fell_back"] is True
    assert [x["status"] for x in record["attempts"]] == ["rejected", "rejected", "accepted"]

    tried, t, a = scripted(
        {"scrub": RuntimeError("audit down"), "retrain": {}},
        raises={"finetune": UnsupportedModelError("no BatchNorm")},
    )
    result = run_policy(policy(DEFAULT), MLP, t, a)
    assert [x.status for x in result.attempts] == ["failed", "failed", "accepted"]
    assert result.attempts[0].reasons == ["UnsupportedModelError: no BatchNorm"]
    assert "audit raised RuntimeError: audit down" in result.attempts[1].reasons[0]


def test_out_of_range_and_non_finite_figures_are_rejected():
    for bad in (89.9, float("nan"), None):
        _, t, a = scripted({"finetune": {"ra": bad, "mia": 10.0}, "scrub": {"ra": 80.0}})
        result = run_policy(policy(DEFAULT), MLP, t, a)
        assert result.accepted.method == "scrub", bad  # min = 80 is inclusive
        assert result.attempts[0].status == "rejected"


def test_a_method_that_does_not_apply_is_skipped_and_a_failing_fallback_raises():
    text = DEFAULT.replace('"scrub"', '"llm_ga"')
    tried, t, a = scripted({"finetune": {"ra": 0.0}}, raises={"retrain": MemoryError("oom")})
    with pytest.raises(PolicyFailedError, match="fallback 'retrain' failed") as info:
        run_policy(policy(text), MLP, t, a)
    assert tried == ["finetune", "retrain"]  # llm_ga never ran on a classifier
    statuses = [(x.method, x.status) for x in info.value.result.attempts]
    assert statuses == [("finetune", "rejected"), ("llm_ga", "skipped"), ("retrain", "failed")]
    assert info.value.result.accepted is None


def test_no_steps_goes_straight_to_the_fallback():
    p = policy('[models.s]\nmatch = { strategy = "sisa" }\nfallback = "sisa"\n')
    tried, t, a = scripted({"sisa": {"fa": 1.0}})
    result = run_policy(p, ModelInfo("mlp", "sisa"), t, a)
    assert tried == ["sisa"] and result.fell_back and result.section == "s"


# --- real small runs ----------------------------------------------------------------------


def test_real_runs_on_digits(digits_small):
    from unbake import UnlearnTask, evaluate, fit
    from unbake.testing.conformance import TINY_CONFIG

    ds = digits_small
    original = fit(ds.train, n_classes=10, model="mlp", config=TINY_CONFIG, seed=0)
    forget, retain = ds.train.split(ds.train.ids[:20])

    def try_method(step):
        return Outcome(step.create().unlearn(UnlearnTask(original, forget, retain), seed=0))

    def audit(step, outcome):
        return evaluate(outcome.value.model, forget, retain, ds.test)

    loose = policy(DEFAULT.replace("min = 90", "min = 10").replace("max = 60", "max = 100"))
    result = run_policy(loose, ModelInfo.of(original), try_method, audit)
    assert result.accepted.method == "finetune" and not result.fell_back
    assert result.outcome.value.method == "finetune"
    assert 10 <= result.attempts[0].figures["ra"] <= 100

    strict = policy(DEFAULT.replace("max = 60", "max = 0").replace("min = 80", "min = 100.5"))
    result = run_policy(strict, ModelInfo.of(original), try_method, audit)
    assert [x.status for x in result.attempts] == ["rejected", "rejected", "accepted"]
    assert result.attempts[0].reasons[0].startswith("mia = ")
    retrained = fit(retain, n_classes=10, model="mlp", config=TINY_CONFIG, seed=0)
    got = result.outcome.value.model.module.parameters()
    for a, b in zip(got, retrained.module.parameters(), strict=True):
        assert torch.equal(a, b)  # the fallback is exact: retraining, bit for bit


# --- unbake policy check -----------------------------------------------------------------


def test_cli_policy_check_on_trained_workspaces(tmp_path):
    from tests.integration.test_cli import TRAIN, assert_one_line_error, run, snapshot

    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    before = snapshot(ws)
    result = run("policy", "check", EXAMPLE, "--workspace", ws)
    assert result.exit_code == 0, result.output
    assert "governed by section 'default'" in result.stdout
    assert "fallback: retrain (exact" in result.stdout
    as_json = json.loads(run("policy", "check", EXAMPLE, "--workspace", ws, "--json").stdout)
    assert as_json["valid"] and as_json["model"] == {
        "architecture": "logreg",
        "strategy": "monolithic",
    }
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('method = "scrub"', 'method = "scrubb"'))
    assert_one_line_error(run("policy", "check", bad, "--workspace", ws), "steps[1].method")
    lm_only = tmp_path / "lm.toml"
    lm_only.write_text(BATCH + DEFAULT.replace('"scrub"', '"npo"'))
    assert_one_line_error(run("policy", "check", lm_only, "--workspace", ws), "'npo' unlearns")
    assert_one_line_error(run("policy", "check", tmp_path / "none.toml", "--workspace", ws))
    assert_one_line_error(run("policy", "check", EXAMPLE, "--workspace", tmp_path / "nowhere"))
    assert snapshot(ws) == before

    sisa = tmp_path / "sisa"
    trained = run(*TRAIN, "--strategy", "sisa", "--shards", "2", "--workspace", sisa)
    assert trained.exit_code == 0, trained.output
    result = run("policy", "check", EXAMPLE, "--workspace", sisa, "--json")
    assert json.loads(result.stdout)["steps"] == [
        {
            "method": "sisa",
            "params": {},
            "thresholds": {},
            "checks": [],
            "fallback": True,
            "guarantee": "exact",
        }
    ]
    no_sisa = tmp_path / "no-sisa.toml"
    no_sisa.write_text(BATCH + DEFAULT)
    # a SISA model under the default section: retrain is still possible, so it passes
    assert run("policy", "check", no_sisa, "--workspace", sisa).exit_code == 0
