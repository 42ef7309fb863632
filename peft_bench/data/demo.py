"""Templated sentiment sentences with negation and contrast, generated deterministically: the
offline demo dataset. A model must read the negation and the clause after "but" to score well."""

from __future__ import annotations

import itertools
import random

from datasets import Dataset, DatasetDict

SUBJECTS = [
    "the movie",
    "this film",
    "the acting",
    "the plot",
    "the soundtrack",
    "the ending",
    "the cast",
    "the script",
    "the direction",
    "the dialogue",
    "the story",
    "the pacing",
]
VERBS = ["was", "is", "felt", "seemed"]
POSITIVE = [
    "good",
    "great",
    "wonderful",
    "moving",
    "brilliant",
    "funny",
    "charming",
    "delightful",
    "gripping",
    "beautiful",
    "clever",
    "fresh",
]
NEGATIVE = [
    "bad",
    "boring",
    "awful",
    "dull",
    "terrible",
    "clumsy",
    "tedious",
    "forgettable",
    "weak",
    "painful",
    "bland",
    "messy",
]
NEGATIONS = ["not", "never", "hardly", "not at all"]
INTENSIFIERS = ["", "really", "very", "quite", "truly"]


def clause(rng: random.Random) -> tuple[str, int]:
    """One clause and its polarity (1 positive, 0 negative)."""
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    negated = rng.random() < 0.4
    words = [rng.choice(SUBJECTS), rng.choice(VERBS)]
    words += [rng.choice(NEGATIONS)] if negated else []
    words += [rng.choice(INTENSIFIERS), adjective]
    return " ".join(w for w in words if w), int(positive != negated)


def sentence(rng: random.Random) -> tuple[str, int]:
    """A clause, or 'A, but B' whose label is B's (the contrast decides)."""
    first, label = clause(rng)
    if rng.random() < 0.3:
        second, label = clause(rng)
        first = f"{first}, but {second}"
    return first, label


def build_demo(size: int, seed: int) -> DatasetDict:
    """`size` distinct sentences split 8:1:1 into train / validation / test (no sentence in two splits)."""
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    for _ in itertools.count():
        if len(seen) >= size:
            break
        text, label = sentence(rng)
        seen.setdefault(text, label)
    items = list(seen.items())
    n_val = n_test = size // 10
    parts = {
        "validation": items[:n_val],
        "test": items[n_val : n_val + n_test],
        "train": items[n_val + n_test :],
    }
    return DatasetDict(
        {
            split: Dataset.from_dict({"sentence": [t for t, _ in rows], "label": [y for _, y in rows]})
            for split, rows in parts.items()
        }
    )
