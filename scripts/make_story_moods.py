"""Generate ``datasets/story_moods/``: short TinyStories-style stories whose second sentence turns sad or happy.

The demo data of the streaming monitor on the real ``stories260K`` model. Every sentence was written for this
project in the simple English of TinyStories. A *contrast* pair is one neutral opening continued by a sad turn
(label ``sad``, the positive class: what the monitor detects) or by a happy turn (``happy``); both rows of a
pair share a group and the detection target is the turn alone. A separate *control* part (its own openings
and turns, never in a pair) continues neutral openings with happy or uneventful turns: the benign traffic on
which a run calibrates the threshold the monitor uses. Select the parts with ``where: {part: [...]}``.

The rows involve no randomness: the same script writes byte-identical files (``--seed`` is accepted for the
shared generator command line and changes nothing).

    python scripts/make_story_moods.py            # writes datasets/story_moods/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dataset_io import LICENSE, generator_main  # noqa: E402

NAME = "story_moods"
SEED = 0

OPENINGS = [
    "Lily played with her red ball in the park.",
    "Tom had a little dog named Spot.",
    "Mia baked a big cake for her mom.",
    "Ben saw a little bird in the tree.",
    "Sue built a tall tower with her blocks.",
    "Max went to the beach with his dad.",
    "Anna had a pretty doll with a pink dress.",
    "Tim rode his new bike down the street.",
    "Lucy planted a flower in the garden.",
    "Jack made a kite and went outside.",
    "Amy got a new toy car for her birthday.",
    "Sam wanted to play with his friend.",
    "Kim found a shiny shell on the sand.",
    "Leo had a big red balloon.",
    "Rose and her cat sat by the window.",
    "Dan made a sand castle by the sea.",
    "Ella had a little fish in a bowl.",
    "Tom and Lily went to the zoo.",
    "Bob painted a picture for his teacher.",
    "Zoe wore her new hat to the park.",
]
# (sad turn, happy turn): the turn written for opening i is pair i; the two turns share their subject.
TURNS = [
    ("Then the ball was lost and she cried.", "Then she found a new friend and they laughed."),
    ("One day Spot ran away and Tom was very sad.", "One day Spot learned a trick and Tom was very happy."),
    ("The cake fell and broke and she started to cry.", "The cake was yummy and she smiled a big smile."),
    ("The bird was hurt and could not fly. Ben was sad.", "The bird sang a song and Ben was happy."),
    ("The tower fell down and Sue cried and cried.", "The tower was so tall and Sue laughed and clapped."),
    ("A big wave took his toy and Max was sad.", "They played in the sun and Max was happy."),
    ("The doll broke and Anna felt very sad.", "The doll looked so nice and Anna felt very happy."),
    ("He fell off and hurt his knee. He cried.", "He went very fast and laughed. He was happy."),
    ("The flower died and Lucy was sad.", "The flower grew big and Lucy was happy."),
    ("The kite got stuck in a tree and Jack cried.", "The kite flew high in the sky and Jack smiled."),
    ("The car broke and Amy was very sad.", "The car was fast and Amy was very happy."),
    ("His friend said no and Sam felt sad and alone.", "His friend said yes and Sam felt happy and glad."),
    ("The shell broke in her hand and Kim cried.", "The shell was so pretty and Kim smiled."),
    ("The balloon popped and Leo was very sad.", "The balloon went up high and Leo laughed."),
    ("The cat ran away and Rose felt sad and alone.", "The cat purred and Rose felt happy and warm."),
    ("A big wave broke the castle and Dan cried.", "The castle was big and Dan clapped his hands."),
    ("One day the fish got sick and Ella was sad.", "The fish swam fast and Ella was happy."),
    (
        "It rained and they could not see the animals. They were sad.",
        "They saw a big lion and a funny monkey. They were happy.",
    ),
    ("The teacher did not like it and Bob was sad.", "The teacher loved it and Bob was very happy."),
    ("The wind took her hat away and Zoe cried.", "Her friends liked her hat and Zoe smiled."),
]
# Each opening gets its own turn pair and five others spread over the list, so a turn is read after
# six different openings and no opening's wording can stand in for the mood.
OFFSETS = (0, 3, 7, 10, 13, 17)

CONTROL_OPENINGS = [
    "Pip the puppy woke up early.",
    "Nina went to the shop with her dad.",
    "Ann and Kate played a game.",
    "Mom made soup for lunch.",
    "Ted found a book under his bed.",
    "The little duck swam in the pond.",
    "Molly drew a house with a green door.",
    "Grandpa took Jen to the farm.",
    "Ollie put on his rain boots.",
    "A small frog sat on a log.",
]
CONTROL_TURNS = [
    "They ate a snack and then took a nap.",
    "It was a fun day and everyone smiled.",
    "She said thank you and gave him a hug.",
    "They sang a song together and laughed.",
    "Then they went home for dinner.",
    "The sun was warm and the sky was blue.",
    "He shared it with his friends and they all played.",
    "They counted to ten and then they ran outside.",
    "It was good and they wanted to do it again.",
    "At the end of the day they were happy and tired.",
]


def _row(id_: str, opening: str, turn: str, label: str, group: str, part: str) -> dict[str, Any]:
    text = f"{opening} {turn}"
    return {
        "id": id_,
        "text": text,
        "label": label,
        "group": group,
        "conditions": {"part": part},
        "target": {"span": [len(opening) + 1, len(text)]},
    }


def build_rows(seed: int = SEED) -> list[dict[str, Any]]:
    del seed  # no randomness: see the module docstring
    rows: list[dict[str, Any]] = []
    for i, opening in enumerate(OPENINGS):
        for offset in OFFSETS:
            j = (i + offset) % len(TURNS)
            group = f"sm-{i:02d}-{j:02d}"
            sad, happy = TURNS[j]
            rows.append(_row(f"{group}-sad", opening, sad, "sad", group, "contrast"))
            rows.append(_row(f"{group}-happy", opening, happy, "happy", group, "contrast"))
    for i, opening in enumerate(CONTROL_OPENINGS):
        for j, turn in enumerate(CONTROL_TURNS):
            group = f"smc-{i:02d}-{j:02d}"
            rows.append(_row(group, opening, turn, "happy", group, "control"))
    return rows


CARD = {
    "name": NAME,
    "description": (
        "Short TinyStories-style stories: a neutral opening sentence continued by a sad or a happy turn. "
        f"{len(OPENINGS) * len(OFFSETS)} contrast pairs (part: contrast; the sad and the happy continuation of "
        f"one opening share a group) and {len(CONTROL_OPENINGS) * len(CONTROL_TURNS)} single benign rows "
        "(part: control; other openings with happy or uneventful turns, label happy) for calibrating a "
        "monitor's threshold. The detection target is the turn. Label 'sad' is the positive class (the state "
        "the streaming monitor detects and stops)."
    ),
    "label_names": ["happy", "sad"],
    "source": "Written for this project (scripts/make_story_moods.py) in the style of TinyStories.",
    "license": LICENSE,
    "how_made": (
        "python scripts/make_story_moods.py (deterministic; writes data.jsonl and this card). Every sentence "
        "is hand-written in the script: 20 openings, 20 (sad, happy) turn pairs with the same subject, and "
        "each opening continued by its own turn pair and five others (offsets 0, 3, 7, 10, 13, 17); control rows "
        "are all 10 x 10 combinations of 10 other openings and 10 happy or uneventful turns. Each row is {id, "
        "text, label, group, conditions: {part}, target: {span: [start, end]}} with the span on the turn. "
        "Baselines: TF-IDF + logistic regression (probes.evaluation.text_baseline) on a grouped 75/25 split "
        "of the contrast part, seed 0."
    ),
    "confounds": [
        "The mood is written in plain words (sad, cried, happy, smiled, laughed): a bag-of-words model reads "
        "the label off the turn (see baselines). A probe's AUROC here says nothing about hidden states beyond "
        "the words; this dataset demonstrates the monitor, it does not test what the model represents.",
        "Sad turns are built from a small vocabulary (sad, cried, broke, lost, fell, alone); a probe may learn "
        "'crying/breaking' rather than sadness in general, and fire on sad-sounding words in a happy story.",
        "Some turns name a character of another opening (turns are reused across openings), so a few stories "
        "switch names mid-story; both rows of a pair share the mismatch.",
        "Control rows are happy or uneventful by construction and shorter on average than the contrast turns; "
        "a threshold calibrated on them holds for simple, calm stories, not for any text.",
    ],
    "intended_use": (
        "The streaming-monitor demo on the tiny real model stories260K: train a token probe on the contrast "
        "part (every token of the turn), calibrate its threshold on the control part, and stop a story that "
        "turns sad while it is generated. Split the contrast part by group so both continuations of an "
        "opening stay together."
    ),
    "splits": (
        "No fixed split column. Train and test on where: {part: [contrast]} with a grouped split "
        "(ContrastDataset.split); use where: {part: [control]} as the control set (single class, label happy)."
    ),
    "baselines": {},
}


def main(argv: list[str] | None = None) -> None:
    generator_main(argv, doc=__doc__, name=NAME, card=CARD, build_rows=build_rows, seed=SEED)


if __name__ == "__main__":
    main()
