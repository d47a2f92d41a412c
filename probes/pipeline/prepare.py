"""Everything a run needs before any probe is fitted: loading the dataset specs (``load_spec``), the grouped
seeded train/val/test split (``split_train``), reproducibility notes, loading the model and collecting
(cached) activations. ``_prepare`` does it all once and hands the stages a ``_Prepared`` bundle of datasets,
model and activations; the train/val/test activations are row subsets of one collection of the training set.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.config import DatasetSpec, RunConfig, resolve_model_path
from probes.errors import ConfigError, DatasetError
from probes.pipeline.results import Reporter, _timed

if TYPE_CHECKING:  # pragma: no cover
    from probes.collection import Activations
    from probes.data import ContrastDataset


# ----------------------------------------------------------------------------------------------------------
# Reproducibility


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def reproducibility_warnings(config: RunConfig) -> list[str]:
    """Reasons the run could not be reproduced from its config alone (empty when it can)."""
    out: list[str] = []
    name = config.model.name_or_path
    if not config.model.is_package and not Path(name).expanduser().exists() and config.model.revision is None:
        out.append(
            f"model {name!r} is a Hub id without a pinned revision: the weights behind it can change. Set "
            "model.revision to a commit hash (the run records the commit it loaded)."
        )
    if (
        not config.model.is_package
        and Path(name).expanduser().exists()
        and not _inside(Path(name), Path.cwd())
    ):
        out.append(f"model folder {name!r} lies outside the current directory: keep it with the config.")
    for key, spec in config.data.all_specs().items():
        for p in spec.paths:
            if p.startswith("hf:"):
                out.append(f"data.{key}: {p} is a Hub dataset read at its latest version; pin a local copy.")
            elif not _inside(Path(p), Path.cwd()):
                out.append(f"data.{key}: {p} lies outside the current directory: keep it with the config.")
    if config.model.device.startswith("cuda") and config.model.dtype in ("float16", "bfloat16"):
        out.append(
            "half precision on CUDA is not bit-for-bit deterministic; expect small metric differences."
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Datasets


def load_spec(
    spec: DatasetSpec, *, seed: int, target: str = "dataset", what: str = "dataset", control: bool = False
) -> ContrastDataset:
    """Load one dataset spec: every path (concatenated), optional whole-target override, optional limit.

    ``control=True`` accepts single-class (all benign) data whatever its card says.
    """
    from probes.data import ContrastDataset, load_dataset

    kwargs = spec.load_kwargs()
    if control:
        kwargs["kind"] = "control"
    parts = [load_dataset(p.removeprefix("hf:"), hf_split=spec.hf_split, **kwargs) for p in spec.paths]
    ds = parts[0]
    if len(parts) > 1:
        names = {tuple(d.label_names) for d in parts}
        if len(names) > 1:
            raise DatasetError(
                f"{what}: the files {spec.paths} have different label names {sorted(names)}; give label_names "
                "to make them agree."
            )
        examples = [ex for d in parts for ex in d]
        ds = ContrastDataset(examples, parts[0].card, source=" + ".join(d.source for d in parts))
    if spec.where:
        ds = _where(ds, spec.where, what)
    if target == "all":
        ds = ContrastDataset([dataclasses.replace(ex, target=None) for ex in ds], ds.card, source=ds.source)
    if spec.limit is not None and spec.limit < len(ds):
        frac = spec.limit / len(ds)
        ds = ds.split({"keep": frac, "rest": 1.0 - frac}, seed=seed, use_column=False)["keep"]
    return ds


def _where(ds: ContrastDataset, where: dict[str, list[str]], what: str) -> ContrastDataset:
    """Rows whose condition tag ``key`` is one of ``where[key]``, for every key (a config's ``where:``)."""
    for key, values in where.items():
        present = set(ds.conditions(key)) - {None}
        if not present:
            raise DatasetError(
                f"{what}: where: rows have no condition tag {key!r}; tags present: "
                f"{', '.join(ds.condition_keys) or 'none'}."
            )
        unknown = sorted(set(values) - present)
        if unknown:
            raise DatasetError(
                f"{what}: where.{key}: no row has {key}={unknown}; values present: {', '.join(sorted(present))}."
            )
        ds = ds.filter(lambda ex, key=key, keep=set(values): ex.conditions.get(key) in keep)
    return ds


#: Condition tag naming the control set of each row when ``data.control`` lists several.
CONTROL_SET = "control_set"


def _join_controls(controls: dict[str, ContrastDataset]) -> ContrastDataset:
    """One control dataset; with several sets, their rows tagged ``control_set=<name>`` (ids and groups
    prefixed with the name, so equal ids of two files stay distinct and groups never span two sets)."""
    from probes.data import ContrastDataset

    if len(controls) == 1:
        return next(iter(controls.values()))
    examples = [
        dataclasses.replace(
            ex,
            id=f"{name}/{ex.id}",
            group=None if ex.group is None else f"{name}/{ex.group}",
            conditions={**ex.conditions, CONTROL_SET: name},
        )
        for name, ds in controls.items()
        for ex in ds
    ]
    first = next(iter(controls.values()))
    card = first.card.model_copy(update={"name": " + ".join(controls)})
    return ContrastDataset(examples, card, source=" + ".join(ds.source for ds in controls.values()))


def control_for_evaluate(prep: _Prepared) -> Activations | dict[str, Activations] | None:
    """What ``evaluate(control=...)`` gets: the control activations, or ``{set name: activations}`` when
    ``data.control`` lists several sets (for the pooled threshold and the threshold-transfer matrix)."""
    import numpy as np

    acts = prep.acts.get("control")
    if acts is None or prep.control_ds is None or len(prep.config.data.control_specs) < 2:
        return acts
    tags = np.asarray(prep.control_ds.conditions(CONTROL_SET), dtype=object)
    return {name: acts.subset(np.flatnonzero(tags == name)) for name in prep.config.data.control_specs}


def split_train(ds: ContrastDataset, config: RunConfig) -> dict[str, ContrastDataset]:
    """Train/val/test of the training dataset: the rows' own split column, or grouped seeded fractions."""
    s = config.data.splits
    has_column = len(ds) > 0 and all(ex.split is not None for ex in ds)
    if s.use_column and has_column and not s.holdout:
        parts = ds.split(use_column=True)
        aliases = {"validation": "val", "dev": "val", "valid": "val"}
        parts = {aliases.get(k, k): v for k, v in parts.items()}
        missing = {"train", "val", "test"} - set(parts)
        if missing:
            raise DatasetError(
                f"{ds.source}: its 'split' column has {sorted(parts)} but a run needs train, val and test; "
                "set data.splits.use_column=false to split by fractions instead."
            )
    else:
        fractions = {"train": s.train, "val": s.val, "test": s.test}
        parts = ds.split(fractions, seed=config.seed, holdout=s.holdout or None, use_column=False)
    for name in ("train", "val", "test"):
        labels = set(parts[name].labels.tolist())
        if labels != {0, 1}:
            raise DatasetError(
                f"{ds.source}: the {name} split has {len(parts[name])} rows with labels {sorted(labels)}; each "
                "split needs both classes. Use more rows (data.train.limit), other fractions, or another holdout."
            )
    return {k: parts[k] for k in ("train", "val", "test")}


@dataclass
class _Prepared:
    """Datasets, model and activations shared by the stages."""

    config: RunConfig
    model: Any
    tokenizer: Any
    fingerprint: dict[str, Any]
    sites: list[str]
    train_ds: ContrastDataset
    splits: dict[str, ContrastDataset]
    control_ds: ContrastDataset | None
    eval_ds: dict[str, ContrastDataset]
    acts: dict[str, Activations]  # train/val/test/control/eval.<name>
    collected: list[dict[str, Any]]
    warnings: list[str]
    timings: dict[str, float]


def _load_all_datasets(
    config: RunConfig,
) -> tuple[ContrastDataset, ContrastDataset | None, dict[str, ContrastDataset]]:
    target = config.data.target
    train = load_spec(config.data.train, seed=config.seed, target=target, what="data.train")
    specs = config.data.control_specs
    controls = {
        name: load_spec(
            spec,
            seed=config.seed,
            target=target,
            what="data.control" if len(specs) == 1 else f"data.control.{name}",
            control=True,
        )
        for name, spec in specs.items()
    }
    control = _join_controls(controls) if controls else None
    evals = {
        name: load_spec(spec, seed=config.seed, target=target, what=f"data.eval.{name}")
        for name, spec in config.data.eval.items()
    }
    return train, control, evals


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - legacy global RNG used by some third-party code
    torch.manual_seed(seed)


def _load_model(config: RunConfig, device: str | None = None) -> tuple[Any, Any]:
    from probes.models import load_model

    m = config.model
    kwargs: dict[str, Any] = {"device_map": m.device_map} if m.device_map else {}
    return load_model(
        resolve_model_path(m.name_or_path),
        dtype=m.dtype,
        device=device or m.device,
        revision=m.revision,
        layers_attr=m.layers_attr,
        **kwargs,
    )


def _poolings(config: RunConfig) -> list[str]:
    return [config.pooling] if isinstance(config.pooling, str) else list(config.pooling)


def _engine(config: RunConfig) -> AbstractContextManager[Any]:
    """The Ray collector of ``config.engine`` (one session and actor pool for the run), or ``None`` (local)."""
    if config.engine.kind != "ray":
        return nullcontext(None)
    from probes.collection.ray_engine import ModelSource, RayEngine

    m = config.model
    source = ModelSource(
        resolve_model_path(m.name_or_path), m.dtype, m.device, m.revision, m.layers_attr, m.device_map
    )
    return RayEngine(source, config.engine)


def _collect(
    prep_model: Any,
    tokenizer: Any,
    ds: ContrastDataset,
    sites: list[str],
    config: RunConfig,
    engine: Any = None,
) -> Activations:
    """Collect ``ds`` (cached); with a Ray ``engine`` the workers fill the cache entry and this reads it."""
    from probes.collection import collect

    if engine is not None:
        engine.fill(
            prep_model,
            tokenizer,
            ds,
            sites,
            config.pooling,
            cache_dir=config.cache_dir,
            batch_size=config.batch_size,
            max_tokens=config.max_tokens,
            packing=config.packing,
            max_length=config.data.max_length,
            max_chars=config.data.max_chars,
            chat_template=config.data.chat_template,
            layers_attr=config.model.layers_attr,
        )
    return collect(
        prep_model,
        tokenizer,
        ds,
        sites,
        config.pooling,
        batch_size=config.batch_size,
        max_tokens=config.max_tokens,
        packing=config.packing,
        shard_rows=config.shard_rows,
        max_length=config.data.max_length,
        max_chars=config.data.max_chars,
        cache_dir=config.cache_dir,
        chat_template=config.data.chat_template,
        progress=True,
        layers_attr=config.model.layers_attr,
    )


def _prepare(config: RunConfig, reporter: Reporter) -> _Prepared:
    # The Ray session comes first: an unreachable cluster fails in seconds, before any data or model is read.
    with _engine(config) as engine:
        return _prepare_with(config, reporter, engine)


def _prepare_with(config: RunConfig, reporter: Reporter, engine: Any) -> _Prepared:
    from probes.models import model_fingerprint, num_layers

    timings: dict[str, float] = {}
    warns = reproducibility_warnings(config)
    for w in warns:
        reporter.warn(w)
    _seed_everything(config.seed)
    with _timed(timings, "load_data", reporter, "Loading datasets"):
        train_ds, control_ds, eval_ds = _load_all_datasets(config)
        splits = split_train(train_ds, config)
    reporter.info(
        f"train set {train_ds.name}: {len(train_ds)} rows → train {len(splits['train'])} / val "
        f"{len(splits['val'])} / test {len(splits['test'])}"
        + (
            f"; control {control_ds.name}: {len(control_ds)} rows"
            if control_ds is not None
            else "; no control set"
        )
    )
    with _timed(timings, "load_model", reporter, f"Loading model {config.model.name_or_path}"):
        model, tokenizer = _load_model(config)
        n_layers = num_layers(model, config.model.layers_attr)
        try:
            sites = config.layer_sites(n_layers)
        except ValueError as exc:  # SiteError: out-of-range layer for this model
            raise ConfigError(f"{config.source or 'config'}: layers: {exc}") from exc
        fingerprint = model_fingerprint(model, config.model.layers_attr)

    acts: dict[str, Activations] = {}
    collected: list[dict[str, Any]] = []
    to_collect: list[tuple[str, ContrastDataset]] = [("train", train_ds)]
    if control_ds is not None:
        to_collect.append(("control", control_ds))
    to_collect += [(f"eval.{k}", v) for k, v in eval_ds.items()]
    with _timed(
        timings,
        "collect",
        reporter,
        f"Collecting activations at {len(sites)} sites ({'+'.join(_poolings(config))} pooling)",
    ):
        for key, ds in to_collect:
            reporter.info(f"  {key}: {ds.name} ({len(ds)} rows)")
            a = _collect(model, tokenizer, ds, sites, config, engine)
            acts[key] = a
            first = a.features[sites[0]]
            collected.append(
                {
                    "dataset": key,
                    "rows": len(a),
                    "sites": len(sites),
                    "dim": int(first.dim if hasattr(first, "offsets") else first.shape[-1]),
                    "cache": a.spec.get("cache_key") if config.cache_dir else "off",
                }
            )
    # Splits are row subsets of the once-collected training set (the cache is shared by any split/seed).
    full = acts.pop("train")
    for name, part in splits.items():
        acts[name] = _rows_of(full, train_ds, part)
    return _Prepared(
        config=config,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        sites=sites,
        train_ds=train_ds,
        splits=splits,
        control_ds=control_ds,
        eval_ds=eval_ds,
        acts=acts,
        collected=collected,
        warnings=warns,
        timings=timings,
    )


def _rows_of(acts: Activations, ds: ContrastDataset, part: ContrastDataset) -> Activations:
    """The activations of ``part``'s rows, taken from ``acts`` collected for all of ``ds``."""
    position = {ex_id: i for i, ex_id in enumerate(ds.ids)}
    return acts.subset([position[i] for i in part.ids])


def _two_class(ds: ContrastDataset) -> bool:
    return len(set(ds.labels.tolist())) == 2


#: The typed hand-off of the first stage: datasets, splits, model, tokenizer, sites and activations.
Prepared = _Prepared


def prepare(config: RunConfig, reporter: Reporter | None = None) -> Prepared:
    """Stage 1 of every command: load and split the datasets, load the model, collect (cached) activations."""
    from probes.pipeline.results import LogReporter

    return _prepare(config, reporter or LogReporter())
