"""Streaming monitors: score every token a model reads or writes, smooth per row, stop the rows that fire.

How it sits in a forward pass (``Monitor.attach`` registers, and always removes, three kinds of hooks):

1. a forward *pre*-hook on the model reads ``input_ids`` / ``attention_mask`` / the KV cache length, to
   know which positions are new in this call (all of them in the prefill, the newest one per decoding
   step) and which are left padding;
2. one hook per needed site (``residual_hook``) scores only those new positions: every linear probe of
   that site in one fused ``addmm`` (their ``linear_form()`` stacked into a ``(d, P)`` matrix), nonlinear
   probes with ``score_torch``; everything stays on the model's device;
3. a forward hook on the model updates the per-row smoothing state (EMA / rolling mean), the patience
   counters and the per-row ``fired`` flags, and appends the step to the trace - all with tensor ops, no
   host synchronisation.

A token's score exists once the model has *read* it, in the forward that computes the logits of the next
token. ``model.generate`` runs its stopping criteria only after sampling that next token, so a stopping
criterion alone (:meth:`Monitor.stopping_criteria`) leaves one extra, never-scored token after the token
that fired. :meth:`Monitor.logits_processor` removes that lag: it runs between that forward and the
sampling, and for every row the monitor has stopped it masks every logit but the end-of-sequence token's,
so the row ends exactly with the firing token followed by EOS (and padding), which ``generate`` treats as
a finished row. :meth:`Monitor.generate_kwargs` passes both; the hand-written loop :meth:`Monitor.stream`
ends exactly at the firing token too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from probes.errors import FingerprintMismatchError, MonitorError
from probes.models.sites import num_layers, parse_site, residual_hook
from probes.monitor.events import FireEvent, StepScores, StreamEvent
from probes.monitor.generation import _criterion_class, _pad_id, _processor_class, stream_tokens
from probes.monitor.positions import locate
from probes.monitor.trace import Trace, _Step
from probes.package.bundle import ProbeBundle
from probes.package.entry import BundleEntry

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LogitsProcessorList, StoppingCriteriaList

Smoothing = Literal["ema", "rolling", "none"]


@dataclass
class _Group:
    """The probes read at one site: linear ones fused into one ``(d, P)`` matmul."""

    site: str
    linear: list[int]
    nonlinear: list[int]
    weight: torch.Tensor | None = None  # (d, P_linear)
    bias: torch.Tensor | None = None  # (P_linear,)


@dataclass
class _Context:
    """What the pre-hook learned about the current forward call."""

    start: int  # column index of the first new position
    n_new: int
    ids: torch.Tensor | None  # (B, n_new)
    valid: torch.Tensor | None  # (B, n_new) bool, False on left padding; None: every position is real
    is_prompt: bool
    score: bool
    parts: list[torch.Tensor | None]


class Monitor:
    """Run the probes of a :class:`~probes.package.ProbeBundle` on every token while a model generates.

    With ``model.generate`` (greedy or sampling, batches with left padding, streamers)::

        monitor = Monitor(ProbeBundle.load("bundles/sad"), smoothing="ema", alpha=0.3, patience=2)
        with monitor.attach(model, tokenizer=tok):
            out = model.generate(**enc, max_new_tokens=64, **monitor.generate_kwargs())
        monitor.trace.to_dataframe(); monitor.trace.to_html("trace.html")

    A stopped row of ``out`` ends with the token that fired, then the end-of-sequence token, then padding.

    In a hand-written decoding loop (KV cache on), read :meth:`latest` after each forward pass, or let
    :meth:`stream` run the loop and yield ``StreamEvent(token_id, text, score, smoothed, fired)``::

        with monitor.attach(model):
            out = model(input_ids=ids, use_cache=True)
            for _ in range(64):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                if monitor.latest().fired.any():  # scores of `token`, read on the host here
                    break

    A new sequence starts (state and trace reset) at every forward pass with an empty KV cache. Beam
    search is not supported (beams reorder rows; per-row state would not follow them).

    Parameters
    ----------
    smoothing, alpha, window:
        ``"ema"`` (``s_t = alpha * x_t + (1 - alpha) * s_{t-1}``, ``s_0 = x_0``), ``"rolling"`` (mean of
        the last ``window`` scores) or ``"none"``, per row and probe - the same maths as
        :mod:`probes.train.aggregate`.
    patience:
        consecutive tokens whose smoothed score must exceed the threshold before the row fires.
    threshold, target_fpr:
        a float (every probe) or ``{probe: float}``; or pick the bundle's threshold calibrated for
        ``target_fpr``; by default each probe's first stored threshold.
    action:
        ``"stop"`` (rows that fire end via :meth:`generate_kwargs`), ``"flag"`` (trace only) or a
        callable ``f(FireEvent) -> bool | None`` called when a row fires - return True to stop the row.
        A callable costs one host sync per step (it must know on the host that a row fired).
    on_error:
        ``"stop"``: an error inside the monitor propagates and aborts generation (fail closed);
        ``"continue"``: it is warned about, recorded in ``monitor.errors`` and the monitor stops scoring
        until the next generation (fail open).
    score_prompt:
        also score (and possibly fire on) the prompt tokens, so the monitor screens inputs too; left
        padding is never scored.
    check_fingerprint:
        refuse to attach to a model whose fingerprint differs from the bundle's.
    """

    def __init__(
        self,
        bundle: ProbeBundle,
        *,
        smoothing: Smoothing = "ema",
        alpha: float = 0.3,
        window: int = 8,
        patience: int = 1,
        threshold: float | Mapping[str, float] | None = None,
        target_fpr: float | None = None,
        action: Literal["stop", "flag"] | Callable[[FireEvent], bool | None] = "stop",
        on_error: Literal["stop", "continue"] = "stop",
        score_prompt: bool = False,
        check_fingerprint: bool = True,
        probes: list[str] | None = None,
    ) -> None:
        if not isinstance(bundle, ProbeBundle):
            raise TypeError(
                f"Monitor needs a ProbeBundle, got {type(bundle).__name__}; see ProbeBundle.from_probe."
            )
        if smoothing not in ("ema", "rolling", "none"):
            raise ValueError(f"smoothing must be 'ema', 'rolling' or 'none', got {smoothing!r}.")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}.")
        if int(window) < 1 or int(patience) < 1:
            raise ValueError("window and patience must be >= 1.")
        if not (action in ("stop", "flag") or callable(action)):
            raise ValueError(f"action must be 'stop', 'flag' or a callable, got {action!r}.")
        if on_error not in ("stop", "continue"):
            raise ValueError(f"on_error must be 'stop' or 'continue', got {on_error!r}.")
        if threshold is not None and target_fpr is not None:
            raise ValueError("Pass threshold= or target_fpr=, not both.")
        self.bundle = bundle
        self.smoothing = smoothing
        self.alpha = float(alpha)
        self.window = int(window)
        self.patience = int(patience)
        self.action = action
        self.on_error = on_error
        self.score_prompt = bool(score_prompt)
        self.check_fingerprint = bool(check_fingerprint)
        self.errors: list[BaseException] = []

        selected = list(bundle) if probes is None else [bundle[name] for name in probes]
        if not selected:
            raise ValueError("The bundle has no probes to monitor.")
        # Probes grouped by site; a probe's index is its column in every (batch, probes) tensor.
        by_site: dict[str, list[BundleEntry]] = {}
        for entry in selected:
            by_site.setdefault(entry.site, []).append(entry)
        self._entries: list[BundleEntry] = []
        self._groups: list[_Group] = []
        for site, entries in by_site.items():
            linear = [e for e in entries if e.score_form() is not None]
            nonlinear = [e for e in entries if e.score_form() is None]
            for e in nonlinear:
                if getattr(e.probe, "token_level", False):
                    raise ValueError(
                        f"Probe {e.name!r} ({e.probe.kind}) reads whole sequences and has no per-token "
                        "linear form, so it cannot be streamed; monitor a linear or per-position probe."
                    )
            first = len(self._entries)
            self._entries.extend(linear + nonlinear)
            self._groups.append(
                _Group(
                    site,
                    list(range(first, first + len(linear))),
                    list(range(first + len(linear), first + len(linear) + len(nonlinear))),
                )
            )
        self.probe_names: list[str] = [e.name for e in self._entries]
        self.thresholds: list[float] = [
            self._resolve_threshold(e, threshold, target_fpr) for e in self._entries
        ]

        self._attached: nn.Module | None = None
        self._tokenizer: Any = None
        self._device: torch.device | None = None
        self._ctx: _Context | None = None
        self._trace: Trace | None = None
        self._last_input_ids: torch.Tensor | None = None
        self._eos: list[int] = []
        self._end_id: int | None = None  # the token a stopped row is forced to end with
        self._disabled = False
        self._fresh = True
        self._batch = 0
        self._total = 0

    # --- configuration ---------------------------------------------------------------------------
    def _resolve_threshold(
        self, entry: BundleEntry, threshold: float | Mapping[str, float] | None, target_fpr: float | None
    ) -> float:
        if isinstance(threshold, Mapping):
            unknown = set(threshold) - {e.name for e in self.bundle}
            if unknown:
                raise ValueError(
                    f"threshold names unknown probes {sorted(unknown)}; bundle has {self.bundle.names}."
                )
            if entry.name in threshold:
                return float(threshold[entry.name])
        elif threshold is not None:
            return float(threshold)
        found = entry.threshold_for(target_fpr)
        if found is not None:
            return float(found.value)
        if self.action == "flag":
            return math.inf  # score and trace only; nothing can fire
        raise ValueError(
            f"Probe {entry.name!r} has no threshold in the bundle: pass threshold= (a float or "
            "{probe: float}) or target_fpr= for a calibrated one, or use action='flag' to only score."
        )

    # --- attaching -------------------------------------------------------------------------------
    @contextmanager
    def attach(
        self, model: nn.Module, *, tokenizer: Any = None, layers_attr: str | None = None
    ) -> Iterator[Monitor]:
        """Hook ``model`` for the duration of the ``with`` block; the hooks are removed whatever happens."""
        if self._attached is not None:
            raise RuntimeError(
                "This Monitor is already attached to a model; detach it (leave the with block) first."
            )
        if self.check_fingerprint:
            self.bundle.check_model(model, layers_attr)
        n_layers = num_layers(model, layers_attr)
        self._check_dims(model)
        param = next(model.parameters(), None)
        self._device = param.device if param is not None else torch.device("cpu")
        self._prepare_weights(self._device)
        self._tokenizer = tokenizer
        gen_config = getattr(model, "generation_config", None)
        eos = getattr(gen_config, "eos_token_id", None)
        if eos is None:
            eos = getattr(getattr(model, "config", None), "eos_token_id", None)
        self._eos = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
        self._end_id = self._eos[0] if self._eos else _pad_id(model, tokenizer)
        self._ctx, self._trace, self._last_input_ids, self._disabled = None, None, None, False
        self.errors = []
        self._attached = model
        try:
            with ExitStack() as stack:
                pre = model.register_forward_pre_hook(self._on_forward_start, with_kwargs=True)
                stack.callback(pre.remove)
                for gi, group in enumerate(self._groups):
                    site = parse_site(group.site, n_layers)
                    stack.enter_context(
                        residual_hook(model, site, self._site_hook(gi), layers_attr=layers_attr)
                    )
                post = model.register_forward_hook(self._on_forward_end)
                stack.callback(post.remove)
                yield self
        finally:
            self._attached = None
            self._ctx = None

    def _check_dims(self, model: nn.Module) -> None:
        # Even with check_fingerprint=False a probe of the wrong width can never work: say so up front
        # instead of failing inside the first forward pass.
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is None:
            return
        for entry in self._entries:
            width = getattr(entry.probe, "n_features_in_", None)
            if width is not None and int(width) != int(hidden):
                raise FingerprintMismatchError(
                    f"Probe {entry.name!r} reads {int(width)}-dim activations but {type(model).__name__} has "
                    f"hidden size {int(hidden)}: the bundle was made for another model. Load that model."
                )

    def _prepare_weights(self, device: torch.device) -> None:
        for group in self._groups:
            if group.linear:
                forms = [self._entries[i].score_form() for i in group.linear]
                group.weight = torch.stack([w for w, _ in forms], dim=1).to(device)  # type: ignore[misc]
                group.bias = torch.stack([b for _, b in forms]).to(device)  # type: ignore[misc]
            for i in group.nonlinear:
                _move_probe(self._entries[i], device)
        self._threshold_t = torch.tensor(self.thresholds, dtype=torch.float32, device=device)

    # --- hooks (the hot path: tensor ops only, no host sync) ---------------------------------------
    def _on_forward_start(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else (embeds.shape[:2] if embeds is not None else None)
        if shape is None:
            self._ctx = None
            return
        batch, seq = int(shape[0]), int(shape[1])
        try:
            past = self._past_positions(kwargs, batch, seq)
        except MonitorError as exc:
            self._ctx = None
            self._fail(exc)
            return
        new_sequence = past == 0
        if new_sequence:
            self._reset(batch)
        n_new = seq - past if seq > past else seq
        mask = kwargs.get("attention_mask")
        # Only a prompt carries padding; a decoding step's new token is always real (generate extends the
        # mask with ones), which lets the per-token update skip every masking op.
        valid = mask[:, -n_new:].bool() if new_sequence and mask is not None and mask.ndim == 2 else None
        self._ctx = _Context(
            start=self._total if not new_sequence else 0,
            n_new=n_new,
            ids=ids[:, -n_new:] if ids is not None else None,
            valid=valid,
            is_prompt=new_sequence,
            score=(self.score_prompt or not new_sequence) and not self._disabled,
            parts=[None] * len(self._groups),
        )
        self._total = past + n_new

    def _past_positions(self, kwargs: dict, batch: int, seq: int) -> int:
        """Positions before this call's new ones; :class:`MonitorError` when they cannot be known.

        What the arguments say (:func:`~probes.monitor.positions.locate`) is checked against the monitor's
        own count: a cache holding positions the monitor never saw, or rows that changed in number, mean
        the trace would no longer line up with the text, so the monitor refuses instead of guessing.
        """
        found = locate(kwargs, seq)
        past = found.past
        if past == 0 and found.evidence is None and self._trace is not None and self._batch == batch:
            if kwargs.get("use_cache") is False and 0 < self._total < seq:
                # generate(use_cache=False) re-feeds the whole sequence: only the tail is new.
                return self._total
            if seq == 1 and self._total > 0 and not self._fresh:
                raise MonitorError(
                    "A one-token forward arrived with no KV cache the monitor can read, right after a "
                    f"sequence of {self._total} positions: it cannot tell a decoding step (whose cache it "
                    "cannot see) from a new one-token prompt. Pass the cache as cache= / past_key_values=, "
                    "or call monitor.reset() before starting a new sequence."
                )
        if past > 0 and (self._trace is None or past != self._total or batch != self._batch):
            seen = "nothing" if self._trace is None else f"{self._total} positions of {self._batch} rows"
            raise MonitorError(
                f"Positions do not add up: {found.evidence}= holds {past} positions of {batch} rows, but the "
                f"monitor has seen {seen}. The cache was filled without the monitor (attach it before the "
                "prompt runs), or the decoding method reorders or rewinds rows (beam search, assisted "
                "decoding), which a per-row monitor cannot follow."
            )
        self._fresh = False
        return past

    def reset(self) -> None:
        """Declare that the next forward starts a new sequence (only needed for one-token prompts sent
        without a KV cache; every other new sequence is recognised by its empty cache)."""
        self._fresh = True

    def _site_hook(self, gi: int) -> Callable[[torch.Tensor], None]:
        group = self._groups[gi]

        def hook(hidden: torch.Tensor) -> None:
            ctx = self._ctx
            if ctx is None or not ctx.score:
                return
            try:
                h = hidden[:, -ctx.n_new :].reshape(-1, hidden.shape[-1]).float()
                cols = []
                if group.weight is not None:
                    cols.append(torch.addmm(group.bias, h, group.weight))
                for i in group.nonlinear:
                    cols.append(self._entries[i].score(h).float().reshape(-1, 1))
                out = cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
                ctx.parts[gi] = out.reshape(hidden.shape[0], ctx.n_new, -1)
            except Exception as exc:  # noqa: BLE001 - routed by on_error
                self._fail(exc)

        return hook

    def _on_forward_end(self, _module: nn.Module, _args: tuple, _output: Any) -> None:
        ctx = self._ctx
        self._ctx = None
        if ctx is None or self._trace is None:
            return
        try:
            if ctx.score and any(p is None for p in ctx.parts):
                missing = [g.site for g, p in zip(self._groups, ctx.parts, strict=True) if p is None]
                raise MonitorError(
                    f"Site(s) {', '.join(missing)} produced no activations in this forward pass, so "
                    f"{'these probes' if len(missing) > 1 else 'its probes'} could not score the new tokens "
                    "(the block list was replaced, or the forward stopped early). Refusing to go on unscored."
                )
            if not ctx.score:
                self._trace._append(_Step(ctx.start, ctx.ids, ctx.valid, None, None, None, ctx.is_prompt))
                return
            raw = ctx.parts[0] if len(ctx.parts) == 1 else torch.cat(ctx.parts, dim=-1)  # type: ignore[arg-type]
            if ctx.n_new == 1:  # a decoding step: the hot path
                s, f = self._update(raw[:, 0], None if ctx.valid is None else ctx.valid[:, 0], ctx.start)
                sm, fi = s[:, None], f[:, None]
            else:  # a prompt (or a chunk): one update per position, in order
                steps = [
                    self._update(raw[:, t], None if ctx.valid is None else ctx.valid[:, t], ctx.start + t)
                    for t in range(ctx.n_new)
                ]
                sm, fi = torch.stack([a for a, _ in steps], 1), torch.stack([b for _, b in steps], 1)
            self._trace._append(_Step(ctx.start, ctx.ids, ctx.valid, raw, sm, fi, ctx.is_prompt))
            if self._eos_t is not None and ctx.ids is not None and not ctx.is_prompt:
                self._done = self._done | torch.isin(ctx.ids[:, -1:], self._eos_t)
            if callable(self.action):
                self._dispatch_callbacks(fi, ctx.start)
        except Exception as exc:  # noqa: BLE001 - routed by on_error
            self._fail(exc)

    def _reset(self, batch: int) -> None:
        dev, p = self._device, len(self._entries)
        self._batch, self._total = batch, 0
        self._disabled = False
        self._last_input_ids = None  # a previous generate's final ids must not leak into this trace
        self._smoothed = torch.zeros(batch, p, device=dev)
        self._seen = torch.zeros(batch, 1, dtype=torch.bool, device=dev)
        self._all_seen = False  # host-side: once every row has a smoothed value the EMA needs no mask
        self._count = torch.zeros(batch, 1, device=dev)
        self._buffer = torch.zeros(batch, p, self.window, device=dev) if self.smoothing == "rolling" else None
        self._run = torch.zeros(batch, p, dtype=torch.long, device=dev)
        self._fired = torch.zeros(batch, dtype=torch.bool, device=dev)
        self._stop = torch.zeros(batch, dtype=torch.bool, device=dev)
        self._callback_seen = torch.zeros(batch, dtype=torch.bool, device=dev)
        # Rows that have read their end-of-sequence token: generate feeds them padding from then on, which
        # must never make them fire (nor call a callable action) after the text they actually wrote.
        self._done = torch.zeros(batch, 1, dtype=torch.bool, device=dev)
        self._eos_t = torch.tensor(self._eos, dtype=torch.long, device=dev) if self._eos else None
        self._latest: StepScores | None = None
        self._trace = Trace(
            probe_names=list(self.probe_names),
            thresholds=list(self.thresholds),
            batch=batch,
            tokenizer=self._tokenizer,
            eos_ids=list(self._eos),
            stop_rows=self.action == "stop",
            end_id=self._end_id,
        )

    def _update(
        self, x: torch.Tensor, valid: torch.Tensor | None, position: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every row's state by one position; rows where ``valid`` is False are left untouched.

        ``valid=None`` (every decoding step) means all rows are real tokens: no masking ops at all, which
        keeps a step at a handful of tiny kernels.
        """
        v = None if valid is None else valid[:, None]
        if self.smoothing == "ema":
            # Same arithmetic as probes.train.aggregate.ema_step, so batch and stream agree bit for bit.
            ema = self.alpha * x + (1.0 - self.alpha) * self._smoothed
            new = ema if self._all_seen else torch.where(self._seen, ema, x)
        elif self.smoothing == "rolling":
            assert self._buffer is not None
            shifted = torch.cat([self._buffer[..., 1:], x[..., None]], dim=-1)
            self._buffer = shifted if v is None else torch.where(v[..., None], shifted, self._buffer)
            self._count = self._count + (1.0 if v is None else v)
            new = self._buffer.sum(-1) / self._count.clamp(max=self.window)
        else:
            new = x
        if v is None:
            self._smoothed = new
            self._all_seen = True
        else:
            self._smoothed = torch.where(v, new, self._smoothed)
            self._seen = self._seen | v
        above = self._smoothed > self._threshold_t
        if self.patience == 1:
            firing = above if v is None else above & v
        else:
            run = (self._run + 1) * above  # consecutive tokens above the threshold
            self._run = run if v is None else torch.where(v, run, self._run)
            firing = self._run >= self.patience if v is None else (self._run >= self.patience) & v
        firing = firing & ~self._done
        self._fired = self._fired | firing.any(dim=1)
        if self.action == "stop":
            self._stop = self._fired
        self._latest = StepScores(x, self._smoothed, firing, self._fired, position)
        return self._smoothed, firing

    def _dispatch_callbacks(self, firing: torch.Tensor, start: int) -> None:
        newly = self._fired & ~self._callback_seen
        if not bool(newly.any()):  # the one host sync a callable action costs
            return
        self._callback_seen = self._callback_seen | newly
        assert callable(self.action)
        for row in newly.nonzero().flatten().tolist():
            t = int(firing[row].any(dim=-1).long().argmax())  # first position of this step that fired
            probe = int(firing[row, t].long().argmax())
            event = FireEvent(
                row=row,
                position=start + t,
                probe=self.probe_names[probe],
                smoothed=float(self._trace._steps[-1].smoothed[row, t, probe]),  # type: ignore[index,union-attr]
                threshold=self.thresholds[probe],
            )
            if self.action(event):
                self._stop = self._stop.clone()
                self._stop[row] = True
                if self._trace is not None:
                    self._trace._stopped_rows.add(row)

    def _fail(self, exc: BaseException) -> None:
        if self.on_error == "stop":
            raise exc
        self.errors.append(exc)
        self._disabled = True
        if self._ctx is not None:
            self._ctx.score = False
        warnings.warn(
            f"Monitor error ({type(exc).__name__}: {exc}); on_error='continue' so generation goes on "
            "unmonitored until the next prompt. Use on_error='stop' to fail closed.",
            RuntimeWarning,
            stacklevel=2,
        )

    # --- reading ---------------------------------------------------------------------------------
    @property
    def trace(self) -> Trace:
        """The trace of the most recent generation (built from device tensors only when read)."""
        if self._trace is None:
            raise RuntimeError("Nothing traced yet: run the model with the monitor attached first.")
        if self._last_input_ids is not None and self._last_input_ids.shape[0] == self._trace.batch:
            self._trace._sequences = self._last_input_ids
        return self._trace

    def latest(self) -> StepScores | None:
        """Scores of the newest scored position (for hand-written decoding loops), or None."""
        return getattr(self, "_latest", None) if self._trace is not None else None

    @property
    def fired(self) -> torch.Tensor:
        """``(batch,)`` bool: which rows have fired in the current generation."""
        if self._trace is None:
            raise RuntimeError("Nothing scored yet.")
        return self._fired

    def stopping_criteria(self) -> StoppingCriteriaList:
        """Criteria for ``model.generate(stopping_criteria=...)``: True for the rows to stop, one per row.

        Alone they stop a row one token late: the token sampled in the step where the firing token was
        scored still lands (unscored). Use :meth:`generate_kwargs` for an exact stop.
        """
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([_criterion_class()(self)])

    def logits_processor(self) -> LogitsProcessorList:
        """A processor for ``model.generate(logits_processor=...)`` that ends stopped rows exactly.

        In the forward that scores a row's firing token it forces that row's next token to the model's
        end-of-sequence token (``generation_config.eos_token_id``, the first if several; else the pad
        token) by setting every other logit to -inf; the rows still running are left untouched. Tensor ops
        only, no host sync. It uses the ids of the model the monitor is attached to, not an
        ``eos_token_id=`` passed to ``generate`` itself.
        """
        from transformers import LogitsProcessorList

        if self._attached is not None:
            self._require_end_id()
        return LogitsProcessorList([_processor_class()(self)])

    def generate_kwargs(self) -> dict[str, Any]:
        """``model.generate(**enc, **monitor.generate_kwargs())``: the stopping criteria and the logits
        processor together, so a stopped row ends with the firing token followed by EOS."""
        return {"stopping_criteria": self.stopping_criteria(), "logits_processor": self.logits_processor()}

    def _require_end_id(self) -> int:
        if self._end_id is None:
            raise ValueError(
                "The model has no end-of-sequence or pad token id, so the monitor cannot end a stopped row: "
                "set model.generation_config.eos_token_id (or pad_token_id) before attaching, or pass "
                "only stopping_criteria=monitor.stopping_criteria() (stops one token late)."
            )
        return self._end_id

    # --- hand-written decoding loop --------------------------------------------------------------
    def stream(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Iterator[StreamEvent]:
        """Generate one sequence token by token with a KV cache, yielding each token with its scores.

        The stream ends at the end-of-sequence token, after ``max_new_tokens``, or - with
        ``action="stop"`` - right after the token that fired (that token is yielded with ``fired=True``).
        Attaches the monitor to ``model`` for the duration unless it is already attached to it. When
        ``score_prompt=True`` and the prompt itself fires, nothing is generated (``monitor.fired``).
        """
        return stream_tokens(
            self,
            model,
            tokenizer,
            prompt,
            input_ids=input_ids,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
        )


def _move_probe(entry: BundleEntry, device: torch.device) -> None:
    # Nonlinear probes keep torch modules or tensors as attributes; move whatever has a .to().
    probe = entry.probe
    to = getattr(probe, "to", None)
    if callable(to):
        to(device)
