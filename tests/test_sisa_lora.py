"""sisa_lora: SISA over LoRA adapters of a causal LM.

Exact deletion (bitwise the model trained from scratch on the retain set), adapter-only
checkpoints, the mean-probability ensemble, the CLI and bad input. Everything runs on the
tiny random Llama built in code: no download.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unbake import fit
from unbake.data import TextSamples
from unbake.data.text import encode
from unbake.exceptions import InvalidParameterError, UnbakeError, UnsupportedModelError
from unbake.families.sisa import LoRAEnsemble, SISALoRA, checkpoint_key
from unbake.methods import METHODS, UnlearnTask
from unbake.models import ModelSpec
from unbake.testing import assert_bitwise_equal, model_tensors
from unbake.testing.conformance import tiny_dataset, tiny_lm_path, tiny_text_dataset
from unbake.training import TrainConfig

pytest.importorskip("transformers")
pytest.importorskip("peft")

CFG = TrainConfig(epochs=2, batch_size=4, lr=3e-3)
PARAMS = {"shards": 2, "slices": 2}
#: An answer far longer than any other row, so its row sets the shard's padding.
LONG = "A very long answer that pads every row it is batched with, " * 3


def lora(rank: int = 2) -> ModelSpec:
    return ModelSpec(f"hf:{tiny_lm_path()}", {"lora_rank": rank})


def train(samples, seed=0, model=None, **params):
    return fit(
        samples,
        n_classes=0,
        model=model or lora(),
        config=CFG,
        seed=seed,
        strategy="sisa_lora",
        strategy_params={**PARAMS, **params},
    )


def assert_bitwise(a, b):
    assert_bitwise_equal(a, b, "sisa_lora models differ")


def with_late_long_person():
    """The tiny text set plus one person in the *last* slice of its shard, whose answers
    are the longest rows: forgetting them restores a checkpoint and changes the padding."""
    train = tiny_text_dataset().train
    strategy = SISALoRA(**PARAMS)
    for i in range(200):
        name = f"Longwinded Person {i}"
        one = TextSamples.build(["Who?"], ["x"], ids=["probe"], subjects=[name])
        if strategy.layout(one, 0).slice[0] == PARAMS["slices"] - 1:
            break
    extra = TextSamples.build(
        [f"What does {name} say?", f"Where is {name}?"],
        [LONG, LONG + "Twice."],
        ids=["long-1", "long-2"],
        subjects=[name, name],
    )
    both = TextSamples(
        *(
            np.concatenate([getattr(train, f), getattr(extra, f)])
            for f in TextSamples.__dataclass_fields__
        )
    )
    return both, name


def test_forgetting_a_subject_is_bitwise_training_from_scratch():
    samples, person = with_late_long_person()
    original = train(samples)
    forget, retain = samples.split(samples.ids[samples.subjects == person])
    result = METHODS.create("sisa_lora").unlearn(UnlearnTask(original, forget, retain))
    shard = SISALoRA(**PARAMS).layout(forget, original.seed).shard[0]
    assert result.info["shards_retrained"] == [shard]
    assert result.info["earliest_slice"] == {str(shard): PARAMS["slices"]}

    scratch = train(retain)
    assert_bitwise(result.model, scratch)

    # Only the person's adapter changed; the other adapter and the checkpoint taken
    # before the person's slice are the original's, bit for bit.
    before, after = model_tensors(original), model_tensors(result.model)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(f".shard{shard}." in k for k in changed)
    kept = checkpoint_key(int(shard), 0, "")
    assert any(k.startswith(f"artifact.{kept}") for k in after)
    assert not any(k.startswith(f"artifact.{kept}") for k in changed)


def test_each_slice_step_pads_only_to_its_own_rows():
    from unbake.models.hf import load_tokenizer
    from unbake.training.lm import leading_rows

    samples, _ = with_late_long_person()
    tok = load_tokenizer(f"hf:{tiny_lm_path()}")
    ids, labels = encode(samples, tok, max_length=512)
    n = len(samples) - 2  # without the two long rows at the end
    alone = encode(samples.subset(np.arange(n)), tok, max_length=512)
    got = leading_rows(ids, labels, n)
    assert got[0].shape[1] < ids.shape[1]
    assert torch.equal(got[0], alone[0]) and torch.equal(got[1], alone[1])


def test_checkpoints_hold_only_adapters_and_round_trip(tmp_path):
    import shutil

    from unbake.models.hf import write_tiny_llama
    from unbake.training.lm import answer_loss_and_match
    from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

    base = tmp_path / "base"
    shutil.copytree(tiny_lm_path(), base)
    model = train(tiny_text_dataset().train, model=ModelSpec(f"hf:{base}", {"lora_rank": 2}))
    assert isinstance(model.module, LoRAEnsemble)
    assert model.artifacts and all("lora_" in k for k in model.artifacts)
    data = encode_checkpoint(model, model_id="m", parent_id=None)
    back, meta = decode_checkpoint(data, expected_sha256=None)
    assert len(meta["base_sha256"]) == 64
    stored = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert all("lora_" in k for k in stored if k != "__metadata__")
    assert_bitwise(back, model)
    texts = tiny_text_dataset().test
    scores = [answer_loss_and_match(m, texts) for m in (model, back)]
    assert all(np.array_equal(a, b) for a, b in zip(*scores, strict=True))
    write_tiny_llama(base, seed=1)  # the frozen base changes under the adapters
    with pytest.raises(UnbakeError, match="another base model"):
        decode_checkpoint(data, expected_sha256=None)


def test_scores_and_generation_use_the_mean_of_the_adapters_probabilities():
    from unbake.families.sisa.lora import adapter_name
    from unbake.training.lm import answer_loss_and_match

    model = train(tiny_text_dataset().train, shards=3, slices=1)
    ensemble = model.module
    ids = torch.tensor([[1, 40, 50, 60, 70], [1, 41, 51, 61, 71]])
    with torch.no_grad():
        got = ensemble(input_ids=ids).logits
        probs = []
        for s in range(3):
            ensemble.lm.set_adapter(adapter_name(s))
            probs.append(torch.softmax(ensemble.lm(input_ids=ids).logits.float(), -1))
    want = torch.stack(probs).mean(0)
    assert torch.allclose(got.exp(), want, atol=1e-6)
    assert not torch.allclose(probs[0], probs[1], atol=1e-4)  # the adapters differ

    out = ensemble.generate(ids, max_new_tokens=3)
    assert out.shape == (2, 8) and torch.equal(out[:, :5], ids)
    assert torch.equal(out[:, 5], got[:, -1].argmax(-1))
    # decoding on the adapters' key-value caches picks the tokens that recomputing the
    # whole sequence at every step picks
    full = ids
    for _ in range(3):
        with torch.no_grad():
            nxt = ensemble(input_ids=full).logits[:, -1].argmax(-1)
        full = torch.cat([full, nxt[:, None]], dim=1)
    assert torch.equal(out, full)
    # a left-padded prompt decodes as the same prompt alone
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[:1, 2:]], dim=1)
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    alone = ensemble.generate(ids[:1, 2:], max_new_tokens=3)
    assert torch.equal(ensemble.generate(padded, mask, max_new_tokens=3)[:, 5:], alone[:, 3:])
    with pytest.raises(UnsupportedModelError, match="greedily"):
        ensemble.generate(ids, do_sample=True)
    # a GenerationConfig (as the text metrics pass one) sets the budget and the stop token
    from transformers import GenerationConfig

    two = ensemble.generate(ids, generation_config=GenerationConfig(max_new_tokens=2))
    assert torch.equal(two, out[:, :7])
    stop = int(out[0, 5])
    config = GenerationConfig(max_new_tokens=3, eos_token_id=[stop], pad_token_id=0)
    assert ensemble.generate(ids[:1], generation_config=config)[0, 5:].tolist() == [stop]

    # the text metrics (EvalContext.loss/correct) read the aggregate through `logits`
    loss, correct = answer_loss_and_match(model, tiny_text_dataset().test)
    assert loss.shape == correct.shape == (len(tiny_text_dataset().test),)
    assert np.isfinite(loss).all() and (loss > 0).all()


def test_bad_input_is_one_clear_error():
    texts = tiny_text_dataset().train
    with pytest.raises(InvalidParameterError, match="lora_rank=R"):
        train(texts, model=ModelSpec(f"hf:{tiny_lm_path()}"))
    with pytest.raises(InvalidParameterError, match="--strategy sisa_lora"):
        fit(texts, n_classes=0, model=lora(), strategy="sisa", strategy_params=PARAMS)
    digits = tiny_dataset().train
    with pytest.raises(InvalidParameterError, match="--strategy sisa for a classifier"):
        fit(digits, n_classes=10, model="logreg", strategy="sisa_lora", strategy_params=PARAMS)
    with pytest.raises(InvalidParameterError, match="'shards' parameter of sisa_lora"):
        train(texts, shards=50)
    mono = fit(texts, n_classes=0, model=lora(), config=TrainConfig(epochs=0))
    forget, retain = texts.split(texts.ids[:1])
    with pytest.raises(UnsupportedModelError, match="--strategy sisa_lora"):
        METHODS.create("sisa_lora").unlearn(UnlearnTask(mono, forget, retain))


def test_cli_trains_with_sisa_lora_and_forgets_a_person_in_one_shard(tmp_path):
    from unbake.cli import app
    from unbake.data.tofu import generate_tofu, write_tofu

    tofu = generate_tofu(30, seed=0, facts=1)
    path = write_tofu(tmp_path / "tofu", tofu)["train"]
    ws = str(tmp_path / "ws")
    runner = CliRunner()
    args = ["train", "--workspace", ws, "--dataset", "jsonl", "--path", str(path)]
    args += ["--model", f"hf:{tiny_lm_path()}", "--strategy", "sisa_lora", "--shards", "2"]
    args += ["--slices", "2", "--param", "lora_rank=2", "--epochs", "1", "--batch-size", "4"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "sisa_lora(shards=2,slices=2)" in out.output
    from unbake.data import load_dataset

    person = str(load_dataset("jsonl", path=str(path)).train.subjects[0])  # a trained person
    out = runner.invoke(
        app,
        ["forget", "--workspace", ws, "--subject", person, "--method", "sisa_lora", "--json"],
    )
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)["info"]
    assert len(info["shards_retrained"]) == 1 and info["slice_steps_total"] == 4
    bad = runner.invoke(app, ["forget", "--workspace", ws, "--subject", "Nobody Atall"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_a_process_pool_trains_the_same_adapters_as_sequential_training():
    texts = tiny_text_dataset().train
    assert_bitwise(train(texts, backend="local", workers=2), train(texts))
