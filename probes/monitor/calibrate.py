"""Generation-level thresholds: calibrate a monitor on the model's own benign generations.

A bundle's text-level threshold controls the false-positive rate of the probe's score on benign control
*texts*. A deployed monitor is judged by something else: the share of benign *generations* it interrupts,
where it sees every generated token, in the model's own words, and fires on the first one whose smoothed
score crosses the threshold. :func:`calibrate_generation` measures that directly:

1. it turns benign control rows into prompts (a chat row: its turns up to the last user turn, rendered
   with the generation prompt; a text row: its text) and samples continuations with the monitor attached
   in ``flag`` mode, with the settings (sampling and monitor) recorded;
2. each generation's statistic is the score the monitor would have to exceed to interrupt it - the
   maximum over generated tokens of the smoothed score (with ``patience = k``: of its minimum over ``k``
   consecutive tokens); NaN or inf counts as interrupting;
3. the prompts are split by group into a calibration part and a held-out part; the threshold is the
   conformal rank of the calibration statistics (:func:`~probes.evaluation.thresholds.conformal_threshold`),
   so a new benign generation from the same distribution is interrupted with probability <= the target
   rate; the held-out part gives the measured interrupt rate with its exact (Clopper-Pearson) interval,
   for this threshold and for the bundle's text-level one beside it.

The result is stored in the bundle as a ``Threshold(kind="generation")`` with its record, which
:class:`~probes.monitor.Monitor` prefers over the text-level threshold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from probes.data.dataset import ContrastDataset
from probes.data.render import PLAIN_SEPARATOR, render_plain
from probes.data.types import Example
from probes.errors import DatasetError
from probes.package.bundle import ProbeBundle
from probes.package.entry import Threshold


@dataclass(frozen=True)
class ProbeCalibration:
    """One probe's generation-level threshold and what it was measured to do on held-out generations."""

    probe: str
    target_rate: float
    threshold: float
    n_calibration: int
    n_holdout: int
    holdout_interrupted: int
    holdout_interval: tuple[float, float]
    text_threshold: float | None
    text_holdout_interrupted: int | None
    calibration_stats: np.ndarray = field(repr=False)
    holdout_stats: np.ndarray = field(repr=False)

    @property
    def holdout_rate(self) -> float:
        return self.holdout_interrupted / self.n_holdout if self.n_holdout else float("nan")

    @property
    def text_holdout_rate(self) -> float | None:
        if self.text_holdout_interrupted is None or not self.n_holdout:
            return None
        return self.text_holdout_interrupted / self.n_holdout

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "target_rate": self.target_rate,
            "threshold": _num(self.threshold),
            "n_calibration": self.n_calibration,
            "n_holdout": self.n_holdout,
            "holdout_interrupted": self.holdout_interrupted,
            "holdout_rate": _num(self.holdout_rate),
            "holdout_interval": [_num(v) for v in self.holdout_interval],
            "text_threshold": None if self.text_threshold is None else _num(self.text_threshold),
            "text_holdout_interrupted": self.text_holdout_interrupted,
            "text_holdout_rate": None if self.text_holdout_rate is None else _num(self.text_holdout_rate),
        }


@dataclass(frozen=True)
class GenerationCalibration:
    """The result of :func:`calibrate_generation`: per probe and target rate, plus the record."""

    probes: list[ProbeCalibration]
    record: dict[str, Any]
    prompts: list[str] = field(repr=False)
    completions: list[str] = field(repr=False)
    holdout: np.ndarray = field(repr=False)  # (n,) bool: generation i is in the held-out part

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "probes": [p.to_json() for p in self.probes]}

    def thresholds(self) -> dict[str, list[Threshold]]:
        """``{probe: [Threshold(kind="generation"), ...]}`` ready to add to the bundle."""
        out: dict[str, list[Threshold]] = {}
        for p in self.probes:
            record = dict(self.record)
            record["monitor"] = self.record["monitor"][p.probe]
            record["holdout"] = {
                "n": p.n_holdout,
                "interrupted": p.holdout_interrupted,
                "rate": _num(p.holdout_rate),
                "interval": [_num(v) for v in p.holdout_interval],
            }
            out.setdefault(p.probe, []).append(
                Threshold(
                    value=float(p.threshold),
                    target_fpr=p.target_rate,
                    control_set=str(self.record["prompts"]["name"]),
                    control_fingerprint=self.record["prompts"]["fingerprint"],
                    n_control=p.n_calibration,
                    kind="generation",
                    record=record,
                )
            )
        return out

    def apply(self, bundle: ProbeBundle) -> ProbeBundle:
        """A copy of ``bundle`` whose probes carry these generation-level thresholds (replacing earlier
        generation-level ones for the same rates; text-level thresholds are kept)."""
        merged: dict[str, list[Threshold]] = {}
        for name, new in self.thresholds().items():
            rates = {t.target_fpr for t in new}
            kept = [
                t for t in bundle[name].thresholds if not (t.kind == "generation" and t.target_fpr in rates)
            ]
            merged[name] = kept + new
        return bundle.with_thresholds(**merged)

    def plot(self, path: Any) -> Any:
        """Histogram of the held-out generations' statistics with both thresholds, one panel per probe."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        names = sorted({p.probe for p in self.probes})
        fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            ps = [p for p in self.probes if p.probe == name]
            stats = np.concatenate([ps[0].calibration_stats, ps[0].holdout_stats])
            finite = stats[np.isfinite(stats)]
            ax.hist(finite, bins=min(40, max(10, len(finite) // 8)), color="#8aa8d8", edgecolor="white")
            for p in ps:
                ax.axvline(
                    p.threshold, color="#c0392b", lw=1.6, label=f"generation threshold ({p.target_rate:.0%})"
                )
            if ps[0].text_threshold is not None and math.isfinite(ps[0].text_threshold):
                ax.axvline(ps[0].text_threshold, color="#555", lw=1.2, ls="--", label="text-level threshold")
            ax.set_title(f"{name}: max smoothed score per benign generation", fontsize=10)
            ax.set_xlabel("score the monitor would have to exceed to interrupt")
            ax.set_ylabel("generations")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def prompt_text(example: Example, tokenizer: Any, chat: bool | None = None) -> str:
    """The text a model continues for ``example``: a chat row's turns up to its last user turn, rendered
    with the tokenizer's chat template and generation prompt (or the plain fallback ending in
    ``Assistant: ``); a text row's text."""
    if example.text is not None:
        if chat:
            return prompt_text(
                Example(id=example.id, label=example.label, messages=_user(example.text)), tokenizer, True
            )
        return example.text
    messages = list(example.messages or ())
    while messages and messages[-1].role != "user":
        messages.pop()
    if not messages:
        raise DatasetError(
            f"row {example.id!r}: has no user turn to answer, so there is nothing to generate from."
        )
    template = getattr(tokenizer, "chat_template", None)
    if template and chat is not False:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
    text, _ = render_plain(messages)
    return text + PLAIN_SEPARATOR + "Assistant: "


def _user(text: str) -> tuple:
    from probes.data.types import Message

    return (Message("user", text),)


def generation_statistic(smoothed: np.ndarray, patience: int) -> float:
    """The score a monitor must exceed to interrupt a generation whose generated tokens' smoothed scores
    are ``smoothed`` (1-D): their maximum, or with ``patience = k`` the maximum over runs of ``k``
    consecutive tokens of the run's minimum. NaN or inf -> +inf (the monitor fires on them)."""
    s = np.asarray(smoothed, dtype=np.float64)
    if s.size == 0:
        return -math.inf
    if not np.isfinite(s).all():
        return math.inf
    k = int(patience)
    if k <= 1:
        return float(s.max())
    if s.size < k:
        return -math.inf  # too short to ever fire
    windows = np.lib.stride_tricks.sliding_window_view(s, k)
    return float(windows.min(axis=1).max())


def calibrate_generation(
    bundle: ProbeBundle,
    model: nn.Module,
    tokenizer: Any,
    prompts: ContrastDataset | Sequence[Example],
    *,
    target_rates: Sequence[float] = (0.01,),
    n: int = 500,
    holdout: float = 0.5,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool | None = None,
    smoothing: str = "ema",
    alpha: float = 0.3,
    window: int = 8,
    patience: int = 1,
    check_fingerprint: bool = True,
    layers_attr: str | None = None,
    prompts_name: str | None = None,
    progress: bool = True,
) -> GenerationCalibration:
    """Sample ``n`` continuations of benign prompts with the monitor attached and set, per probe and target
    interrupt rate, a conformal generation-level threshold (see the module docstring).

    ``n`` larger than the number of prompts reuses prompts (each draw is a new sample; the held-out split
    is by prompt group, so held-out generations never share a prompt with calibration ones).
    """
    from probes.evaluation.metrics import clopper_pearson
    from probes.evaluation.thresholds import conformal_n_needed, conformal_threshold
    from probes.monitor.monitor import Monitor

    examples = list(prompts.examples if isinstance(prompts, ContrastDataset) else prompts)
    if not examples:
        raise DatasetError("calibrate_generation: the prompt set is empty.")
    if not 0.0 < float(holdout) < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}.")
    if int(n) < 2:
        raise ValueError(f"n must be >= 2 generations, got {n}.")
    for rate in target_rates:
        if not 0.0 < float(rate) < 1.0:
            raise ValueError(f"target rates must be in (0, 1), got {rate}.")
    texts = [prompt_text(ex, tokenizer, chat) for ex in examples]
    groups = [ex.group or ex.id for ex in examples]

    # Which prompt each of the n generations continues, and which groups are held out (seeded).
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    picks = [order[i % len(order)] for i in range(int(n))]
    unique_groups = sorted(set(groups))
    rng.shuffle(unique_groups)
    n_hold = min(len(unique_groups) - 1, max(1, round(float(holdout) * len(unique_groups))))
    if n_hold < 1:
        raise DatasetError(
            "calibrate_generation needs prompts from at least two groups (one to calibrate, one to hold out)."
        )
    held = set(unique_groups[:n_hold])
    is_holdout = np.array([groups[i] in held for i in picks])

    monitor = Monitor(
        bundle,
        action="flag",
        threshold=math.inf,
        smoothing=smoothing,  # type: ignore[arg-type]
        alpha=alpha,
        window=window,
        patience=patience,
        check_fingerprint=check_fingerprint,
    )
    names = monitor.probe_names
    stats = np.full((int(n), len(names)), np.nan)
    completions: list[str] = [""] * int(n)
    # Length-sorted batches: less padding; each batch has its own seed so a run is reproducible.
    by_length = sorted(range(int(n)), key=lambda i: len(texts[picks[i]]))
    batches = [by_length[i : i + int(batch_size)] for i in range(0, int(n), int(batch_size))]
    side = tokenizer.padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    bar = _progress(total=int(n), enabled=progress, desc="benign generations")
    try:
        for b, batch in enumerate(batches):
            batch_texts = [texts[picks[i]] for i in batch]
            chat_rendered = any(examples[picks[i]].text is None for i in batch) or bool(chat)
            enc = tokenizer(
                batch_texts, return_tensors="pt", padding=True, add_special_tokens=not chat_rendered
            ).to(device)
            torch.manual_seed(int(seed) * 100_003 + b)
            sampling = {"do_sample": do_sample, "max_new_tokens": int(max_new_tokens)}
            if do_sample:
                sampling.update(temperature=float(temperature), top_p=float(top_p))
            with torch.no_grad(), monitor.attach(model, tokenizer=tokenizer, layers_attr=layers_attr):
                out = model.generate(
                    **enc, **sampling, pad_token_id=tokenizer.pad_token_id, **monitor.generate_kwargs()
                )
            prompt_len = enc["input_ids"].shape[1]
            for row_i, i in enumerate(batch):
                row = monitor.trace.rows[row_i]
                gen = ~row.prompt & ~np.isnan(row.score).all(axis=1)
                for j in range(len(names)):
                    stats[i, j] = generation_statistic(row.smoothed[gen, j], patience)
                completions[i] = tokenizer.decode(out[row_i, prompt_len:], skip_special_tokens=True)
            bar.update(len(batch))
    finally:
        tokenizer.padding_side = side
        bar.close()

    calib, hold = ~is_holdout, is_holdout
    results: list[ProbeCalibration] = []
    for j, name in enumerate(names):
        entry = bundle[name]
        text = next((t for t in entry.thresholds if t.kind == "text"), None)
        for rate in target_rates:
            cal = stats[calib, j]
            if cal.size < conformal_n_needed(float(rate)):
                import warnings

                warnings.warn(
                    f"{cal.size} calibration generations are too few for a {rate:.2%} interrupt rate "
                    f"(need >= {conformal_n_needed(float(rate))}); the threshold is +inf (never interrupts). "
                    "Raise n.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            # +inf statistics (non-finite scores) always interrupt; the conformal rank handles them as
            # the largest values.
            cal_finite = np.where(np.isfinite(cal), cal, np.finfo(np.float64).max)
            thr = conformal_threshold(cal_finite, float(rate))
            ho = stats[hold, j]
            k = int((ho > thr).sum())
            results.append(
                ProbeCalibration(
                    probe=name,
                    target_rate=float(rate),
                    threshold=float(thr),
                    n_calibration=int(cal.size),
                    n_holdout=int(ho.size),
                    holdout_interrupted=k,
                    holdout_interval=clopper_pearson(k, int(ho.size)),
                    text_threshold=None if text is None else float(text.value),
                    text_holdout_interrupted=None if text is None else int((ho > text.value).sum()),
                    calibration_stats=cal,
                    holdout_stats=ho,
                )
            )
    source = prompts_name or (
        prompts.name if isinstance(prompts, ContrastDataset) and getattr(prompts, "name", None) else "prompts"
    )
    fingerprint = prompts.fingerprint() if isinstance(prompts, ContrastDataset) else None
    record = {
        "prompts": {
            "name": source,
            "fingerprint": fingerprint,
            "n_prompts": len(examples),
            "n_generations": int(n),
        },
        "sampling": {
            "do_sample": bool(do_sample),
            "temperature": float(temperature) if do_sample else None,
            "top_p": float(top_p) if do_sample else None,
            "max_new_tokens": int(max_new_tokens),
            "seed": int(seed),
            "batch_size": int(batch_size),
            "chat": chat,
        },
        "holdout_fraction": float(holdout),
        "statistic": "max over generated tokens of the smoothed score (min over `patience` consecutive tokens)",
        "monitor": {name: monitor.settings(bundle[name]) for name in names},
        "model": getattr(getattr(model, "config", None), "_name_or_path", None),
    }
    return GenerationCalibration(results, record, [texts[i] for i in picks], completions, is_holdout)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="gen", leave=False)


def _num(value: float) -> float | str | None:
    if value is None:
        return None
    v = float(value)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v
