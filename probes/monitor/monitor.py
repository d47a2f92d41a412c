"""Streaming monitors: score every token a model reads or writes, per row, stop the rows that fire.

How it sits in a forward pass (``Monitor.attach`` registers, and always removes, three kinds of hooks):

1. a forward *pre*-hook on the model works out which positions are new in this call - all of them in the
   prefill, the newest one per decoding step - from the KV cache it is given (under ``cache=`` or
   ``past_key_values=``), the attention mask and its own count, and refuses (:class:`MonitorError`) when
   they do not add up (:mod:`probes.monitor.positions`);
2. one hook per needed site (``residual_hook``) maps only those new positions to per-token columns: every
   linear map of every probe of that site in one fused ``addmm`` (a linear probe has one column, an
   attention-pooled probe two: value and attention logit), nonlinear probes with their ``score``;
3. a forward hook on the model advances each probe's running score (:class:`~probes.train.aggregate.
   StreamingAggregator`: the probe's own aggregation for token-level probes, the monitor's smoothing for
   probes trained on pooled vectors), the patience counters and the per-row ``fired`` flags, and appends
   the step to the trace - all with tensor ops on the model's device, no host synchronisation.

A token's score exists once the model has *read* it, in the forward that computes the logits of the next
token. ``model.generate`` runs its stopping criteria only after sampling that next token, so a stopping
criterion alone (:meth:`Monitor.stopping_criteria`) leaves one extra, never-scored token after the token
that fired. :meth:`Monitor.logits_processor` removes that lag: it runs between that forward and the
sampling, and for every row the monitor has stopped it masks every logit but the end-of-sequence token's,
so the row ends exactly with the firing token followed by EOS (and padding), which ``generate`` treats as
a finished row. :meth:`Monitor.generate_kwargs` passes both; the hand-written loop :meth:`Monitor.stream`
ends exactly at the firing token too.

Failing closed: a forward whose new positions cannot be known, a site that produced no activations, or a
decoding method that reorders rows (beam search, assisted decoding; refused when ``generate`` is called)
raises :class:`~probes.errors.MonitorError` (``on_error="stop"``, the default). A NaN or infinite score
counts as firing - the row is stopped - and the monitor reports it when the generation ends.
"""

from __future__ import annotations

import copy
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
from probes.monitor.generation import criterion_class, pad_id, processor_class, stream_tokens
from probes.monitor.positions import locate
from probes.monitor.trace import Trace, _Step
from probes.package.bundle import ProbeBundle
from probes.package.entry import BundleEntry, Threshold
from probes.train.aggregate import SMOOTHINGS, StreamingAggregator

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LogitsProcessorList, StoppingCriteriaList

Smoothing = Literal["ema", "rolling", "none"]

#: Decoding methods whose rows stay in place from step to step, so per-row state follows them.
_SUPPORTED_MODES = ("greedy_search", "sample", "dola_generation")


@dataclass
class _Site:
    """The columns computed at one site: linear maps fused into one ``(d, C)`` matmul, then nonlinear probes."""

    site: str
    weight: torch.Tensor | None  # (d, C_linear)
    bias: torch.Tensor | None  # (C_linear,)
    nonlinear: list[int]  # entry indices scored with entry.score(h), one column each


@dataclass
class _Group:
    """Probes whose running scores follow the same rule, advanced together."""

    aggregator: StreamingAggregator
    probes: torch.Tensor  # (k,) the group's probes: their columns in every (batch, probes) tensor


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

        monitor = Monitor(ProbeBundle.load("bundles/sad"), patience=2)
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
                out = model(input_ids=token, cache=out.cache, use_cache=True)  # past_key_values= before 5.24
                if monitor.latest().fired.any():  # scores of `token`, read on the host here
                    break

    A new sequence starts (state and trace reset) at every forward pass with an empty KV cache.

    **What is streamed.** A token-level probe (:class:`~probes.train.TokenProbe`,
    :class:`~probes.train.AttentionProbe`) streams the aggregation it was trained with - mean, max, last,
    ema, rolling, softmax attention, windowed (MultiMax-style) attention - so its running score after each
    token equals its offline score of the same prefix, and the bundle's threshold means the same thing in
    training and in the monitor. A probe trained on one vector per text (linear, mass-mean, MLP) scores
    each token and the monitor smooths those scores (``smoothing``). The row fires when the smoothed value
    (for token-level probes: the aggregation's current value, e.g. the EMA before its running maximum)
    exceeds the threshold for ``patience`` consecutive tokens; with ``patience=1`` that is exactly "the
    prefix's sequence score exceeds the threshold".

    **Which threshold.** ``threshold=`` (a float or ``{probe: float}``) wins; else the bundle's
    generation-level threshold (``probes calibrate``: calibrated on the model's own benign generations for
    a target interrupt rate) for ``target_fpr`` (or the first one); else its text-level threshold (set on
    control texts). ``monitor.threshold_kinds`` says which each probe uses.

    Parameters
    ----------
    smoothing, alpha, window:
        for probes trained on pooled vectors: ``"ema"`` (``s_t = alpha * x_t + (1 - alpha) * s_{t-1}``,
        ``s_0 = x_0``), ``"rolling"`` (mean of the last ``window`` scores) or ``"none"``.
    patience:
        consecutive tokens whose smoothed score must exceed the threshold before the row fires.
    threshold, target_fpr:
        see "Which threshold" above.
    action:
        ``"stop"`` (rows that fire end via :meth:`generate_kwargs`), ``"flag"`` (trace only) or a
        callable ``f(FireEvent) -> bool | None`` called when a row fires - return True to stop the row.
        A callable costs one host sync per step (it must know on the host that a row fired).
    on_error:
        ``"stop"`` (fail closed): an error inside the monitor raises and aborts generation, and non-finite
        scores raise :class:`MonitorError` when the generation ends (their rows were already stopped);
        ``"continue"``: errors are recorded in ``monitor.errors`` and warned about once, and the monitor
        stops scoring until the next sequence (fail open - choose it knowingly).
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
        if smoothing not in SMOOTHINGS:
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
        self._plan(selected)
        self.probe_names: list[str] = [e.name for e in self._entries]
        resolved = [self._resolve_threshold(e, threshold, target_fpr) for e in self._entries]
        self.thresholds: list[float] = [value for value, _ in resolved]
        #: Per probe: "generation", "text" or "explicit" - where its threshold came from.
        self.threshold_kinds: list[str] = [kind for _, kind in resolved]

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
        self._warned: set[str] = set()
        self._bad: torch.Tensor | None = None
        self._stop: torch.Tensor | None = None
        self._fired: torch.Tensor | None = None
        self._latest: StepScores | None = None
        self._batch = 0
        self._total = 0

    # --- configuration ---------------------------------------------------------------------------
    def _plan(self, selected: list[BundleEntry]) -> None:
        """Lay out every probe's per-token columns by site and group the probes' running scores.

        Each site computes its columns in one fused matmul (plus one column per nonlinear probe); the
        columns of all sites, side by side, map to the probes through two 0/1 matrices: ``values`` (a probe's
        per-token score - for a multi-layer probe the sum of its columns over its sites) and ``logits`` (an
        attention probe's attention logit).
        """
        self._entries: list[BundleEntry] = list(selected)
        plans: list[
            tuple[dict[str, list[tuple[torch.Tensor, torch.Tensor]]] | None, StreamingAggregator]
        ] = []
        for e in self._entries:
            forms = e.score_forms() if len(e.sites) > 1 else None
            if len(e.sites) > 1 and forms is None:
                raise ValueError(f"Probe {e.name!r} reads sites {list(e.sites)} but is not linear in them.")
            if forms is not None:  # a multi-layer probe: one value column at each of its sites
                plans.append(({site: [form] for site, form in forms.items()}, self._aggregator(e)))
                continue
            cols = e.score_columns()
            plans.append((None if cols is None else {e.site: cols}, self._aggregator(e)))
        sites = list(dict.fromkeys(site for e, (cols, _) in zip(self._entries, plans, strict=True)
                                   for site in (cols or {e.site: None})))  # fmt: skip
        self._sites: list[_Site] = []
        self._site_forms: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        value_of: list[tuple[int, int]] = []  # (column, probe)
        logit_of: list[tuple[int, int]] = []
        column = 0
        for site in sites:
            forms: list[tuple[torch.Tensor, torch.Tensor]] = []
            for j, (cols, agg) in enumerate(plans):
                if cols is not None and site in cols:
                    value_of.append((column + len(forms), j))
                    if agg.needs_logits:
                        logit_of.append((column + len(forms) + 1, j))
                    forms.extend(cols[site])
            n_linear = len(forms)
            nonlinear = [
                j for j, (cols, _) in enumerate(plans) if cols is None and self._entries[j].site == site
            ]
            for k, j in enumerate(nonlinear):
                if plans[j][1].needs_logits:
                    raise ValueError(
                        f"Probe {self._entries[j].name!r} needs attention logits but has no attention form."
                    )
                value_of.append((column + n_linear + k, j))
            self._sites.append(_Site(site, None, None, nonlinear))
            self._site_forms.append(forms)
            column += n_linear + len(nonlinear)
        self._n_columns = column
        self._value_of, self._logit_of = value_of, logit_of
        # Probes that follow the same rule share one aggregator (one set of kernels per step).
        groups: dict[tuple, list[int]] = {}
        for j, (_, agg) in enumerate(plans):
            groups.setdefault(agg.spec, []).append(j)
        self._group_specs = [(plans[members[0]][1], members) for members in groups.values()]
        self._groups: list[_Group] = []

    def _aggregator(self, entry: BundleEntry) -> StreamingAggregator:
        make = getattr(entry.probe, "streaming_aggregator", None)
        if callable(make):  # a token-level probe streams the aggregation it was trained with
            agg = make()
            if entry.score_columns() is None:
                raise ValueError(
                    f"Probe {entry.name!r} ({entry.probe.kind}) has a streaming aggregation but no per-token "
                    "linear form, so the monitor cannot score its tokens."
                )
            return agg
        if getattr(entry.probe, "token_level", False):
            raise ValueError(
                f"Probe {entry.name!r} ({entry.probe.kind}) reads whole sequences and has no streaming form "
                "(streaming_aggregator), so it cannot be monitored token by token."
            )
        return StreamingAggregator.smoother(self.smoothing, self.alpha, self.window)

    def _resolve_threshold(
        self, entry: BundleEntry, threshold: float | Mapping[str, float] | None, target_fpr: float | None
    ) -> tuple[float, str]:
        if isinstance(threshold, Mapping):
            unknown = set(threshold) - {e.name for e in self.bundle}
            if unknown:
                raise ValueError(
                    f"threshold names unknown probes {sorted(unknown)}; bundle has {self.bundle.names}."
                )
            if entry.name in threshold:
                return _finite_threshold(float(threshold[entry.name]), entry.name), "explicit"
        elif threshold is not None:
            return _finite_threshold(float(threshold), entry.name), "explicit"
        found = _pick_threshold(entry, target_fpr)
        if found is not None:
            self._check_calibrated_settings(entry, found)
            return float(found.value), found.kind
        if self.action == "flag":
            return math.inf, "none"  # score and trace only; nothing can fire
        raise ValueError(
            f"Probe {entry.name!r} has no threshold in the bundle: pass threshold= (a float or "
            "{probe: float}) or target_fpr= for a calibrated one, or use action='flag' to only score."
        )

    def _check_calibrated_settings(self, entry: BundleEntry, found: Threshold) -> None:
        # A generation-level threshold holds only under the monitor settings it was calibrated with.
        settings = (found.record or {}).get("monitor") if found.kind == "generation" else None
        if not settings:
            return
        mine = self.settings(entry)
        differ = {k: (v, mine.get(k)) for k, v in settings.items() if k in mine and mine[k] != v}
        if differ:
            what = ", ".join(f"{k}={now!r} (calibrated with {was!r})" for k, (was, now) in differ.items())
            warnings.warn(
                f"Probe {entry.name!r}: its generation-level threshold was calibrated under other monitor "
                f"settings ({what}); its interrupt rate does not carry over. Recalibrate or use those settings.",
                RuntimeWarning,
                stacklevel=4,
            )

    def settings(self, entry: BundleEntry) -> dict[str, Any]:
        """The monitor settings that change what ``entry``'s threshold means (``probes calibrate`` records
        them): patience and prompt screening always; the smoothing only for probes trained on pooled vectors
        (token-level probes stream their own aggregation)."""
        out: dict[str, Any] = {"patience": self.patience, "score_prompt": self.score_prompt}
        if not callable(getattr(entry.probe, "streaming_aggregator", None)):
            out["smoothing"] = self.smoothing
            if self.smoothing == "ema":
                out["alpha"] = self.alpha
            elif self.smoothing == "rolling":
                out["window"] = self.window
        return out

    # --- attaching -------------------------------------------------------------------------------
    @contextmanager
    def attach(
        self, model: nn.Module, *, tokenizer: Any = None, layers_attr: str | None = None
    ) -> Iterator[Monitor]:
        """Hook ``model`` for the duration of the ``with`` block; the hooks are removed whatever happens.

        Leaving the block raises :class:`MonitorError` if a score was NaN or infinite during the block and
        ``on_error="stop"`` (the rows concerned were stopped when it happened).
        """
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
        self._end_id = self._eos[0] if self._eos else pad_id(model, tokenizer)
        self._ctx, self._trace, self._last_input_ids, self._disabled = None, None, None, False
        self._fresh, self._total, self._batch = True, 0, 0
        self.errors, self._warned = [], set()
        self._attached = model
        failed = False
        try:
            with ExitStack() as stack:
                pre = model.register_forward_pre_hook(self._on_forward_start, with_kwargs=True)
                stack.callback(pre.remove)
                for gi, group in enumerate(self._sites):
                    site = parse_site(group.site, n_layers)
                    stack.enter_context(
                        residual_hook(model, site, self._site_hook(gi), layers_attr=layers_attr)
                    )
                post = model.register_forward_hook(self._on_forward_end)
                stack.callback(post.remove)
                stack.enter_context(_guard_generate(model))
                yield self
        except BaseException:
            failed = True
            raise
        finally:
            self._attached = None
            self._ctx = None
            problem = self._collect_nonfinite()
            if problem is not None and not failed:
                self._report(problem)

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
        for site, forms in zip(self._sites, self._site_forms, strict=True):
            if forms:
                site.weight = torch.stack([w for w, _ in forms], dim=1).to(device)
                site.bias = torch.stack([b for _, b in forms]).to(device)
            for i in site.nonlinear:
                _move_probe(self._entries[i], device)
        self._threshold_t = torch.tensor(self.thresholds, dtype=torch.float32, device=device)

        def cols(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        def combine(pairs: list[tuple[int, int]]) -> torch.Tensor:
            m = torch.zeros(self._n_columns, len(self._entries), device=device)
            for c, j in pairs:
                m[c, j] = 1.0
            return m

        p = len(self._entries)
        self._groups = [_Group(copy.deepcopy(agg), cols(members)) for agg, members in self._group_specs]
        # A plain layout - one column per probe, in probe order - needs no mapping at all; else a matmul.
        plain = sorted(self._value_of) == [(j, j) for j in range(p)] and self._n_columns == p
        self._to_values = None if plain else combine(self._value_of)
        self._to_logits = combine(self._logit_of) if self._logit_of else None
        # One group holding every probe in order: its output is the (batch, probes) tensor itself.
        only = self._groups[0] if len(self._groups) == 1 else None
        self._single = only is not None and only.probes.tolist() == list(range(p))

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
            parts=[None] * len(self._sites),
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
        if past == 0 and self._trace is not None and self._batch == batch:
            if kwargs.get("use_cache") is False and 0 < self._total < seq:
                # generate(use_cache=False) re-feeds the whole sequence (cache_position, where a release
                # passes it, starts at 0 again): only the tail is new.
                return self._total
            if found.evidence is None and seq == 1 and self._total > 0 and not self._fresh:
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
        site = self._sites[gi]

        def hook(hidden: torch.Tensor) -> None:
            ctx = self._ctx
            if ctx is None or not ctx.score:
                return
            try:
                h = hidden[:, -ctx.n_new :].reshape(-1, hidden.shape[-1]).float()
                cols = []
                if site.weight is not None:
                    cols.append(torch.addmm(site.bias, h, site.weight))
                for i in site.nonlinear:
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
            if not ctx.score:
                self._latest = None
                self._trace._append(_Step(ctx.start, ctx.ids, ctx.valid, None, None, None, ctx.is_prompt))
                return
            if any(p is None for p in ctx.parts):
                missing = [s.site for s, p in zip(self._sites, ctx.parts, strict=True) if p is None]
                raise MonitorError(
                    f"Site(s) {', '.join(missing)} produced no activations in this forward pass, so their "
                    "probes could not score the new tokens (the block list was replaced, or the forward "
                    "stopped early). Refusing to go on unscored."
                )
            raw = ctx.parts[0] if len(ctx.parts) == 1 else torch.cat(ctx.parts, dim=-1)  # type: ignore[arg-type]
            if ctx.n_new == 1:  # a decoding step: the hot path
                x, s, r, f = self._update(
                    raw[:, 0], None if ctx.valid is None else ctx.valid[:, 0], ctx.start
                )
                xs, sm, run, fi = x[:, None], s[:, None], r[:, None], f[:, None]
            else:  # a prompt (or a chunk): one update per position, in order
                steps = [
                    self._update(raw[:, t], None if ctx.valid is None else ctx.valid[:, t], ctx.start + t)
                    for t in range(ctx.n_new)
                ]
                xs, sm, run, fi = (torch.stack([step[k] for step in steps], 1) for k in range(4))
            self._trace._append(_Step(ctx.start, ctx.ids, ctx.valid, xs, sm, fi, ctx.is_prompt, run))
            if self._eos_t is not None and ctx.ids is not None and not ctx.is_prompt:
                self._done = self._done | torch.isin(ctx.ids[:, -1:], self._eos_t)
            if callable(self.action):
                self._dispatch_callbacks(fi, ctx.start)
        except Exception as exc:  # noqa: BLE001 - routed by on_error
            self._fail(exc)

    def _reset(self, batch: int) -> None:
        problem = self._collect_nonfinite()  # a previous sequence's NaN must not vanish with its state
        if problem is not None:
            self._report(problem, raise_now=False)
        dev, p = self._device, len(self._entries)
        self._batch, self._total = batch, 0
        self._disabled = False
        self._last_input_ids = None  # a previous generate's final ids must not leak into this trace
        for group in self._groups:
            group.aggregator.reset()
        self._run = torch.zeros(batch, p, dtype=torch.long, device=dev)
        self._fired = torch.zeros(batch, dtype=torch.bool, device=dev)
        self._stop = torch.zeros(batch, dtype=torch.bool, device=dev)
        self._bad = torch.zeros(batch, dtype=torch.bool, device=dev)
        self._callback_seen = torch.zeros(batch, dtype=torch.bool, device=dev)
        # Rows that have read their end-of-sequence token: generate feeds them padding from then on, which
        # must never make them fire (nor call a callable action) after the text they actually wrote.
        self._done = torch.zeros(batch, 1, dtype=torch.bool, device=dev)
        self._eos_t = torch.tensor(self._eos, dtype=torch.long, device=dev) if self._eos else None
        self._latest = None
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
        self, raw: torch.Tensor, valid: torch.Tensor | None, position: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every row by one position: ``(score, smoothed, running, firing)``, each ``(B, P)``.

        ``raw`` is ``(B, C)``: every probe's per-token columns. Rows where ``valid`` is False keep their
        state; ``valid=None`` (every decoding step) means all rows are real tokens and no masking op runs.
        """
        x = raw if self._to_values is None else raw @ self._to_values
        logits = None if self._to_logits is None else raw @ self._to_logits
        if self._single:
            g = self._groups[0]
            run = g.aggregator.update(x, logits, valid)
            smooth = g.aggregator.base_value
        else:
            run, smooth = torch.empty_like(x), torch.empty_like(x)
            for g in self._groups:
                lg = (
                    logits.index_select(1, g.probes)
                    if g.aggregator.needs_logits and logits is not None
                    else None
                )
                out = g.aggregator.update(x.index_select(1, g.probes), lg, valid)
                run.index_copy_(1, g.probes, out)
                smooth.index_copy_(1, g.probes, g.aggregator.base_value)
        # A NaN or infinite score can never pass as "below the threshold": it fires (fail closed).
        bad = ~torch.isfinite(smooth)
        above = (smooth > self._threshold_t) | bad
        v = None if valid is None else valid[:, None]
        if self.patience == 1:
            firing = above if v is None else above & v
        else:
            run_len = (self._run + 1) * above  # consecutive tokens above the threshold
            self._run = run_len if v is None else torch.where(v, run_len, self._run)
            firing = self._run >= self.patience if v is None else (self._run >= self.patience) & v
        firing = firing & ~self._done
        self._bad = self._bad | (bad & ~self._done if v is None else bad & v & ~self._done).any(dim=1)
        self._fired = self._fired | firing.any(dim=1)
        if self.action == "stop":
            self._stop = self._fired
        self._latest = StepScores(x, smooth, firing, self._fired, position, run)
        return x, smooth, run, firing

    def _dispatch_callbacks(self, firing: torch.Tensor, start: int) -> None:
        newly = self._fired & ~self._callback_seen
        if not bool(newly.any()):  # the one host sync a callable action costs
            return
        self._callback_seen = self._callback_seen | newly
        assert callable(self.action) and self._trace is not None
        smoothed = self._trace._steps[-1].smoothed
        for row in newly.nonzero().flatten().tolist():
            t = int(firing[row].any(dim=-1).long().argmax())  # first position of this step that fired
            probe = int(firing[row, t].long().argmax())
            event = FireEvent(
                row=row,
                position=start + t,
                probe=self.probe_names[probe],
                smoothed=float(smoothed[row, t, probe]),  # type: ignore[index]
                threshold=self.thresholds[probe],
            )
            if self.action(event):
                self._stop = self._stop.clone()  # type: ignore[union-attr]
                self._stop[row] = True
                self._trace._stopped_rows.add(row)

    # --- errors ----------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        if self.on_error == "stop":
            if self._stop is not None:
                self._stop = torch.ones_like(self._stop)  # nothing goes on unmonitored
            raise exc
        self._disabled = True
        if self._ctx is not None:
            self._ctx.score = False
        self._warn_once(
            type(exc).__name__,
            f"Monitor error ({type(exc).__name__}: {exc}); on_error='continue' so generation goes on "
            "unmonitored until the next sequence. Use on_error='stop' to fail closed.",
        )

    def _collect_nonfinite(self) -> MonitorError | None:
        """The NaN/inf report of the current sequence, once (one host sync per sequence)."""
        bad, self._bad = self._bad, None
        if bad is None or not bool(bad.any()):
            return None
        rows = bad.nonzero().flatten().tolist()
        where = []
        if self._trace is not None:
            for r in rows[:5]:
                tr = self._trace.rows[r]
                hit = ~(tr.smoothed == tr.smoothed) | ~(abs(tr.smoothed) < math.inf)
                first = hit.any(axis=1).nonzero()[0] if len(tr.smoothed) else []
                if len(first):
                    i = int(first[0])
                    j = int(hit[i].nonzero()[0][0])
                    where.append(
                        f"row {r} at position {int(tr.positions[i])} (probe {self.probe_names[j]!r})"
                    )
        detail = "; ".join(where) if where else f"rows {rows}"
        return MonitorError(
            f"Non-finite probe scores (NaN or inf) in {len(rows)} row(s): {detail}. The monitor counted them as "
            "firing, so those rows were stopped. The model's activations at the probed site are not finite "
            "(check the weights and dtype), or the probe is broken."
        )

    def _report(self, problem: MonitorError, raise_now: bool = True) -> None:
        self.errors.append(problem)
        if self.on_error == "stop" and raise_now:
            raise problem
        self._warn_once("nonfinite", str(problem))

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    # --- reading (also the surface the generate/stream drivers use) --------------------------------
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
        return self._latest if self._trace is not None else None

    @property
    def fired(self) -> torch.Tensor:
        """``(batch,)`` bool: which rows have fired in the current generation."""
        if self._trace is None or self._fired is None:
            raise RuntimeError("Nothing scored yet.")
        return self._fired

    @property
    def stop_flags(self) -> torch.Tensor | None:
        """``(batch,)`` bool on the model's device: the rows the monitor has stopped (None before a sequence)."""
        return self._stop if self._trace is not None else None

    @property
    def attached_model(self) -> nn.Module | None:
        """The model the monitor is attached to, or None."""
        return self._attached

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-sequence ids of the attached model (a row that reads one is finished)."""
        return list(self._eos)

    def observe_sequences(self, input_ids: torch.Tensor | None) -> None:
        """Tell the monitor the full token ids of the current generation (``generate``'s stopping criterion
        does, so the trace can show the tokens sampled but never fed back); None forgets them."""
        self._last_input_ids = input_ids

    def end_token_id(self) -> int:
        """The token a stopped row is forced to end with; ValueError when the model has none."""
        if self._end_id is None:
            raise ValueError(
                "The model has no end-of-sequence or pad token id, so the monitor cannot end a stopped row: "
                "set model.generation_config.eos_token_id (or pad_token_id) before attaching, or pass "
                "only stopping_criteria=monitor.stopping_criteria() (stops one token late)."
            )
        return self._end_id

    def stopping_criteria(self) -> StoppingCriteriaList:
        """Criteria for ``model.generate(stopping_criteria=...)``: True for the rows to stop, one per row.

        Alone they stop a row one token late: the token sampled in the step where the firing token was
        scored still lands (unscored). Use :meth:`generate_kwargs` for an exact stop.
        """
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([criterion_class()(self)])

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
            self.end_token_id()
        return LogitsProcessorList([processor_class()(self)])

    def generate_kwargs(self) -> dict[str, Any]:
        """``model.generate(**enc, **monitor.generate_kwargs())``: the stopping criteria and the logits
        processor together, so a stopped row ends with the firing token followed by EOS."""
        return {"stopping_criteria": self.stopping_criteria(), "logits_processor": self.logits_processor()}

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


def _pick_threshold(entry: BundleEntry, target_fpr: float | None) -> Threshold | None:
    """The generation-level threshold for ``target_fpr`` if the bundle has one, else the text-level one."""
    generation = [t for t in entry.thresholds if t.kind == "generation"]
    if generation:
        if target_fpr is None:
            return generation[0]
        for t in generation:
            if t.target_fpr is not None and math.isclose(
                t.target_fpr, target_fpr, rel_tol=1e-9, abs_tol=1e-12
            ):
                return t
    text = [t for t in entry.thresholds if t.kind == "text"]
    if target_fpr is None:
        return text[0] if text else None
    for t in text:
        if t.target_fpr is not None and math.isclose(t.target_fpr, target_fpr, rel_tol=1e-9, abs_tol=1e-12):
            return t
    have = [(t.kind, t.target_fpr) for t in entry.thresholds]
    raise ValueError(
        f"Probe {entry.name!r} has no threshold calibrated for target_fpr={target_fpr}; it has {have} "
        "(kind, rate). Pass threshold= explicitly, or calibrate one (probes calibrate) and add it to the bundle."
    )


def _finite_threshold(value: float, name: str) -> float:
    if math.isnan(value):
        raise ValueError(f"The threshold for probe {name!r} is NaN; nothing could ever be compared with it.")
    return value


@contextmanager
def _guard_generate(model: nn.Module) -> Iterator[None]:
    """While attached, ``model.generate`` first refuses decoding methods that reorder or rewind rows.

    Beam search reorders the batch rows between steps and assisted decoding rewinds the KV cache, so per-row
    state would silently follow the wrong text. The check reads the decoding mode ``generate`` itself would
    pick (``GenerationConfig.get_generation_mode``); the model's own attribute is restored on exit.
    """
    had = "generate" in model.__dict__
    previous = model.__dict__.get("generate")
    inner = getattr(model, "generate", None)
    if not callable(inner):
        yield
        return

    def generate(*args: Any, **kwargs: Any) -> Any:
        _check_decoding_mode(model, kwargs)
        return inner(*args, **kwargs)

    generate.__doc__ = getattr(inner, "__doc__", None)
    object.__setattr__(model, "generate", generate)
    try:
        yield
    finally:
        if had:
            object.__setattr__(model, "generate", previous)
        else:
            model.__dict__.pop("generate", None)


def _check_decoding_mode(model: nn.Module, kwargs: dict[str, Any]) -> None:
    if kwargs.get("custom_generate") is not None:
        raise MonitorError(
            "generate(custom_generate=...) runs a decoding loop the monitor does not know; refusing to monitor it."
        )
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    if config is None:
        return
    config = copy.deepcopy(config)
    fields = {k: v for k, v in kwargs.items() if hasattr(config, k) and k != "generation_config"}
    try:
        config.update(**fields)
        mode = config.get_generation_mode(kwargs.get("assistant_model"))
    except Exception as exc:  # noqa: BLE001 - an API the monitor cannot read is a refusal, not a pass
        raise MonitorError(
            f"Cannot tell which decoding method generate() will use ({type(exc).__name__}: {exc}); the monitor "
            "only follows greedy search and sampling. Check the installed transformers against the README."
        ) from exc
    name = str(getattr(mode, "value", mode))
    if name not in _SUPPORTED_MODES:
        raise MonitorError(
            f"generate() would use {name.replace('_', ' ')}, which reorders or rewinds rows between steps "
            "(beam search, assisted or contrastive decoding): per-row monitor state cannot follow it. Use "
            "greedy search or sampling (num_beams=1, no assistant model) while the monitor is attached."
        )


def _move_probe(entry: BundleEntry, device: torch.device) -> None:
    # Nonlinear probes keep torch modules or tensors as attributes; move whatever has a .to().
    probe = entry.probe
    to = getattr(probe, "to", None)
    if callable(to):
        to(device)
