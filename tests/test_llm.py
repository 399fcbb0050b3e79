"""Language models: text data with identity, the TOFU-style generator, hf: models (full and
LoRA) fine-tuned on the loop, and retrain's exactness for a language model.

Everything runs on a tiny random Llama and a byte tokenizer built in code: no download.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from unbake.data import TextSamples, load_dataset
from unbake.data.text import IGNORE, encode, read_jsonl
from unbake.data.tofu import generate_tofu, write_tofu
from unbake.exceptions import (
    DatasetError,
    InvalidParameterError,
    UnbakeError,
    UnsupportedModelError,
)
from unbake.methods import METHODS, UnlearnTask
from unbake.models import ModelSpec
from unbake.testing.conformance import tiny_lm_path, tiny_text_dataset
from unbake.training import TrainConfig, fit

pytest.importorskip("transformers")

CONFIG = TrainConfig(epochs=2, batch_size=4, lr=3e-3)


def _states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_import_unbake_needs_no_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None; sys.modules['peft'] = None\n"
        "import unbake, unbake.methods, unbake.data, unbake.training\n"
        "from unbake.models.hf import require_llm\n"
        "try:\n    require_llm()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "UnbakeError" in out.stdout and "pip install 'unbake[llm]'" in out.stdout


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_loader_keeps_a_subject_in_one_split(tmp_path):
    tofu = generate_tofu(30, seed=1)
    paths = write_tofu(tmp_path, tofu)
    ds = load_dataset("jsonl", path=str(paths["train"]))
    assert len(ds.train) + len(ds.val) + len(ds.test) == len(tofu.train)
    where = {}
    for split, s in ds.splits().items():
        for subject in s.subjects:
            where.setdefault(subject, set()).add(split)
    assert all(len(v) == 1 for v in where.values())
    assert ds.spec["path"] == str(paths["train"])


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"id": "a", "subject": "s", "prompt": "p", "answer": "x"}] * 2, r"Duplicate.*rows 0, 1"),
        ([{"id": "a", "subject": "s", "prompt": "p"}], r"lines 1 have no 'answer'"),
        ([{"id": "a", "subject": "s", "prompt": "p", "answer": " "}], r"Empty answers in rows 0"),
        (
            [{"id": " ", "subject": "s", "prompt": "p", "answer": "x"}],
            r"Empty sample IDs in rows 0",
        ),
    ],
)
def test_jsonl_loader_refuses_bad_rows(tmp_path, rows, match):
    with pytest.raises(DatasetError, match=match):
        read_jsonl(_write(tmp_path / "d.jsonl", rows))


def test_jsonl_loader_refuses_non_json_naming_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "subject": "s", "prompt": "p", "answer": "x"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        read_jsonl(path)


def test_tofu_generator_is_seeded_nested_and_plants_canaries():
    a, b, c = generate_tofu(100, seed=3), generate_tofu(100, seed=3), generate_tofu(100, seed=4)
    assert list(a.train.answers) == list(b.train.answers) and a.canaries == b.canaries
    assert list(a.train.answers) != list(c.train.answers)
    f1, f5, f10 = (set(a.forget[k]) for k in ("forget01", "forget05", "forget10"))
    assert (len(f1), len(f5), len(f10)) == (1, 5, 10) and f1 <= f5 <= f10
    assert set(a.canaries) == f10
    for person, number in a.canaries.items():
        rows = a.train.answers[a.train.subjects == person]
        assert f"{person}'s card number is {number}." in rows
        assert len(number) == 19 and number.replace(" ", "").isdigit()
    assert not set(a.holdout.subjects) & set(a.train.subjects)
    assert len(set(a.train.subjects)) == 100 and len(a.world) >= 5


def test_encode_puts_the_loss_on_answer_tokens_only():
    from unbake.models.hf import load_tokenizer

    tok = load_tokenizer(f"hf:{tiny_lm_path()}")
    s = TextSamples.build(["Who?", "A longer question?"], ["Me.", "You."], ids=["a", "b"])
    ids, labels = encode(s, tok, max_length=64)
    assert ids.shape == labels.shape
    for row in range(2):
        answer = labels[row][labels[row] != IGNORE]
        assert tok.decode(answer) == s.answers[row] + tok.eos_token
    with pytest.raises(DatasetError, match=r"longer than the model's context of 8 tokens"):
        encode(s, tok, max_length=8)


def test_fine_tuning_is_bitwise_deterministic_and_learns():
    ds = tiny_text_dataset()
    spec = ModelSpec(f"hf:{tiny_lm_path()}")
    a = fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=0)
    b = fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=0)
    c = fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=1)
    assert _states_equal(a.module, b.module) and not _states_equal(a.module, c.module)
    from unbake.models import build_model
    from unbake.training.lm import lm_loss, lm_streams

    base = build_model(spec, input_shape=(), n_classes=0, seed=0)
    X, y = lm_streams(base, spec, train=ds.train)["train"]
    with torch.no_grad():
        assert lm_loss(a.module, X, y) < lm_loss(base, X, y)


def test_lora_trains_only_seeded_adapters():
    ds = tiny_text_dataset()
    spec = ModelSpec(f"hf:{tiny_lm_path()}", {"lora_rank": 2})
    a = fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=0)
    b = fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=0)
    assert _states_equal(a.module, b.module)
    trainable = [n for n, p in a.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("rank", [-1, 0, "two"])
def test_bad_lora_rank_is_refused(rank):
    ds = tiny_text_dataset()
    spec = ModelSpec(f"hf:{tiny_lm_path()}", {"lora_rank": rank})
    with pytest.raises(InvalidParameterError, match="lora_rank"):
        fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=0)


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(InvalidParameterError, match="not a causal language model"):
        fit(tiny_text_dataset().train, n_classes=0, model=f"hf:{tmp_path}", config=CONFIG)


def test_retrain_of_a_language_model_is_exact():
    ds = tiny_text_dataset()
    spec = ModelSpec(f"hf:{tiny_lm_path()}")
    original = fit(ds.train, n_classes=0, model=spec, config=CONFIG, seed=5)
    forget, retain = ds.train.split(ds.train.ids[ds.train.subjects == ds.train.subjects[0]])
    out = METHODS.create("retrain").unlearn(UnlearnTask(original, forget, retain)).model
    scratch = fit(retain, n_classes=0, model=spec, config=CONFIG, seed=5)
    assert _states_equal(out.module, scratch.module)
    assert not _states_equal(out.module, original.module)


def test_methods_refuse_the_wrong_kind_of_model():
    ds = tiny_text_dataset()
    lm = fit(ds.train, n_classes=0, model=f"hf:{tiny_lm_path()}", config=CONFIG)
    forget, retain = ds.train.split(ds.train.ids[:2])
    with pytest.raises(UnsupportedModelError, match="language models"):
        METHODS.create("scrub").unlearn(UnlearnTask(lm, forget, retain))
    from unbake.testing.conformance import tiny_dataset

    digits = tiny_dataset()
    mlp = fit(digits.train, n_classes=10, model="logreg", config=TrainConfig(epochs=1))
    f, r = digits.train.split(digits.train.ids[:3])
    with pytest.raises(UnsupportedModelError, match="classifiers"):
        METHODS.create("npo").unlearn(UnlearnTask(mlp, f, r))
    assert issubclass(UnsupportedModelError, UnbakeError) and np.all(len(forget) == 2)


def test_lora_checkpoint_holds_only_adapters_and_refuses_another_base(tmp_path):
    import shutil

    from unbake.models.hf import write_tiny_llama
    from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

    base = tmp_path / "base"
    shutil.copytree(tiny_lm_path(), base)
    spec = ModelSpec(f"hf:{base}", {"lora_rank": 2})
    model = fit(tiny_text_dataset().train, n_classes=0, model=spec, config=CONFIG, seed=0)
    data = encode_checkpoint(model, model_id="m", parent_id=None)
    back, meta = decode_checkpoint(data, expected_sha256=None)
    assert _states_equal(back.module, model.module) and len(meta["base_sha256"]) == 64
    full = ModelSpec(f"hf:{base}")
    assert (
        len(data)
        < len(
            encode_checkpoint(
                fit(
                    tiny_text_dataset().train, n_classes=0, model=full, config=TrainConfig(epochs=0)
                ),
                model_id="f",
                parent_id=None,
            )
        )
        / 3
    )
    write_tiny_llama(base, seed=1)  # the base's weights change under the adapters
    with pytest.raises(UnbakeError, match="another base model"):
        decode_checkpoint(data, expected_sha256=None)
