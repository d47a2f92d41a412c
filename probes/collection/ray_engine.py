"""Collection on a Ray cluster: the local engine on a pool of actors, writing the local cache's shards.

How a Ray collection runs
-------------------------
1. The driver plans the collection exactly as :func:`probes.collect` does (:func:`plan_collection`: encoding,
   row checks, spec and cache key), so a Ray run and a local run of the same config open the same cache
   entry, and a finished entry from either is a cache hit for the other.
2. Rows not yet in the entry are cut into the batches the local engine would run
   (:func:`~probes.collection.engine.plan_batches`: longest first, by ``batch_size`` or a token budget,
   packed where exact), and consecutive batches are grouped into *blocks* of about ``engine.block_tokens``
   tokens. Each block carries its batches and the worker runs exactly those, so every forward pass a worker
   runs is one the local engine runs: the activations are the same bit for bit.
3. ``engine.workers`` actors each load the model once with :func:`probes.load_model` (on their own device:
   Ray gives an actor with ``gpus_per_worker: 1`` its own GPU) and run
   :func:`~probes.collection.engine.run_rows`, the local engine, on one block at a time.
4. Each finished block becomes one shard of the cache entry (atomic rename), listed in the manifest by the
   driver. Where every worker sees the cache folder (one machine, or a shared mount: ``engine.shard_writer:
   auto`` checks with a probe file) the worker writes the shard itself and returns only its record; the
   driver checks the file's sha256 and rows (:meth:`ActivationCache.adopt_shard`) and lists it, so no
   feature passes through the driver. Otherwise the features travel back through Ray's object store and the
   driver writes the shard (:meth:`ActivationCache.write_shard`); workers then need no shared file system.
   At most two blocks per worker are in flight either way, so the driver's memory does not grow with the
   dataset.
5. Faults: Ray restarts a killed actor (``max_restarts``) and re-runs the blocks it held
   (``max_task_retries``); a block lands in the entry once, when the driver lists it (a shard a killed
   worker wrote but never reported is an orphan, deleted when the entry completes). An exception inside a
   worker is not retried: the run stops with the worker's error and the block's row ids. Either way, and on
   Ctrl-C, the entry keeps every block written so far and the next run computes only the rest.

Use :class:`RayEngine` as a context manager (one Ray session and one actor pool for several
collections); ``probes run``/``collect``/``train`` do this when the config says ``engine: {kind: ray}``.
The same pool runs ``probes generate`` (:meth:`RayEngine.generate_batches`): the local job's batches, each
with its own seed, so the replies are the ones a local run samples.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch

from probes.collection.cache import ShardBuffer, new_shard_name, write_shard_file
from probes.collection.collect import CollectionPlan, plan_collection
from probes.collection.engine import (
    attention_cost_per_key,
    choose_plan,
    encoded_lengths,
    plan_batches,
    resolve_padding_side,
    tokenizer_pad_id,
)
from probes.collection.pooling import (
    Pooling,
    storage_dtype,
)
from probes.config.engine import EngineConfig
from probes.data.types import Encoded
from probes.errors import EngineError
from probes.models.sites import block_list, parse_sites

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from probes.data.dataset import ContrastDataset

RAY_EXTRA = "pip install 'residual-probes[ray]'"
# Blocks in flight per worker: one running, one queued, so a worker never waits on the driver.
IN_FLIGHT = 2
T = TypeVar("T")
# Files whose code decides an activation: a worker whose copies differ would compute other numbers.
_ENGINE_FILES = ("engine.py", "pooling.py", "../models/sites.py")


def engine_code_hash() -> str:
    """Hash of the collection engine's source files, compared between the driver and every worker."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _ENGINE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model: the arguments of :func:`probes.load_model` (a config's ``model``)."""

    name_or_path: str
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    layers_attr: str | None = None
    device_map: str | None = None

    def load(self) -> tuple[Any, Any]:
        from probes.models import load_model

        kwargs: dict[str, Any] = {"device_map": self.device_map} if self.device_map else {}
        return load_model(
            self.name_or_path,
            dtype=self.dtype,  # type: ignore[arg-type]
            device=self.device,
            revision=self.revision,
            layers_attr=self.layers_attr,
            progress=False,
            **kwargs,
        )


@dataclass(frozen=True)
class Block:
    """One task: whole consecutive batches of the local engine's plan.

    ``rows`` are dataset positions in plan order; ``batches`` are those batches (sequences of rows), with
    positions into ``rows``, which the worker runs as they are.
    """

    index: int
    rows: np.ndarray
    tokens: int
    batches: list[list[list[int]]]


def _engine_plan(
    lengths: np.ndarray, rows: np.ndarray, batch_size: int, max_tokens: int | None, packed: bool
) -> list[list[list[int]]]:
    # How run_rows cuts ``rows``: longest first (stable), then the engine's own batch planner.
    order = np.asarray(rows)[np.argsort(-lengths[rows], kind="stable")]
    return plan_batches(order, lengths, batch_size, max_tokens, packed)


def plan_blocks(
    encoded: Sequence[Encoded],
    todo: np.ndarray,
    batch_size: int,
    block_tokens: int,
    *,
    max_tokens: int | None = None,
    packed: bool = False,
) -> list[Block]:
    """Cut the local engine's batches of ``todo`` into blocks of about ``block_tokens`` tokens (whole batches).

    The plan is the one :func:`~probes.collection.engine.run_rows` makes for ``todo`` in a local run; each
    block carries its batches, and the worker runs exactly those, so every forward pass of a Ray run is one
    that the local run does.
    """
    lengths = encoded_lengths(encoded)
    return cut_blocks(
        _engine_plan(lengths, np.asarray(todo), batch_size, max_tokens, packed), lengths, block_tokens
    )


def cut_blocks(batches: list[list[list[int]]], lengths: np.ndarray, block_tokens: int) -> list[Block]:
    """Cut a plan's batches (in order) into blocks of about ``block_tokens`` tokens of whole batches."""
    blocks: list[Block] = []
    i = 0
    while i < len(batches):
        j, tokens = i, 0
        while j < len(batches) and (j == i or tokens < block_tokens):
            tokens += int(sum(lengths[r] for seq in batches[j] for r in seq))
            j += 1
        rows = [r for batch in batches[i:j] for seq in batch for r in seq]
        where = {r: k for k, r in enumerate(rows)}
        local = [[[where[r] for r in seq] for seq in batch] for batch in batches[i:j]]
        blocks.append(Block(len(blocks), np.asarray(rows, dtype=np.int64), tokens, local))
        i = j
    return blocks


@dataclass(frozen=True)
class ShardTarget:
    """Where a worker writes its block's shard: the cache entry's folder, key and feature keys."""

    folder: str
    key: str
    keys: list[str]


def _block_shard(result: dict[str, Any], keys: list[str]) -> tuple[ShardBuffer, dict[str, int]]:
    """A finished block's rows and features as one shard's buffer, with the features' widths."""
    buffer = ShardBuffer.for_keys(keys)
    buffer.add(result["rows"], result["features"], result["counts"])
    return buffer, {k: int(v.shape[-1]) for k, v in result["features"].items()}


@dataclass
class RaySummary:
    """What one :meth:`RayEngine.fill` did."""

    cache_key: str
    folder: Path
    rows: int
    rows_computed: int
    blocks: int
    tokens: int
    seconds: float
    worker_pids: set[int] = field(default_factory=set)
    # Who wrote the shards: "workers" (straight into the cache folder) or "driver".
    shard_writer: str = ""


class _Worker:
    """A Ray actor: the model loaded once, the local engine run on one block per call."""

    def __init__(
        self, source: ModelSource, threads: int, fingerprint: dict[str, Any], code_hash: str
    ) -> None:
        from probes.models import model_fingerprint

        if code_hash != engine_code_hash():
            raise EngineError(
                "This worker's probes collection engine differs from the driver's; install the same probes "
                "version on every node of the cluster."
            )
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(max(1, threads))
        hf_logging.disable_progress_bar()  # one bar for the job: the driver's
        self.model, _ = source.load()
        self.layers_attr = source.layers_attr or getattr(self.model, "_probes_layers_attr", None)
        mine = model_fingerprint(self.model, self.layers_attr)
        if mine.get("weight_hash") != fingerprint.get("weight_hash"):
            raise EngineError(
                f"The worker on {socket.gethostname()} loaded {source.name_or_path!r} with weight hash "
                f"{mine.get('weight_hash')}, the driver's model has {fingerprint.get('weight_hash')}: every node "
                "must see the same checkpoint."
            )

    def pid(self) -> int:
        return os.getpid()

    def sees(self, path: str, token: str) -> bool:
        """Whether this worker reads ``token`` in the file at ``path`` (the driver's probe of a shared folder)."""
        try:
            return Path(path).read_text() == token
        except OSError:
            return False

    def packing_mode(self, sites: list[str], longest: int, packing: bool | str) -> str | None:
        """How the engine can pack rows on this worker's model and device (its one-off self-check), or None."""
        from probes.collection.engine import _Runner, input_device, packing_plan

        if packing is False:
            return None
        parsed = parse_sites(sites, len(block_list(self.model, self.layers_attr)))
        runner = _Runner.build(self.model, parsed, self.layers_attr)
        with torch.inference_mode():
            mode, reason = packing_plan(
                self.model, runner, self.layers_attr, input_device(self.model), longest
            )
        if mode is None and packing is True:
            raise ValueError(f"packing=True, but packing is not exact for this model: {reason}.")
        return mode

    def run(
        self,
        rows: np.ndarray,
        ids: list[str],
        encoded: Sequence[Encoded],
        batches: list[list[list[int]]],
        sites: list[str],
        poolings: list[str],
        packed: bool,
        pad_id: int,
        padding_side: str,
        out_dtype: str,
        shard_to: ShardTarget | None = None,
    ) -> dict[str, Any]:
        """Run the block; return its features, or with ``shard_to`` write them as a shard there and return
        the shard's record (then only a few hundred bytes travel back to the driver)."""
        from probes.collection.engine import eval_mode, input_device, run_rows

        parsed = parse_sites(sites, len(block_list(self.model, self.layers_attr)))
        parts: list[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]] = []
        with torch.inference_mode(), eval_mode(self.model):
            run_rows(
                self.model,
                encoded,
                np.arange(len(encoded)),
                parsed,
                poolings,
                batch_size=1,  # unused: the block's batches are given
                packing=packed,  # the driver's decision: every block is laid out as the whole plan is
                batches=batches,  # the driver's plan for this block, run as it is
                ids=ids,
                pad_id=pad_id,
                padding_side=padding_side,
                layers_attr=self.layers_attr,
                out_dtype=storage_dtype(out_dtype),
                device=input_device(self.model),
                on_batch=lambda r, f, c: parts.append((r, f, c)),
                progress_bar=_NoBar(),
            )
        local = torch.cat([p[0] for p in parts])
        keys = list(parts[0][1])
        result: dict[str, Any] = {
            "rows": torch.from_numpy(np.array(rows, dtype=np.int64))[local],
            "features": {k: torch.cat([p[1][k] for p in parts]) for k in keys},
            "counts": torch.cat([p[2] for p in parts]),
            "pid": os.getpid(),
        }
        if shard_to is None:
            return result
        buffer, dims = _block_shard(result, shard_to.keys)
        record = write_shard_file(shard_to.folder, buffer, key=shard_to.key, name=new_shard_name())
        return {"record": record, "dims": dims, "pid": os.getpid()}

    def generate(
        self, prompts: list[list[int]], b_index: int, sampling: Any, pad_id: int, eos_ids: list[int]
    ) -> list[tuple[list[int], str]]:
        from probes.generate.core import generate_batch

        return generate_batch(self.model, prompts, b_index, sampling, pad_id, eos_ids)


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EngineError(f"engine.kind=ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def _check_reachable(address: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds when nothing listens at ``host:port`` (Ray itself retries for long)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise EngineError(
            f"engine.address={address!r} is not 'local', 'auto', 'ray://host:port' or 'host:port'."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise EngineError(
            f"Cannot reach the Ray cluster at {address!r} ({exc}). Start one with `ray start --head` (then "
            "address: auto) or fix engine.address."
        ) from None


class RayEngine:
    """One Ray session and one actor pool for ``source``; :meth:`fill` runs collections through them,
    :meth:`generate_batches` generation.

    ``with RayEngine(source, engine) as rc: rc.fill(model, tokenizer, dataset, ...)``. ``model`` is the
    driver's copy, used only for the spec (fingerprint, layer count); the workers load their own. A Ray session
    the caller already started (``ray.init``) is used as it is and left running.
    """

    def __init__(self, source: ModelSource, engine: EngineConfig, *, max_restarts: int = 3) -> None:
        if engine.kind != "ray":
            raise ValueError(f"RayEngine needs engine.kind='ray', got {engine.kind!r}.")
        self.source = source
        self.engine = engine
        self.max_restarts = max_restarts
        self._ray: Any = None
        self._started = False
        self._workers: list[Any] = []
        self._fingerprint: dict[str, Any] | None = None

    # ------------------------------------------------------------------ session
    def __enter__(self) -> RayEngine:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Join or start the Ray session, and check it has the CPUs and GPUs the pool asks for."""
        ray = self._ray = _import_ray()
        engine = self.engine
        if not ray.is_initialized():
            address = engine.address
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
            need = engine.workers * engine.cpus_per_worker
            try:
                if address == "local":
                    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(np.ceil(need))), **kwargs)
                else:
                    if address != "auto":
                        _check_reachable(address, engine.connect_timeout_s)
                    ray.init(address=address, **kwargs)
            except EngineError:
                raise
            except Exception as exc:  # ConnectionError, RuntimeError, ...: Ray's own words, plus the fix
                raise EngineError(
                    f"Cannot connect to Ray at engine.address={address!r}: {exc}. For address: auto, start a "
                    "cluster first (`ray start --head`); address: local starts one for the run."
                ) from None
            self._started = True
        have = ray.cluster_resources()
        for name, per in (("CPU", engine.cpus_per_worker), ("GPU", engine.gpus_per_worker)):
            want = engine.workers * per
            if want > float(have.get(name, 0)) + 1e-9:
                self.close()
                raise EngineError(
                    f"engine asks for {engine.workers} workers x {per:g} {name}s = {want:g}, but the Ray cluster "
                    f"has {float(have.get(name, 0)):g}; lower engine.workers or {name.lower()}s_per_worker."
                )

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for worker in self._workers:
            with suppress(Exception):  # a dead actor needs no killing
                ray.kill(worker)
        self._workers = []
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
        self._ray = None

    def _pool(self, fingerprint: dict[str, Any]) -> list[Any]:
        if self._workers and fingerprint.get("weight_hash") == (self._fingerprint or {}).get("weight_hash"):
            return self._workers
        ray = self._ray
        engine = self.engine
        actor = ray.remote(
            num_cpus=engine.cpus_per_worker,
            num_gpus=engine.gpus_per_worker,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,
        )(_Worker)
        threads = max(1, int(engine.cpus_per_worker))
        code = engine_code_hash()
        self._workers = [actor.remote(self.source, threads, fingerprint, code) for _ in range(engine.workers)]
        self._fingerprint = fingerprint
        return self._workers

    def start(self, model: nn.Module, layers_attr: str | None = None) -> list[int]:
        """Start the pool for ``model`` now (else the first :meth:`fill` does); returns the workers' pids."""
        from probes.models import model_fingerprint

        if self._ray is None:
            raise EngineError("RayEngine is not connected: use it as a context manager.")
        self._pool(model_fingerprint(model, layers_attr or getattr(model, "_probes_layers_attr", None)))
        return self.worker_pids()

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's actors (waits for them to load the model)."""
        ray = self._ray
        return [int(p) for p in ray.get([w.pid.remote() for w in self._workers])]

    # ------------------------------------------------------------------ collecting
    def fill(
        self,
        model: nn.Module,
        tokenizer: Any,
        dataset: ContrastDataset,
        layers: Sequence[str | int] | str | int,
        pooling: Pooling | Sequence[Pooling] = "last",
        *,
        cache_dir: str | Path,
        batch_size: int = 16,
        max_tokens: int | None = None,
        packing: bool | Literal["auto"] = "auto",
        max_length: int = 512,
        max_chars: int | None = None,
        chat_template: str | None = None,
        layers_attr: str | None = None,
        dtype: str | torch.dtype | None = None,
        padding_side: Literal["left", "right"] | None = None,
        progress: bool = True,
    ) -> RaySummary:
        """Compute every row of ``dataset`` missing from its cache entry under ``cache_dir`` on the pool.

        Arguments as :func:`probes.collect`. Returns a :class:`RaySummary`; read the features with
        ``probes.collect(..., cache_dir=cache_dir)``, which finds the entry complete and runs no forward pass.
        """
        if self._ray is None:
            raise EngineError("RayEngine is not connected: use it as a context manager.")
        if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
            raise ValueError(f"batch_size and max_tokens must be >= 1, got {batch_size} and {max_tokens}.")
        start = time.perf_counter()
        plan = plan_collection(
            model,
            tokenizer,
            dataset,
            layers,
            pooling,
            max_length=max_length,
            max_chars=max_chars,
            chat_template=chat_template,
            layers_attr=layers_attr,
            dtype=dtype,
        )
        cache = plan.open_cache(cache_dir)
        done = cache.done_rows()
        todo = np.flatnonzero(~done)
        summary = RaySummary(plan.spec["cache_key"], cache.folder, len(plan.encoded), len(todo), 0, 0, 0.0)
        if len(todo):
            # One worker decides packing (its self-check runs on the workers' device), for every block.
            lengths = encoded_lengths(plan.encoded)
            longest = int(lengths[todo].max())
            worker = self._pool(plan.spec["model"])[0]
            mode = self._ray.get(worker.packing_mode.remote(plan.site_names, longest, packing))
            # The plan run_rows would make for these rows (its order and its packed-or-padded choice).
            order = todo[np.argsort(-lengths[todo], kind="stable")]
            batches, packed = choose_plan(
                order, lengths, batch_size, max_tokens, mode, packing, attention_cost_per_key(model)
            )
            blocks = cut_blocks(batches, lengths, self.engine.block_tokens)
            summary.blocks = len(blocks)
            target = self._shard_target(plan, cache)
            summary.shard_writer = "driver" if target is None else "workers"
            self._run_blocks(
                plan, blocks, cache, tokenizer, packed, padding_side, done, progress, summary, target
            )
        if not cache.complete:
            if not cache.done_rows().all():
                raise EngineError(
                    f"The Ray run left rows missing from {cache.folder}; run it again to resume."
                )
            cache.mark_complete()
        summary.seconds = time.perf_counter() - start
        return summary

    def _shard_target(self, plan: CollectionPlan, cache: Any) -> ShardTarget | None:
        """Where workers write shards (``engine.shard_writer``), or None when the driver writes them.

        ``auto`` writes a probe file with a random token into the cache folder and asks every worker to read
        it at the same path: only a folder every worker sees (one machine, or a shared mount) gets shards
        from the workers.
        """
        mode = self.engine.shard_writer
        if mode == "driver":
            return None
        token = uuid.uuid4().hex
        probe = Path(cache.folder) / f".probe-{token}"
        probe.write_text(token)
        try:
            workers = self._pool(plan.spec["model"])
            seen = self._ray.get([w.sees.remote(str(probe), token) for w in workers])
        finally:
            probe.unlink(missing_ok=True)
        if not all(seen):
            if mode == "workers":
                raise EngineError(
                    f"engine.shard_writer=workers, but {seen.count(False)} of {len(seen)} workers cannot see "
                    f"the cache folder {cache.folder}: put cache_dir on a file system every node mounts at "
                    "the same path, or set shard_writer: driver (or auto)."
                )
            return None
        return ShardTarget(str(cache.folder), str(cache.manifest["key"]), list(plan.keys))

    def _stream(
        self,
        fingerprint: dict[str, Any],
        tasks: list[T],
        submit: Callable[[Any, T], Any],
        what: Callable[[T], str],
    ) -> Iterator[tuple[T, Any]]:
        """Run ``tasks`` in order over the pool, at most :data:`IN_FLIGHT` per worker (one in the tail, where
        the next idle worker takes each remaining task); yield ``(task, result)`` as each finishes. A failed
        task raises :class:`EngineError` saying ``what(task)`` it was; on any exit before the end (an error,
        Ctrl-C in the consumer) the tasks still in flight are cancelled."""
        from ray.exceptions import RayActorError, RayTaskError

        ray = self._ray
        workers = self._pool(fingerprint)
        queue = list(reversed(tasks))
        in_flight: dict[Any, tuple[T, int]] = {}
        busy = [0] * len(workers)

        def top_up() -> None:
            # A second (queued) task per worker hides the round trip between two tasks; in the tail, with
            # no more tasks left than workers, a task waits here for the first worker to go idle instead,
            # so no worker ends with two blocks while another has none.
            while queue and min(busy) < IN_FLIGHT:
                w = int(np.argmin(busy))
                if busy[w] and len(queue) <= len(workers):
                    return
                task = queue.pop()
                in_flight[submit(workers[w], task)] = (task, w)
                busy[w] += 1

        try:
            top_up()
            while in_flight:
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                task, w = in_flight.pop(ref)
                busy[w] -= 1
                try:
                    result = ray.get(ref)
                except (RayTaskError, RayActorError) as exc:
                    raise EngineError(f"A Ray worker failed on {what(task)}: {_cause(exc)}") from None
                top_up()  # before the consumer writes this result: the worker starts its next task now
                yield task, result
        finally:
            for ref in in_flight:
                with suppress(Exception):
                    ray.cancel(ref, force=False)

    def generate_batches(
        self,
        model: nn.Module,
        batches: list[tuple[int, list[int]]],
        encoded: list[list[int]],
        sampling: Any,
        pad_id: int,
        eos_ids: list[int],
    ) -> Iterator[tuple[list[int], list[tuple[list[int], str]]]]:
        """``probes generate`` on the pool: yield ``(batch, replies)`` for each ``(batch index, rows)`` as it
        finishes (:func:`probes.generate.core.generate_batch` on a worker: same batch, same seed, same replies)."""
        from probes.models import model_fingerprint

        if self._ray is None:
            raise EngineError("RayEngine is not connected: use it as a context manager.")
        fingerprint = model_fingerprint(model, getattr(model, "_probes_layers_attr", None))

        def submit(worker: Any, job: tuple[int, list[int]]) -> Any:
            b_index, rows = job
            return worker.generate.remote([encoded[i] for i in rows], b_index, sampling, pad_id, eos_ids)

        def what(job: tuple[int, list[int]]) -> str:
            return f"generate batch {job[0]} (row positions {job[1][:8]}); finished batches are kept, rerun to resume"

        for (_, rows), replies in self._stream(fingerprint, batches, submit, what):
            yield rows, replies

    def _run_blocks(
        self,
        plan: CollectionPlan,
        blocks: list[Block],
        cache: Any,
        tokenizer: Any,
        packed: bool,
        padding_side: str | None,
        done: np.ndarray,
        progress: bool,
        summary: RaySummary,
        target: ShardTarget | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        static = (
            plan.site_names,
            plan.poolings,
            packed,
            tokenizer_pad_id(tokenizer),
            resolve_padding_side(padding_side, tokenizer),
            str(plan.out_dtype).removeprefix("torch."),
        )

        def submit(worker: Any, block: Block) -> Any:
            rows = block.rows
            return worker.run.remote(
                rows, [plan.ids[i] for i in rows], plan.encoded.take(rows), block.batches, *static, target
            )

        def what(block: Block) -> str:
            shown = [plan.ids[i] for i in block.rows[:8]]
            more = f" and {len(block.rows) - len(shown)} more" if len(block.rows) > len(shown) else ""
            return (
                f"block {block.index} ({len(block.rows)} rows: {shown}{more}); the cache entry {cache.folder} "
                "keeps every block written before it: fix the cause and run again to resume. The error was"
            )

        bar = tqdm(
            total=len(plan.encoded),
            initial=int(done.sum()),
            desc="collect (ray)",
            unit="row",
            disable=not progress,
        )
        started = time.perf_counter()
        try:
            # Longest rows first, as the local engine runs them.
            for block, result in self._stream(plan.spec["model"], blocks, submit, what):
                if "record" in result:  # the worker wrote the shard: check it, then list it
                    cache.adopt_shard(result["record"], result["dims"], block.rows)
                else:
                    buffer, dims = _block_shard(result, list(plan.keys))
                    cache.write_shard(buffer, dims)
                    del buffer
                summary.worker_pids.add(int(result["pid"]))
                del result
                summary.tokens += block.tokens
                bar.update(len(block.rows))
                bar.set_postfix_str(f"{summary.tokens / max(time.perf_counter() - started, 1e-9):,.0f} tok/s")
        finally:
            bar.close()


def _cause(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).strip().splitlines()[-1]
