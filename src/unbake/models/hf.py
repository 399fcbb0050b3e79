"""Causal language models from Hugging Face ``transformers``, named ``hf:PATH_OR_NAME``.

Everything here imports ``transformers`` (and ``peft``) lazily, so ``import unbake``
neither needs nor pays for the ``llm`` extra. Models load offline only
(``local_files_only``) and from safetensors only: ``hf:PATH`` names a directory, or a
model in the local cache that the operator allow-listed (see
:func:`unbake.models.check_factory`).

With ``lora_rank`` > 0 the base model is frozen and ``peft`` LoRA adapters are trained
instead; the adapters' random initialisation is seeded, as every other draw in unbake.
:func:`write_tiny_llama` writes a randomly initialised Llama-style model of a few
million parameters and a byte-level tokenizer, built in code, for tests that must not
download anything.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from unbake.exceptions import InvalidParameterError, UnbakeError

__all__ = [
    "HF_PREFIX",
    "adapter_state",
    "adapter_tensors",
    "base_hash",
    "causal_lm_config",
    "is_hf",
    "is_lora",
    "load_adapter_state",
    "load_causal_lm",
    "load_tokenizer",
    "require_llm",
    "write_tiny_llama",
]

HF_PREFIX = "hf:"
#: The chat template of the tiny test tokenizer (roles as special tokens).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")


def require_llm(module: str = "transformers"):
    """Import ``module`` from the ``llm`` extra, or fail with the one line that fixes it."""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise UnbakeError(
            f"Language models need the optional {module!r} package; "
            "install it with: pip install 'unbake[llm]'"
        ) from None
    if module == "transformers":
        imported.utils.logging.set_verbosity_error()
        imported.utils.logging.disable_progress_bar()
    return imported


def is_hf(name: str) -> bool:
    return str(name).startswith(HF_PREFIX)


def _path(name: str) -> str:
    path = str(name).removeprefix(HF_PREFIX)
    if not path:
        raise InvalidParameterError(
            "The model 'hf:' names no model; give a directory or a cached name, e.g. hf:./my-model."
        )
    return path


def _offline(auto, name: str, what: str):
    """``auto.from_pretrained`` of ``hf:`` model ``name`` without the network; one line
    naming ``what`` and the fix when it is not on disk."""
    try:
        return auto.from_pretrained(_path(name), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidParameterError(
            f"Cannot load {what} offline ({str(exc).splitlines()[0]}); give a local "
            "directory or a model already in the Hugging Face cache."
        ) from None


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """The model's own tokenizer (offline), cached by name."""
    transformers = require_llm()
    tok = _offline(transformers.AutoTokenizer, name, f"the tokenizer of {name!r}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def base_hash(name: str) -> str:
    """sha256 over the base model's weight files (names and bytes), to pin what LoRA adapts."""
    root = Path(_path(name))
    digest = hashlib.sha256()
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")) if root.is_dir() else []
    if not files:
        digest.update(str(name).encode())
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def causal_lm_config(name: str):
    """The ``transformers`` config of ``hf:PATH`` (offline); refuses a model that is not a causal LM."""
    transformers = require_llm()
    config = _offline(transformers.AutoConfig, name, repr(name))
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise InvalidParameterError(
            f"{name!r} is a {type(config).__name__}, not a causal language model; give a "
            "model that AutoModelForCausalLM loads (Llama, SmolLM2, GPT-2, ...)."
        )
    return config


def load_causal_lm(
    name: str,
    *,
    seed: int,
    lora_rank: int | None = None,
    adapters: Sequence[str] = ("default",),
) -> nn.Module:
    """The causal LM ``hf:PATH`` in float32, with seeded LoRA adapters of rank ``lora_rank``.

    Without ``lora_rank`` every weight is trained (full fine-tuning). With it, one adapter
    per name in ``adapters`` shares the frozen base (the first is the active one).
    """
    transformers = require_llm()
    if lora_rank is not None and (
        not isinstance(lora_rank, int) or isinstance(lora_rank, bool) or lora_rank < 1
    ):
        raise InvalidParameterError(
            f"The 'lora_rank' parameter must be an int >= 1 (leave it out for full "
            f"fine-tuning). Got {lora_rank!r} instead."
        )
    causal_lm_config(name)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(int(seed))
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                _path(name), local_files_only=True, use_safetensors=True, dtype=torch.float32
            )  # safetensors only: never unpickle weights
        except OSError as exc:
            raise InvalidParameterError(
                f"Cannot load the weights of {name!r} offline ({str(exc).splitlines()[0]}); "
                "give a directory holding the model's safetensors."
            ) from None
        if lora_rank is not None:
            peft = require_llm("peft")
            lora = peft.LoraConfig(
                r=int(lora_rank),
                lora_alpha=2 * int(lora_rank),
                target_modules="all-linear",
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
            )
            model = peft.get_peft_model(model, lora, adapter_name=adapters[0])
            for adapter in adapters[1:]:
                model.add_adapter(adapter, lora)
            model.set_adapter(adapters[0])
    model.eval()
    return model


def is_lora(spec) -> bool:
    """Whether the :class:`~unbake.models.ModelSpec` trains LoRA adapters on a frozen base."""
    return spec.params.get("lora_rank") is not None


def adapter_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every LoRA tensor of ``module`` (all its adapters), by state-dict name: what a LoRA
    checkpoint stores instead of the frozen base (peft's own rule: names holding ``lora_``)."""
    return {k: v for k, v in module.state_dict().items() if "lora_" in k}


def adapter_state(module: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """A copy of the tensors of one LoRA adapter, keyed without the adapter's name.

    The same keys for every adapter, so a state trained as ``default`` in one model loads
    as ``shard3`` in another (:func:`load_adapter_state`).
    """
    peft = require_llm("peft")
    state = peft.get_peft_model_state_dict(module, adapter_name=adapter)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_adapter_state(
    module: nn.Module, state: dict[str, torch.Tensor], adapter: str = "default"
) -> None:
    """Load an :func:`adapter_state` into adapter ``adapter`` of ``module``, exactly.

    Raises ``RuntimeError`` when the tensors do not match the adapter's (callers turn it
    into their own error).
    """
    peft = require_llm("peft")
    expected = set(peft.get_peft_model_state_dict(module, adapter_name=adapter))
    if set(state) != expected:
        raise RuntimeError(f"adapter tensors {sorted(set(state) ^ expected)[:3]} do not match")
    peft.set_peft_model_state_dict(module, state, adapter_name=adapter)


def write_tiny_llama(
    directory: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2
) -> Path:
    """Write a random Llama-style causal LM and a byte-level tokenizer to ``directory``.

    Built in code (no download): 256 byte tokens plus role tokens and a chat template.
    ``hf:<directory>`` then loads it like any other model.
    """
    transformers = require_llm()
    tokenizers = require_llm("tokenizers")
    directory = Path(directory)
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = tokenizers.decoders.ByteLevel()
    core.add_special_tokens(list(_SPECIALS))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
