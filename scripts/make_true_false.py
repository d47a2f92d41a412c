"""Generate ``datasets/true_false_statements/``: plain statements whose truth value this script checks.

Every fact comes from a computation (arithmetic, comparisons, unit conversions, number properties) or from
the hand-written tables below (capitals, continents, chemical symbols and atomic numbers, planets, the
calendar, animal classes). Each fact yields a *group* of two rows built from the same template: the true
statement and a false variant that differs only in the value, so a probe cannot separate them by topic or
wording. Deterministic: the same seed writes byte-identical files.

    python scripts/make_true_false.py            # writes datasets/true_false_statements/
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dataset_io import LICENSE, generator_main  # noqa: E402

NAME = "true_false_statements"
SEED = 20261121


@dataclass(frozen=True)
class Fact:
    """One checkable fact: the true statement and its false variant, built from the same template."""

    family: str
    true: str
    false: str


def fill(template: str, **values: object) -> str:
    text = template.format(**values)
    return text[0].upper() + text[1:]


def pair(family: str, template: str, true_value: object, false_value: object, **fixed: object) -> Fact:
    """A fact whose true and false statements differ only in the slot ``{v}``."""
    if str(true_value) == str(false_value):
        raise ValueError(f"false value equals true value in {template!r}: {true_value!r}")
    return Fact(family, fill(template, v=true_value, **fixed), fill(template, v=false_value, **fixed))


# --------------------------------------------------------------------------------------------------------
# Hand-written fact tables. Only uncontested entries: no countries whose capital is disputed or has moved
# recently, no transcontinental countries.
CAPITALS: dict[str, tuple[str, str]] = {
    # country: (capital, continent)
    "France": ("Paris", "Europe"),
    "Germany": ("Berlin", "Europe"),
    "Italy": ("Rome", "Europe"),
    "Spain": ("Madrid", "Europe"),
    "Portugal": ("Lisbon", "Europe"),
    "Belgium": ("Brussels", "Europe"),
    "Austria": ("Vienna", "Europe"),
    "Poland": ("Warsaw", "Europe"),
    "the Czech Republic": ("Prague", "Europe"),
    "Hungary": ("Budapest", "Europe"),
    "Greece": ("Athens", "Europe"),
    "Sweden": ("Stockholm", "Europe"),
    "Norway": ("Oslo", "Europe"),
    "Denmark": ("Copenhagen", "Europe"),
    "Finland": ("Helsinki", "Europe"),
    "Ireland": ("Dublin", "Europe"),
    "Iceland": ("Reykjavik", "Europe"),
    "Romania": ("Bucharest", "Europe"),
    "Bulgaria": ("Sofia", "Europe"),
    "Serbia": ("Belgrade", "Europe"),
    "Croatia": ("Zagreb", "Europe"),
    "Japan": ("Tokyo", "Asia"),
    "China": ("Beijing", "Asia"),
    "South Korea": ("Seoul", "Asia"),
    "India": ("New Delhi", "Asia"),
    "Pakistan": ("Islamabad", "Asia"),
    "Bangladesh": ("Dhaka", "Asia"),
    "Thailand": ("Bangkok", "Asia"),
    "Vietnam": ("Hanoi", "Asia"),
    "the Philippines": ("Manila", "Asia"),
    "Malaysia": ("Kuala Lumpur", "Asia"),
    "Iran": ("Tehran", "Asia"),
    "Iraq": ("Baghdad", "Asia"),
    "Saudi Arabia": ("Riyadh", "Asia"),
    "Nepal": ("Kathmandu", "Asia"),
    "Mongolia": ("Ulaanbaatar", "Asia"),
    "Kenya": ("Nairobi", "Africa"),
    "Nigeria": ("Abuja", "Africa"),
    "Ghana": ("Accra", "Africa"),
    "Ethiopia": ("Addis Ababa", "Africa"),
    "Morocco": ("Rabat", "Africa"),
    "Algeria": ("Algiers", "Africa"),
    "Tunisia": ("Tunis", "Africa"),
    "Senegal": ("Dakar", "Africa"),
    "Uganda": ("Kampala", "Africa"),
    "Zimbabwe": ("Harare", "Africa"),
    "Canada": ("Ottawa", "North America"),
    "Mexico": ("Mexico City", "North America"),
    "Cuba": ("Havana", "North America"),
    "Jamaica": ("Kingston", "North America"),
    "Argentina": ("Buenos Aires", "South America"),
    "Chile": ("Santiago", "South America"),
    "Peru": ("Lima", "South America"),
    "Colombia": ("Bogotá", "South America"),
    "Venezuela": ("Caracas", "South America"),
    "Ecuador": ("Quito", "South America"),
    "Uruguay": ("Montevideo", "South America"),
    "Paraguay": ("Asunción", "South America"),
    "Brazil": ("Brasília", "South America"),
    "Australia": ("Canberra", "Oceania"),
    "New Zealand": ("Wellington", "Oceania"),
    "Fiji": ("Suva", "Oceania"),
}

ELEMENTS: list[tuple[str, str, int]] = [
    # (name, symbol, atomic number)
    ("hydrogen", "H", 1),
    ("helium", "He", 2),
    ("lithium", "Li", 3),
    ("beryllium", "Be", 4),
    ("boron", "B", 5),
    ("carbon", "C", 6),
    ("nitrogen", "N", 7),
    ("oxygen", "O", 8),
    ("fluorine", "F", 9),
    ("neon", "Ne", 10),
    ("sodium", "Na", 11),
    ("magnesium", "Mg", 12),
    ("aluminium", "Al", 13),
    ("silicon", "Si", 14),
    ("phosphorus", "P", 15),
    ("sulfur", "S", 16),
    ("chlorine", "Cl", 17),
    ("argon", "Ar", 18),
    ("potassium", "K", 19),
    ("calcium", "Ca", 20),
    ("titanium", "Ti", 22),
    ("chromium", "Cr", 24),
    ("manganese", "Mn", 25),
    ("iron", "Fe", 26),
    ("cobalt", "Co", 27),
    ("nickel", "Ni", 28),
    ("copper", "Cu", 29),
    ("zinc", "Zn", 30),
    ("arsenic", "As", 33),
    ("selenium", "Se", 34),
    ("bromine", "Br", 35),
    ("krypton", "Kr", 36),
    ("silver", "Ag", 47),
    ("tin", "Sn", 50),
    ("iodine", "I", 53),
    ("xenon", "Xe", 54),
    ("barium", "Ba", 56),
    ("tungsten", "W", 74),
    ("platinum", "Pt", 78),
    ("gold", "Au", 79),
    ("mercury", "Hg", 80),
    ("lead", "Pb", 82),
    ("radon", "Rn", 86),
    ("uranium", "U", 92),
]

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # February is skipped: leap years vary
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

ANIMALS: dict[str, str] = {
    "whale": "mammal",
    "dolphin": "mammal",
    "bat": "mammal",
    "elephant": "mammal",
    "kangaroo": "mammal",
    "platypus": "mammal",
    "walrus": "mammal",
    "hedgehog": "mammal",
    "penguin": "bird",
    "ostrich": "bird",
    "eagle": "bird",
    "owl": "bird",
    "parrot": "bird",
    "flamingo": "bird",
    "shark": "fish",
    "salmon": "fish",
    "tuna": "fish",
    "trout": "fish",
    "seahorse": "fish",
    "frog": "amphibian",
    "salamander": "amphibian",
    "toad": "amphibian",
    "newt": "amphibian",
    "crocodile": "reptile",
    "turtle": "reptile",
    "lizard": "reptile",
    "iguana": "reptile",
    "python": "reptile",
    "spider": "arachnid",
    "scorpion": "arachnid",
    "bee": "insect",
    "ant": "insect",
    "butterfly": "insect",
    "beetle": "insect",
    "dragonfly": "insect",
    "octopus": "mollusc",
    "snail": "mollusc",
    "squid": "mollusc",
}

# (large unit, small unit, exact factor)
UNITS: list[tuple[str, str, int]] = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("centimeters", "millimeters", 10),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("feet", "inches", 12),
    ("yards", "feet", 3),
    ("years", "months", 12),
    ("decades", "years", 10),
    ("centuries", "years", 100),
    ("US gallons", "US quarts", 4),
    ("kilobytes", "bytes", 1000),
]


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def number_words(n: int) -> str:
    return f"{n:,}"


# --------------------------------------------------------------------------------------------------------
# Fact families. Each yields facts; the false value is checked to differ from the true one.


def arithmetic(rng: random.Random, n: int) -> Iterator[Fact]:
    ops: list[tuple[str, Callable[[int, int], int], list[str]]] = [
        (
            "+",
            lambda a, b: a + b,
            ["{a} plus {b} equals {v}.", "the sum of {a} and {b} is {v}.", "adding {b} to {a} gives {v}."],
        ),
        (
            "-",
            lambda a, b: a - b,
            [
                "{a} minus {b} equals {v}.",
                "subtracting {b} from {a} leaves {v}.",
                "the difference between {a} and {b} is {v}.",
            ],
        ),
        (
            "*",
            lambda a, b: a * b,
            [
                "{a} times {b} equals {v}.",
                "the product of {a} and {b} is {v}.",
                "{a} multiplied by {b} is {v}.",
            ],
        ),
    ]
    for i in range(n):
        symbol, fn, templates = ops[i % len(ops)]
        if symbol == "*":
            a, b = rng.randint(2, 30), rng.randint(2, 25)
        else:
            a, b = rng.randint(10, 999), rng.randint(2, 500)
            if symbol == "-" and b > a:
                a, b = b, a
        value = fn(a, b)
        wrong = value + rng.choice([-10, -2, -1, 1, 2, 10, b, -b] if symbol != "*" else [-a, a, -b, b, 1, -1])
        if wrong == value or wrong < 0:
            wrong = value + 1
        template = rng.choice(templates).replace("{a}", str(a)).replace("{b}", str(b))
        yield pair("arithmetic", template, value, wrong)


def comparison(rng: random.Random, n: int) -> Iterator[Fact]:
    for i in range(n):
        kind = i % 4
        if kind == 3:  # decimals, where the longer number is the smaller one
            x = round(rng.uniform(0.2, 9.9), 1)
            y = round(x - rng.choice([0.05, 0.15, 0.25, 0.35]), 2)
            big, small = f"{x:g}", f"{y:g}"
        else:
            hi = [100, 10_000, 1_000_000][kind]
            a, b = rng.sample(range(2, hi), 2)
            big, small = number_words(max(a, b)), number_words(min(a, b))
        # Same template, the two numbers swapped.
        if i % 2 == 0:
            template = rng.choice(["{a} is greater than {b}.", "{a} is a larger number than {b}."])
            true, false = fill(template, a=big, b=small), fill(template, a=small, b=big)
        else:
            template = rng.choice(["{a} is less than {b}.", "{a} is a smaller number than {b}."])
            true, false = fill(template, a=small, b=big), fill(template, a=big, b=small)
        yield Fact("comparison", true, false)


def units(rng: random.Random, n: int) -> Iterator[Fact]:
    for i in range(n):
        big, small, factor = UNITS[i % len(UNITS)]
        count = rng.randint(2, 40)
        value = count * factor
        wrong = rng.choice(
            [count * factor * 10, count * factor // 10, (count + 1) * factor, value + factor // 2]
        )
        if wrong == value or wrong <= 0:
            wrong = (count + 1) * factor
        template = rng.choice(
            [
                "{n} {big} is {v} {small}.",
                "there are {v} {small} in {n} {big}.",
                "{n} {big} equals {v} {small}.",
            ]
        )
        yield pair("units", template, number_words(value), number_words(wrong), n=count, big=big, small=small)


def numbers(rng: random.Random, n: int) -> Iterator[Fact]:
    for i in range(n):
        kind = i % 3
        if kind == 0:
            x = rng.randint(11, 999)
            true, false = ("even", "odd") if x % 2 == 0 else ("odd", "even")
            yield pair("numbers", "{x} is an {v} number.", true, false, x=x)
        elif kind == 1:
            x = rng.randint(11, 199)
            while x % 2 == 0 or x % 5 == 0:  # odd numbers not ending in 5, so primality is not obvious
                x = rng.randint(11, 199)
            true, false = ("prime", "composite") if is_prime(x) else ("composite", "prime")
            yield pair("numbers", "{x} is a {v} number.", true, false, x=x)
        else:
            x = rng.randint(4, 40)
            yield pair(
                "numbers",
                rng.choice(["the square of {x} is {v}.", "{x} squared is {v}."]),
                x * x,
                rng.choice([x * x + x, x * x - x, (x + 1) ** 2, x * 2]),
                x=x,
            )


def geography(rng: random.Random) -> Iterator[Fact]:
    countries = list(CAPITALS)
    continents = sorted({c for _, c in CAPITALS.values()})
    for country in countries:
        capital, continent = CAPITALS[country]
        # A wrong capital from the same continent is the harder, more plausible distractor.
        others = [CAPITALS[c][0] for c in countries if c != country and CAPITALS[c][1] == continent]
        template = rng.choice(["the capital of {c} is {v}.", "{v} is the capital of {c}."])
        yield pair("geography", template, capital, rng.choice(others), c=country)
    for country in countries:
        if country in {"Australia"}:  # "Australia is in Oceania" mixes country and continent names
            continue
        _, continent = CAPITALS[country]
        wrong = rng.choice([c for c in continents if c != continent])
        yield pair(
            "geography",
            rng.choice(["{c} is in {v}.", "{c} is a country in {v}."]),
            continent,
            wrong,
            c=country,
        )


def chemistry(rng: random.Random) -> Iterator[Fact]:
    symbols = [s for _, s, _ in ELEMENTS]
    for name, symbol, _number in ELEMENTS:
        template = rng.choice(["the chemical symbol for {e} is {v}.", "{v} is the chemical symbol of {e}."])
        yield pair("chemistry", template, symbol, rng.choice([s for s in symbols if s != symbol]), e=name)
    for name, _symbol, number in ELEMENTS[:30]:
        wrong = number + rng.choice([-2, -1, 1, 2])
        wrong = wrong if wrong > 0 else number + 1
        yield pair("chemistry", "the atomic number of {e} is {v}.", number, wrong, e=name)


def astronomy(rng: random.Random) -> Iterator[Fact]:
    for i, planet in enumerate(PLANETS):
        wrong = rng.choice([o for o in ORDINALS[:8] if o != ORDINALS[i]])
        yield pair("astronomy", "{p} is the {v} planet from the Sun.", ORDINALS[i], wrong, p=planet)
    for i in range(len(PLANETS)):
        for j in range(i + 1, len(PLANETS)):
            near, far = PLANETS[i], PLANETS[j]
            template = "{a} is closer to the Sun than {b}."
            yield Fact("astronomy", fill(template, a=near, b=far), fill(template, a=far, b=near))


def calendar(rng: random.Random) -> Iterator[Fact]:
    for i, month in enumerate(MONTHS):
        if month != "February":
            yield pair("calendar", "{m} has {v} days.", MONTH_DAYS[i], 61 - MONTH_DAYS[i], m=month)
    for i, month in enumerate(MONTHS):
        wrong = rng.choice([m for m in MONTHS if m not in (month, MONTHS[(i + 1) % 12])])
        yield pair("calendar", "the month after {m} is {v}.", MONTHS[(i + 1) % 12], wrong, m=month)
    for i, month in enumerate(MONTHS):
        wrong = rng.choice([o for o in ORDINALS if o != ORDINALS[i]])
        yield pair("calendar", "{m} is the {v} month of the year.", ORDINALS[i], wrong, m=month)
    for i, day in enumerate(WEEKDAYS):
        wrong = rng.choice([d for d in WEEKDAYS if d not in (day, WEEKDAYS[(i + 1) % 7])])
        yield pair("calendar", "the day after {d} is {v}.", WEEKDAYS[(i + 1) % 7], wrong, d=day)


def animals(rng: random.Random) -> Iterator[Fact]:
    classes = sorted(set(ANIMALS.values()))
    for animal, cls in ANIMALS.items():
        wrong = rng.choice([c for c in classes if c != cls])
        true = fill("{a} {x} is {b} {c}.", a=article(animal), x=animal, b=article(cls), c=cls)
        false = fill("{a} {x} is {b} {c}.", a=article(animal), x=animal, b=article(wrong), c=wrong)
        yield Fact("animals", true, false)


def build_facts(seed: int = SEED) -> list[Fact]:
    """All facts, in a fixed order; each family draws from its own seeded stream."""
    streams = {
        name: random.Random(f"{seed}-{name}")
        for name in (
            "arithmetic",
            "comparison",
            "units",
            "numbers",
            "geography",
            "chemistry",
            "astronomy",
            "calendar",
            "animals",
        )
    }
    facts: list[Fact] = [
        *arithmetic(streams["arithmetic"], 150),
        *comparison(streams["comparison"], 96),
        *units(streams["units"], 96),
        *numbers(streams["numbers"], 72),
        *geography(streams["geography"]),
        *chemistry(streams["chemistry"]),
        *astronomy(streams["astronomy"]),
        *calendar(streams["calendar"]),
        *animals(streams["animals"]),
    ]
    seen: set[str] = set()
    unique = []
    for fact in facts:
        if fact.true == fact.false:
            raise ValueError(f"degenerate fact {fact}")
        if fact.true in seen or fact.false in seen:  # a random draw repeated a fact; keep the first
            continue
        seen.update((fact.true, fact.false))
        unique.append(fact)
    return unique


def build_rows(seed: int = SEED) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    counts: dict[str, int] = {}
    for fact in build_facts(seed):
        k = counts[fact.family] = counts.get(fact.family, 0) + 1
        group = f"tf-{fact.family}-{k:03d}"
        # Alternate which variant comes first so row order carries no label information.
        order = [(True, fact.true), (False, fact.false)]
        if k % 2:
            order.reverse()
        for truth, text in order:
            rows.append(
                {
                    "id": f"{group}-{'t' if truth else 'f'}",
                    "text": text,
                    "label": "true" if truth else "false",
                    "group": group,
                    "conditions": {"family": fact.family},
                }
            )
    return rows


CARD = {
    "name": NAME,
    "description": (
        "Plain-text factual statements with verifiable truth values, in minimal true/false pairs: the true "
        "statement and a false variant built from the same template that differ only in the value (a number, "
        "a capital, a symbol, an ordinal, or the order of two compared items). Families: arithmetic, "
        "comparison (integers of three magnitudes and decimals), units (exact conversions), numbers (parity, "
        "primality, squares), geography (capitals, continents), chemistry (symbols, atomic numbers), "
        "astronomy (planet order), calendar (month lengths and order, weekdays) and animals (classes). "
        "Label 'true' is the positive class (the state a truth probe detects)."
    ),
    "label_names": ["false", "true"],
    "source": "Generated for this project by scripts/make_true_false.py from computations and hand-written fact tables.",
    "license": LICENSE,
    "how_made": (
        "python scripts/make_true_false.py (deterministic, seed 20261121; writes data.jsonl and this card), "
        "then python scripts/dataset_baselines.py to refresh the baseline numbers. Arithmetic, comparison, "
        "unit and number facts are computed by the script; the rest come from tables in the script restricted "
        "to uncontested entries (no disputed or recently moved capitals, no transcontinental countries, "
        "February left out of month lengths). Each row is {id, text, label, group, conditions: {family}}; "
        "no target, so the whole statement is read."
    ),
    "confounds": [
        "Within a pair only the value differs, so topic and template carry no label information; but a "
        "text model can still learn value-level regularities (e.g. a wrong arithmetic result is often the "
        "true one +-1, 2, 10, or an operand away; wrong unit results are often a power of ten away).",
        "Truth here is the truth of a short, well-known fact; a probe trained on it may track 'matches "
        "common knowledge' or model confidence rather than truth in general.",
        "Families differ in size and difficulty (arithmetic has the most pairs); report per-family results "
        "with conditions.family.",
        "Some statements repeat a pattern across families (e.g. 'is the Nth ...'), and false planet-order "
        "statements reuse ordinals that are true for other planets.",
    ],
    "intended_use": (
        "Training and testing truth-direction probes (geometry-of-truth style) and supplying true statements "
        "for the honesty_instructed_pairs set. Split by group so that both variants of a fact stay together; "
        "hold out a family (conditions.family) to test transfer across topics."
    ),
    "splits": (
        "No fixed split column. Use a grouped split (ContrastDataset.split), which keeps the two variants of "
        "a fact together; for topic transfer hold out families, e.g. holdout={'family': ['geography', "
        "'chemistry']}."
    ),
    "baselines": {},
}


def main(argv: list[str] | None = None) -> None:
    generator_main(argv, doc=__doc__, name=NAME, card=CARD, build_rows=build_rows, seed=SEED)


if __name__ == "__main__":
    main()
