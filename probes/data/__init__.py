"""Contrast datasets: rows, cards, validation, grouped splits, chat rendering and exact detection masks.

``import probes.data`` stays light: torch/transformers/datasets are imported inside the functions that
need them.
"""

from probes.data.card import DatasetCard, load_card
from probes.data.dataset import ContrastDataset
from probes.data.load import load_dataset
from probes.data.render import Rendered, encode, encode_dataset, render, render_plain
from probes.data.types import Encoded, Example, Message, Target

__all__ = [
    "ContrastDataset",
    "DatasetCard",
    "Encoded",
    "Example",
    "Message",
    "Rendered",
    "Target",
    "encode",
    "encode_dataset",
    "load_card",
    "load_dataset",
    "render",
    "render_plain",
]
