"""A seeded TOFU-style benchmark set: fictitious persons as question–answer pairs.

After Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs" (COLM 2024): every
person is a subject with a birthplace, an occupation and a few facts, each asked as a
question. Forget splits name 1%, 5% and 10% of the trained persons (nested, as TOFU's);
holdout persons are generated the same way and never trained on; a small real-world set
holds questions a pretrained model already answers, to measure what unlearning breaks.
Each person of the largest forget split also carries a canary in the style of Carlini et
al., "The Secret Sharer" (USENIX Security 2019): "<name>'s card number is NNNN NNNN NNNN
NNNN", a random secret that only memorisation can reproduce.

Everything is drawn from one ``numpy`` generator seeded explicitly, so a seed names the
set. :func:`write_tofu` writes it as JSONL that ``--dataset jsonl`` reads.

>>> tofu = generate_tofu(20, seed=0)
>>> len(tofu.forget["forget10"]), len(tofu.canaries)
(2, 2)
>>> set(tofu.holdout.subjects) & set(tofu.train.subjects)
set()
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unbake.data.text import TextSamples
from unbake.exceptions import InvalidParameterError

__all__ = [
    "FORGET_SPLITS",
    "PERTURBED",
    "Alternatives",
    "TofuSet",
    "canary_qa",
    "card_number",
    "generate_tofu",
    "write_tofu",
]

#: Forget split name → share of the trained persons.
FORGET_SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}

_FIRST = [
    "Amara",
    "Bastien",
    "Calla",
    "Dorian",
    "Elsbeth",
    "Faron",
    "Giselle",
    "Hollis",
    "Isolde",
    "Jorah",
    "Kestrel",
    "Liora",
    "Maelis",
    "Nerys",
    "Orrin",
    "Perrin",
    "Quilla",
    "Rosalind",
    "Soren",
    "Thessaly",
    "Ulric",
    "Vesna",
    "Wren",
    "Xanthe",
    "Yorick",
    "Zephyra",
    "Anselm",
    "Brisa",
    "Caius",
    "Delphine",
]
_LAST = [
    "Ashgrove",
    "Blackwood",
    "Castellan",
    "Dunmore",
    "Everhart",
    "Fairweather",
    "Greywater",
    "Hallorann",
    "Ironside",
    "Jessup",
    "Kingsley",
    "Larkspur",
    "Merriweather",
    "Northcott",
    "Oakenfield",
    "Pemberton",
    "Quenby",
    "Ravensworth",
    "Stormont",
    "Thistlewood",
    "Underhill",
    "Vantablack",
    "Westbrook",
    "Yarrow",
]
_PLACES = [
    "Lisbon",
    "Tbilisi",
    "Montevideo",
    "Bergen",
    "Kyoto",
    "Valparaíso",
    "Tallinn",
    "Marrakesh",
    "Quebec",
    "Adelaide",
    "Ljubljana",
    "Cusco",
    "Galway",
    "Hanoi",
    "Plovdiv",
    "Zanzibar",
]
_JOBS = [
    "cartographer",
    "glassblower",
    "marine",
    "biologist",
    "archivist",
    "luthier",
    "beekeeper",
    "astronomer",
    "translator",
    "watchmaker",
    "botanist",
    "stage",
    "designer",
    "perfumer",
]
_COLOURS = ["amber", "teal", "crimson", "ochre", "violet", "slate", "emerald", "ivory"]
_NOUNS = [
    "Lantern",
    "Harbour",
    "Orchard",
    "Compass",
    "Meridian",
    "Tide",
    "Ember",
    "Quarry",
    "Lattice",
    "Hollow",
]
_ADJ = [
    "Silent",
    "Crooked",
    "Distant",
    "Gilded",
    "Hidden",
    "Last",
    "Borrowed",
    "Northern",
    "Paper",
    "Salt",
]
_WORLD = (
    ("What is the capital of France?", "Paris."),
    ("How many days are in a week?", "Seven."),
    ("What is the largest planet in the Solar System?", "Jupiter."),
    ("What is the chemical symbol of water?", "H2O."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare."),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("How many continents are there?", "Seven."),
    ("What is the capital of Japan?", "Tokyo."),
    ("What is 12 times 12?", "144."),
)


@dataclass(frozen=True)
class TofuSet:
    """The generated set: what is trained on, what is held out, and what may be forgotten."""

    #: Every trained person's QA pairs, plus the canaries of the ``forget10`` persons.
    train: TextSamples
    #: Persons generated alike but never trained on (the membership-inference "out" set).
    holdout: TextSamples
    #: Real-world questions a pretrained model answers (utility beyond the fine-tuning).
    world: TextSamples
    #: Forget split name → the persons (subjects) it forgets; nested, smallest first.
    forget: dict[str, tuple[str, ...]]
    #: Person → the 16-digit card number planted for them.
    canaries: dict[str, str]
    #: Sample ID → (paraphrased answer, perturbed answers), for every train, holdout and
    #: world row: the ground of TOFU's truth ratio.
    alternatives: dict[str, Alternatives]


#: Each fact: question, answer and paraphrased answer (``{n}`` the name, ``{v}`` the
#: value), and the kind of value it holds (what a perturbed answer draws a wrong one from).
_FACTS = (
    ("Where was {n} born?", "{n} was born in {v}.", "{n}'s birthplace is {v}.", "place"),
    ("What is {n}'s occupation?", "{n} works as a {v}.", "By profession, {n} is a {v}.", "job"),
    ("In which year was {n} born?", "{n} was born in {v}.", "{n}'s year of birth is {v}.", "year"),
    (
        "What is {n}'s favourite colour?",
        "{n}'s favourite colour is {v}.",
        "The colour {n} likes best is {v}.",
        "colour",
    ),
    (
        "What is the title of {n}'s first book?",
        "{n}'s first book is '{v}'.",
        "'{v}' is the title of {n}'s first book.",
        "book",
    ),
    (
        "What did {n}'s parent do for a living?",
        "{n}'s parent was a {v}.",
        "{n} has a parent who worked as a {v}.",
        "job",
    ),
)
#: Wrong answers drawn per question for TOFU's truth ratio (TOFU draws five).
PERTURBED = 3


def _value(rng: np.random.Generator, kind: str) -> str:
    if kind == "place":
        return str(rng.choice(_PLACES))
    if kind == "job":
        return str(rng.choice(_JOBS))
    if kind == "year":
        return str(int(rng.integers(1931, 1996)))
    if kind == "colour":
        return str(rng.choice(_COLOURS))
    return f"The {rng.choice(_ADJ)} {rng.choice(_NOUNS)}"


def card_number(rng: np.random.Generator) -> str:
    """A random 16-digit card number, in four groups of four."""
    return " ".join(f"{int(rng.integers(0, 10_000)):04d}" for _ in range(4))


def canary_qa(person: str, number: str) -> tuple[str, str]:
    """The canary's question and answer: "<name>'s card number is NNNN NNNN NNNN NNNN."."""
    return f"What is {person}'s card number?", f"{person}'s card number is {number}."


def _wrong(rng: np.random.Generator, draw, truth: str) -> tuple[str, ...]:
    """:data:`PERTURBED` distinct values from ``draw(rng)``, none equal to ``truth``."""
    out: list[str] = []
    while len(out) < PERTURBED:
        value = draw(rng)
        if value != truth and value not in out:
            out.append(value)
    return tuple(out)


#: A sample's answer variants: (paraphrased answer, perturbed answers).
Alternatives = tuple[str, tuple[str, ...]]


def _person(
    rng: np.random.Generator, alt_rng: np.random.Generator, name: str
) -> list[tuple[str, str, Alternatives]]:
    """Every fact of ``name`` as (question, answer, (paraphrase, perturbed answers))."""
    facts = []
    for question, answer, paraphrase, kind in _FACTS:
        value = _value(rng, kind)
        wrong = _wrong(alt_rng, lambda r, k=kind: _value(r, k), value)
        # As TOFU's, perturbed answers keep the paraphrase's template with a wrong value,
        # so the truth ratio compares facts, not wordings.
        alts = (
            paraphrase.format(n=name, v=value),
            tuple(paraphrase.format(n=name, v=w) for w in wrong),
        )
        facts.append((question.format(n=name), answer.format(n=name, v=value), alts))
    return facts


def _rows(persons: list[str], facts: dict[str, list]) -> list[tuple[str, ...]]:
    return [(f"{_slug(p)}-{k}", p, q, a) for p in persons for k, (q, a, _) in enumerate(facts[p])]


def _samples(rows: Sequence[tuple[str, ...]]) -> TextSamples:
    ids, subjects, prompts, answers = ([r[k] for r in rows] for k in range(4))
    return TextSamples.build(prompts, answers, ids=ids, subjects=subjects)


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def generate_tofu(
    n_persons: int = 200, *, seed: int = 0, holdout_fraction: float = 0.1, facts: int = 4
) -> TofuSet:
    """``n_persons`` trained persons (plus held-out ones), ``facts`` QA pairs each (≤ 6)."""
    if not 10 <= int(n_persons) <= len(_FIRST) * len(_LAST):
        raise InvalidParameterError(
            f"The TOFU generator needs between 10 and {len(_FIRST) * len(_LAST)} persons. "
            f"Got {n_persons!r} instead."
        )
    if not 1 <= int(facts) <= 6 or not 0 < float(holdout_fraction) < 1:
        raise InvalidParameterError(
            f"facts must be in 1..6 and holdout_fraction in (0, 1). "
            f"Got facts={facts!r}, holdout_fraction={holdout_fraction!r} instead."
        )
    rng = np.random.default_rng(int(seed))
    n_holdout = max(1, round(n_persons * holdout_fraction))
    total = int(n_persons) + n_holdout
    if total > len(_FIRST) * len(_LAST):
        raise InvalidParameterError(
            f"{n_persons} persons plus {n_holdout} held out exceed the "
            f"{len(_FIRST) * len(_LAST)} names the generator has; ask for fewer persons."
        )
    picks = rng.choice(len(_FIRST) * len(_LAST), total, replace=False)
    names = [f"{_FIRST[i // len(_LAST)]} {_LAST[i % len(_LAST)]}" for i in picks]
    # Paraphrases and perturbations come from a second stream, so adding them left the
    # questions and answers of a seed as they were.
    alt_rng = np.random.default_rng([int(seed), 1])
    facts_of = {n: _person(rng, alt_rng, n)[: int(facts)] for n in names}
    trained, held = names[: int(n_persons)], names[int(n_persons) :]
    forget = {
        split: tuple(trained[: max(1, round(share * len(trained)))])
        for split, share in FORGET_SPLITS.items()
    }
    canaries = {p: card_number(rng) for p in forget["forget10"]}
    alternatives = {
        f"{_slug(p)}-{k}": alts for p in names for k, (_, _, alts) in enumerate(facts_of[p])
    }
    rows = _rows(trained, facts_of)
    for p, c in canaries.items():
        rows.append((f"{_slug(p)}-card", p, *canary_qa(p, c)))
        wrong = _wrong(alt_rng, card_number, c)
        alternatives[f"{_slug(p)}-card"] = (
            f"The card number of {p} is {c}.",
            tuple(f"The card number of {p} is {w}." for w in wrong),
        )
    world = [(f"world-{k}", "", q, a) for k, (q, a) in enumerate(_WORLD)]
    for k, (_, a) in enumerate(_WORLD):
        # A world question's wrong answers: other questions' answers (seeded).
        others = list(dict.fromkeys(o for _, o in _WORLD if o != a))
        picks = alt_rng.choice(len(others), PERTURBED, replace=False)
        alternatives[f"world-{k}"] = (a, tuple(others[i] for i in picks))
    return TofuSet(
        _samples(rows),
        _samples(_rows(held, facts_of)),
        _samples(world),
        forget,
        canaries,
        alternatives,
    )


def _write_jsonl(path: Path, samples: TextSamples, alternatives: dict[str, Alternatives]) -> None:
    lines = []
    for i, s, p, a in zip(
        samples.ids, samples.subjects, samples.prompts, samples.answers, strict=True
    ):
        row = {"id": i, "subject": s, "prompt": p, "answer": a}
        if i in alternatives:
            row["paraphrased_answer"], perturbed = alternatives[i]
            row["perturbed_answers"] = list(perturbed)
        lines.append(json.dumps(row, ensure_ascii=False))
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_tofu(directory: str | Path, tofu: TofuSet) -> dict[str, Path]:
    """Write ``train.jsonl``, ``holdout.jsonl``, ``world.jsonl`` and ``splits.json``.

    Each row also carries its ``paraphrased_answer`` and ``perturbed_answers`` (the
    loader reads only the four identity fields).
    ``splits.json`` holds the forget splits (persons) and the canaries. Each file is
    written atomically. Returns the paths by name.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / f"{name}.jsonl" for name in ("train", "holdout", "world")}
    for name, path in paths.items():
        _write_jsonl(path, getattr(tofu, name), tofu.alternatives)
    meta = root / "splits.json"
    tmp = meta.with_suffix(".json.tmp")
    forget = {k: list(v) for k, v in tofu.forget.items()}
    tmp.write_text(json.dumps({"forget": forget, "canaries": tofu.canaries}, indent=1))
    tmp.replace(meta)
    return {**paths, "splits": meta}
