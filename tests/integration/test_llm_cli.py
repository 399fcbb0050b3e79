"""End to end on a language model: `unbake train --dataset jsonl --model hf:...` then
`unbake forget --subject "<person>"`, on a tiny random Llama (no download)."""

import json

import pytest

from tests.integration.test_cli import assert_one_line_error, run, snapshot

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tofu_and_model(tmp_path_factory):
    from unbake.data.tofu import generate_tofu, write_tofu
    from unbake.testing.conformance import tiny_lm_path

    root = tmp_path_factory.mktemp("tofu")
    tofu = generate_tofu(12, seed=0, facts=2)
    return tofu, write_tofu(root, tofu)["train"], f"hf:{tiny_lm_path()}"


TRAIN = ["--epochs", "2", "--batch-size", "8", "--lr", "0.003", "--test-fraction", "0.2"]


def _train(path, model) -> list:
    return ["train", "--dataset", "jsonl", "--path", path, "--model", model, *TRAIN]


@pytest.mark.parametrize("lora", [False, True])
def test_train_then_forget_a_person(tmp_path, tofu_and_model, lora):
    tofu, path, model = tofu_and_model
    ws = tmp_path / "ws"
    extra = ["--param", "lora_rank=2"] if lora else []
    out = run(
        *_train(path, model),
        *extra,
        "--workspace",
        ws,
        "--json",
    )
    assert out.exit_code == 0, out.output
    trained = json.loads(out.stdout)
    from safetensors import safe_open

    with safe_open(ws / "checkpoints" / f"{trained['model_id']}.safetensors", "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    if lora:  # only the adapters, pinned to their base model
        assert keys and all("lora_" in k for k in keys) and len(meta["base_sha256"]) == 64
    else:
        assert "base_sha256" not in meta and any("embed_tokens" in k for k in keys)
    person = tofu.forget["forget01"][0]
    out = run("forget", "--subject", person, "--method", "npo", "--workspace", ws, "--json")
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["n_samples"] == int((tofu.train.subjects == person).sum()) == 3
    from unbake.workspace import Workspace

    with Workspace.open(ws) as opened:
        status = opened.catalog.sample_status()
    forgotten = {k for k, v in status.items() if v != "active"}
    assert forgotten == set(tofu.train.ids[tofu.train.subjects == person])
    evaluated = run("evaluate", "--workspace", ws, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert 0 <= json.loads(evaluated.stdout)["ra"] <= 100
    listed = run("samples", "--forgotten", "--workspace", ws, "--json")
    assert listed.exit_code == 0, listed.output
    assert set(tofu.train.ids[tofu.train.subjects == person]) <= set(listed.stdout.split('"'))
    before = snapshot(ws)
    bad = run("forget", "--subject", person, "--method", "npo", "--workspace", ws)
    assert_one_line_error(bad)
    assert snapshot(ws) == before


def test_bad_lm_input_is_one_line_and_leaves_nothing(tmp_path, tofu_and_model):
    _, path, model = tofu_and_model
    ws = tmp_path / "ws"
    bad = run(
        *_train(path, model),
        "--param",
        "lora_rank=0",
        "--workspace",
        ws,
    )
    assert_one_line_error(bad, "lora_rank")
    assert not ws.exists()
    empty = tmp_path / "bad.jsonl"
    empty.write_text('{"id": "a", "subject": "s", "prompt": "p"}\n')
    bad = run("train", "--dataset", "jsonl", "--path", empty, "--model", model, "--workspace", ws)
    assert_one_line_error(bad, "no 'answer'")
    assert not ws.exists()


def test_tofu_command_writes_a_seeded_set_the_jsonl_loader_reads(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = run("tofu", "--out", out, "--persons", "20", "--seed", "3", "--json")
        assert res.exit_code == 0, res.output
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    splits = json.loads((a / "splits.json").read_text())
    assert len(splits["forget"]["forget10"]) == 2 == len(splits["canaries"])
    from unbake.data import load_dataset

    ds = load_dataset("jsonl", path=str(a / "train.jsonl"))
    assert len(ds.train) + len(ds.val) + len(ds.test) == json.loads(res.stdout)["train_rows"]
    assert_one_line_error(run("tofu", "--out", a, "--persons", "2"), "persons")
