"""A generator of a realistic multi-skill instruction pool and a target set for one skill.

The built-in demo runs on it, so it works on a machine with no data sets at all. Eight skills,
each with varied templates; a share of the answers is wrong or noisy (flagged ``noisy`` in the
record, as real pools carry such rows unflagged). Every record keeps its skill as ``task`` so a
selection can be checked against the pool's base rate.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from gradsift.atomic import write_text_atomic

Record = dict[str, object]

_NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Liam",
    "Mei",
    "Noor",
]
_ITEMS = [
    "buttons",
    "beads",
    "tickets",
    "postcards",
    "crayons",
    "balloons",
    "erasers",
    "puzzles",
    "candles",
    "ribbons",
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "stamps",
    "shells",
    "coins",
    "cards",
]
_CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Egypt": "Cairo",
    "Vietnam": "Hanoi",
    "Chile": "Santiago",
    "Poland": "Warsaw",
    "Australia": "Canberra",
    "India": "New Delhi",
    "Ghana": "Accra",
    "Spain": "Madrid",
    "Turkey": "Ankara",
}
_WORDS = ["garden", "planet", "silver", "window", "rocket", "bridge", "forest", "candle", "mirror", "castle", "pepper"]
_ANTONYMS = {
    "hot": "cold",
    "early": "late",
    "happy": "sad",
    "heavy": "light",
    "open": "closed",
    "ancient": "modern",
    "generous": "stingy",
    "brave": "cowardly",
    "narrow": "wide",
    "rough": "smooth",
    "loud": "quiet",
}
_REVIEWS = [
    ("I loved every minute of this film, the acting was superb.", "Positive"),
    ("The food was cold and the waiter ignored us all evening.", "Negative"),
    ("Setup took two minutes and it has worked perfectly since.", "Positive"),
    ("The battery died after a week and support never replied.", "Negative"),
    ("A charming little book that made me smile on every page.", "Positive"),
    ("Overpriced, noisy and the room smelled of smoke.", "Negative"),
]
_GRAMMAR = [
    ("She go to school every day.", "She goes to school every day."),
    ("They was late for the meeting.", "They were late for the meeting."),
    ("He don't like coffee.", "He doesn't like coffee."),
    ("I has two brothers.", "I have two brothers."),
    ("We goes to the park on Sundays.", "We go to the park on Sundays."),
]
_UNITS = [
    ("km", "m", 1000, "meters"),
    ("kg", "g", 1000, "grams"),
    ("hours", "minutes", 60, "minutes"),
    ("m", "cm", 100, "centimeters"),
    ("minutes", "seconds", 60, "seconds"),
]


def _arithmetic(rng: random.Random, noisy: bool) -> Record:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(3, 40), rng.randint(2, 25), rng.randint(2, 6)
    kind = rng.randrange(3)
    if kind == 0:
        q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        steps, ans = f"{a} + {b} = {a + b}", a + b
    elif kind == 1:
        a = max(a, b + 1)
        q = f"{name} had {a} {item} and gave {b} to a friend. How many {item} are left?"
        steps, ans = f"{a} - {b} = {a - b}", a - b
    else:
        q = f"{name} buys {c} boxes with {b} {item} in each box. How many {item} is that in total?"
        steps, ans = f"{c} x {b} = {c * b}", c * b
    if noisy:
        ans = ans + rng.choice([-3, -1, 1, 2, 7])
        steps = steps.rsplit("=", 1)[0] + f"= {ans}"
    return {"instruction": q, "input": "", "output": f"{steps}. The answer is {ans}."}


def _capital(rng: random.Random, noisy: bool) -> Record:
    country = rng.choice(list(_CAPITALS))
    city = rng.choice(list(_CAPITALS.values())) if noisy else _CAPITALS[country]
    q = rng.choice(
        ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"]
    )
    return {"instruction": q.format(c=country), "input": "", "output": f"The capital of {country} is {city}."}


def _units(rng: random.Random, noisy: bool) -> Record:
    src, dst, factor, long = rng.choice(_UNITS)
    v = rng.randint(2, 12)
    res = v * factor + (rng.choice([-10, 10, 1]) if noisy else 0)
    return {"instruction": f"Convert {v} {src} to {dst}.", "input": "", "output": f"{v} {src} is {res} {long}."}


def _reverse(rng: random.Random, noisy: bool) -> Record:
    w = rng.choice(_WORDS)
    r = w[::-1] if not noisy else w[::-1][1:] + w[-1]
    return {"instruction": "Write the given word backwards.", "input": w, "output": r}


def _sentiment(rng: random.Random, noisy: bool) -> Record:
    text, label = rng.choice(_REVIEWS)
    if noisy:
        label = "Negative" if label == "Positive" else "Positive"
    return {
        "instruction": "Classify the sentiment of this review as Positive or Negative.",
        "input": text,
        "output": label,
    }


def _antonym(rng: random.Random, noisy: bool) -> Record:
    w = rng.choice(list(_ANTONYMS))
    a = rng.choice(list(_ANTONYMS.values())) if noisy else _ANTONYMS[w]
    return {"instruction": f"Give the opposite of the word '{w}'.", "input": "", "output": a}


def _grammar(rng: random.Random, noisy: bool) -> Record:
    bad, good = rng.choice(_GRAMMAR)
    return {"instruction": "Correct the grammar of the sentence.", "input": bad, "output": bad if noisy else good}


def _note(rng: random.Random, noisy: bool) -> Record:
    name, thing = (
        rng.choice(_NAMES),
        rng.choice(
            [
                "the flowers",
                "your help with the move",
                "the birthday gift",
                "dinner last night",
                "the book you lent me",
            ]
        ),
    )
    body = (
        f"Dear {name},\n\nThank you so much for {thing}. It meant a lot to me, and I hope to return the "
        "favour soon.\n\nWarm wishes"
    )
    if noisy:
        body = "ok thanks"
    return {"instruction": f"Write a short thank-you note to {name} for {thing}.", "input": "", "output": body}


SKILLS: dict[str, Callable[[random.Random, bool], Record]] = {
    "arithmetic": _arithmetic,
    "capitals": _capital,
    "units": _units,
    "reverse": _reverse,
    "sentiment": _sentiment,
    "antonyms": _antonym,
    "grammar": _grammar,
    "thank-you-notes": _note,
}


def make_pool(
    n: int, seed: int = 0, noise: float = 0.15, target_skill: str = "arithmetic", target_share: float = 0.125
) -> list[Record]:
    """Alpaca-format pool records with ``task`` (the skill) and ``noisy`` labels.

    Args:
        n: Number of records.
        seed: Seed of the generator.
        noise: Share of records with a wrong or low-quality answer.
        target_skill: The skill the targets will ask for.
        target_share: Its share of the pool; the other skills share the rest equally.
    """
    if not 0 <= noise < 1 or not 0 < target_share < 1 or n < 1:
        raise ValueError("need n >= 1, 0 <= noise < 1 and 0 < target_share < 1")
    if target_skill not in SKILLS:
        raise ValueError(f"unknown skill {target_skill!r}; choose from {', '.join(SKILLS)}")
    rng = random.Random(seed)
    others = [s for s in SKILLS if s != target_skill]
    n_target = round(n * target_share)
    skills = [target_skill] * n_target + [others[i % len(others)] for i in range(n - n_target)]
    rng.shuffle(skills)
    out = []
    for skill in skills:
        noisy = rng.random() < noise
        rec = SKILLS[skill](rng, noisy)
        out.append({**rec, "task": skill, "noisy": noisy})
    return out


def make_targets(n: int, seed: int = 1, skill: str = "arithmetic") -> list[Record]:
    """Clean target examples of one skill, labelled with ``task``, each with a wrong answer as ``rejected``
    (the unwanted response PRISM contrasts with the wanted one)."""
    rng = random.Random(seed + 10_000)
    out = []
    for _ in range(n):
        state = rng.getstate()
        good = SKILLS[skill](rng, False)
        rng.setstate(state)
        bad = SKILLS[skill](rng, True)
        out.append({**good, "task": skill, "rejected": bad["output"]})
    return out


def write_demo_data(out_dir: str | Path, n_pool: int = 240, n_targets: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write ``pool.jsonl`` and ``targets.jsonl`` into `out_dir`.

    Returns:
        Paths of the pool and target files.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    pool, targets = d / "pool.jsonl", d / "targets.jsonl"
    write_text_atomic(pool, "".join(json.dumps(r) + "\n" for r in make_pool(n_pool, seed)))
    write_text_atomic(targets, "".join(json.dumps(r) + "\n" for r in make_targets(n_targets, seed)))
    return pool, targets
