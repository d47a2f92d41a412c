"""Probes that read several sites at once: a stacked logistic over per-layer scores, and one logistic over
the concatenated standardised layers.

A single layer's probe is fragile (the best layer moves between datasets and models); combining layers
recovers much of the loss. Both probes here are **linear in every site they read**:

    score(x) = sum over sites s of  x_s @ w_s + b_s

so a monitor streams one in a single forward pass: at each site's hook it adds that site's linear score
(one more column in the site's fused matmul) and the probe's score is the sum of its columns once the
deepest site has run. :meth:`MultiSiteProbe.linear_forms` gives the ``{site: (w_s, b_s)}`` (raw activation
space, standardisation and the combiner folded in; the ``b_s`` sum to the intercept), ``sites_`` the sites
in the order they were fitted.

Inputs: an :class:`~probes.collection.Activations` (the probe reads its sites), a mapping
``{site: (n, d)}``, or a tensor ``(n, n_sites, d)`` stacked in ``sites`` order. ``evaluate(probe, acts)``
reads ``probe.sites_`` from an ``Activations`` by itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from probes.collection.activations import RaggedTokens
from probes.errors import BundleError
from probes.train._logistic_fit import fit_logistic_sklearn
from probes.train._validate import check_groups, check_matrix, cv_splits
from probes.train.base import ClassifierProbe, register_probe

SiteInput = Any  # Activations | Mapping[str, (n, d)] | (n, n_sites, d) tensor or array


class MultiSiteProbe(ClassifierProbe):
    """Shared input handling, scoring and persistence of probes linear in several sites."""

    #: True for probes that read several sites (a monitor streams them with :meth:`linear_forms`).
    multi_site: ClassVar[bool] = True
    _extra_state: ClassVar[tuple[str, ...]] = ()

    sites: Sequence[str] | None

    # --- inputs ---------------------------------------------------------------------------------
    def _resolve_sites(self, X: SiteInput, who: str) -> list[str]:
        if self.is_fitted:
            return list(self.sites_)
        if self.sites is not None:
            sites = [str(s) for s in self.sites]
        elif isinstance(X, Mapping) or hasattr(X, "features"):
            sites = list(_features(X))
        else:
            raise ValueError(
                f"{who}: a stacked (n, n_sites, d) array does not say which sites it holds; pass sites=[...] "
                "(canonical names, in stacking order) or give an Activations / {site: X} mapping."
            )
        if len(sites) < 2:
            raise ValueError(f"{who}: a multi-layer probe reads at least 2 sites; got {sites}.")
        if len(set(sites)) != len(sites):
            raise ValueError(f"{who}: sites must be distinct; got {sites}.")
        return sites

    def _stack(self, X: SiteInput, who: str) -> tuple[torch.Tensor, list[str]]:
        """``(n, n_sites, d)`` float tensor (device kept) and the site names, from any accepted input."""
        sites = self._resolve_sites(X, who)
        if isinstance(X, Mapping) or hasattr(X, "features"):
            feats = _features(X)
            missing = [s for s in sites if s not in feats]
            if missing:
                raise KeyError(
                    f"{who}: no activations at site(s) {missing}; the input has {', '.join(feats)}. "
                    "Collect every site the probe reads."
                )
            parts = []
            for s in sites:
                v = feats[s]
                if isinstance(v, RaggedTokens):
                    raise ValueError(
                        f"{who}: site {s!r} holds token-level RaggedTokens; multi-layer probes read pooled "
                        "activations (pooling='last' or 'mean')."
                    )
                parts.append(v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)))
            shapes = {tuple(p.shape) for p in parts}
            if len(shapes) != 1 or parts[0].ndim != 2:
                raise ValueError(
                    f"{who}: every site must be (n, d) with the same n and d; got {sorted(shapes)}."
                )
            devices = {p.device for p in parts}
            if len(devices) != 1:
                raise ValueError(f"{who}: sites live on different devices {sorted(map(str, devices))}.")
            Xt = torch.stack(parts, dim=1)
        else:
            Xt = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
            if Xt.ndim != 3 or Xt.shape[1] != len(sites):
                raise ValueError(
                    f"{who}: a stacked input must be (n, {len(sites)}, d) for sites {sites}; got "
                    f"shape {tuple(Xt.shape)}."
                )
        if not Xt.is_floating_point():
            Xt = Xt.float()
        if self.is_fitted and int(Xt.shape[2]) != int(self.n_features_in_):
            raise ValueError(
                f"{type(self).__name__} was fitted on {int(self.n_features_in_)}-dim sites but X has "
                f"{int(Xt.shape[2])}; score activations from the model the probe was trained on."
            )
        if not bool(torch.isfinite(Xt).all()):
            raise ValueError(f"{who}: X contains NaN or infinite values.")
        return Xt, sites

    # --- scoring --------------------------------------------------------------------------------
    def score_torch(self, X: SiteInput) -> torch.Tensor:  # type: ignore[override]
        """Scores ``(n,)`` in float32 on the input's device."""
        self._check_fitted()
        if isinstance(X, torch.Tensor) and X.ndim == 2:
            raise ValueError(
                f"{type(self).__name__} reads sites {list(self.sites_)}: one (n, d) tensor of one site cannot "
                "be scored. Pass {site: X}, an Activations or an (n, n_sites, d) stack; a monitor streams it "
                "as a sum over sites with linear_forms()."
            )
        Xt, _ = self._stack(X, f"{type(self).__name__}.score_torch")
        W, b = self._weights_on(Xt.device)
        return torch.einsum("nld,ld->n", Xt.to(torch.float32), W) + b

    def decision_function(self, X: SiteInput) -> np.ndarray:  # type: ignore[override]
        self._check_fitted()
        with torch.inference_mode():
            return self.score_torch(X).detach().float().cpu().numpy()

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = self.__dict__.setdefault("_device_cache", {})
        key = str(device)
        if key not in cache:
            cache[key] = (self.coef_.to(device), self.intercept_.reshape(()).to(device))
        return cache[key]

    def flops_per_row(self) -> int:
        self._check_fitted()
        return 2 * self.n_sites_ * int(self.n_features_in_)

    def linear_forms(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{site: (w, b)}`` with ``score = sum_s x_s @ w + b`` in raw activation space; the ``b`` sum to
        the intercept (all of it on the first site)."""
        self._check_fitted()
        out = {}
        for i, site in enumerate(self.sites_):
            b = self.intercept_.reshape(()).clone() if i == 0 else torch.zeros((), dtype=torch.float32)
            out[site] = (self.coef_[i].clone(), b)
        return out

    # --- persistence ----------------------------------------------------------------------------
    def _set_fitted(self, coef: np.ndarray, intercept: float, sites: list[str]) -> None:
        self.coef_ = torch.as_tensor(coef, dtype=torch.float32).contiguous()
        self.intercept_ = torch.tensor([float(intercept)], dtype=torch.float32)
        self.sites_ = list(sites)
        self.n_features_in_ = int(coef.shape[1])
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)

    @property
    def n_sites_(self) -> int:
        return len(self.sites_)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        out = {"coef": self.coef_, "intercept": self.intercept_, "sites": _encode_sites(self.sites_)}
        for name in self._extra_state:
            out[name] = getattr(self, f"{name}_")
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> MultiSiteProbe:
        names = ("coef", "intercept", "sites", *self._extra_state)
        missing = [k for k in names if k not in tensors]
        if missing:
            raise BundleError(
                f"{type(self).__name__} state is missing tensors {missing}; the file is incomplete."
            )
        sites = _decode_sites(tensors["sites"])
        coef = tensors["coef"]
        if coef.ndim != 2 or coef.shape[0] != len(sites) or tensors["intercept"].numel() != 1:
            raise BundleError(f"{type(self).__name__} state: coef must be (n_sites, d) for sites {sites}.")
        for name in self._extra_state:
            setattr(self, f"{name}_", tensors[name])
        self._set_fitted(coef.double().numpy(), float(tensors["intercept"].reshape(-1)[0]), sites)
        return self


@register_probe
class StackedProbe(MultiSiteProbe):
    """A logistic probe per site, combined by a second logistic regression over their scores (stacking).

    The combiner is fitted on *out-of-fold* per-site scores (``cv`` folds, grouped when ``fit`` gets
    ``groups``), so it learns how much to trust each layer from scores on rows that layer's probe did not
    see; the per-site probes are then refitted on every row (one batched L-BFGS fit over all sites). Both
    are L2-regularised: ``C`` for the per-site probes on standardised activations, ``meta_C`` for the
    combiner on standardised scores. The combination folds into per-site weights (``linear_forms``).
    """

    kind = "stacked"
    _extra_state = ("site_coef", "site_intercept", "combiner_weight", "combiner_bias")

    def __init__(
        self,
        sites: Sequence[str] | None = None,
        C: float = 1.0,
        meta_C: float = 1.0,
        cv: int = 5,
        standardize: bool = True,
        max_iter: int = 1000,
        class_weight: str | None = None,
        seed: int = 0,
    ) -> None:
        self.sites = sites
        self.C = C
        self.meta_C = meta_C
        self.cv = cv
        self.standardize = standardize
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.seed = seed

    def fit(self, X: SiteInput, y: Any, groups: Any = None) -> StackedProbe:
        from probes.train.linear import fit_logistic_many

        who = "StackedProbe.fit"
        if not float(self.C) > 0 or not float(self.meta_C) > 0:
            raise ValueError(f"{who}: C and meta_C must be > 0; got C={self.C}, meta_C={self.meta_C}.")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"{who}: class_weight must be None or 'balanced'; got {self.class_weight!r}.")
        self.__dict__.pop("n_features_in_", None)
        Xt, sites = self._stack(X, who)
        check_matrix(Xt[:, 0], who)
        y_np = self._fit_labels(y, int(Xt.shape[0]), who)
        g = check_groups(groups, int(Xt.shape[0]), who)
        folds = cv_splits(y_np, g, int(self.cv), int(self.seed))
        per_site = [Xt[:, i] for i in range(len(sites))]
        common = {
            "C": float(self.C),
            "standardize": self.standardize,
            "max_iter": int(self.max_iter),
            "class_weight": self.class_weight,
        }
        oof = np.zeros((Xt.shape[0], len(sites)))
        for tr, va in folds:
            tr_t, va_t = torch.as_tensor(tr, device=Xt.device), torch.as_tensor(va, device=Xt.device)
            fold_probes = fit_logistic_many([x[tr_t] for x in per_site], y_np[tr], **common)
            for i, p in enumerate(fold_probes):
                oof[va, i] = p.decision_function(per_site[i][va_t])
        # The combiner on standardised out-of-fold scores: its C means the same whatever the score scale.
        w_meta, b_meta, m_meta, s_meta, _ = fit_logistic_sklearn(
            torch.as_tensor(oof), y_np, float(self.meta_C), True, True, int(self.max_iter), self.class_weight
        )
        a = w_meta / s_meta
        c = b_meta - float(m_meta @ a)
        final = fit_logistic_many(per_site, y_np, **common)
        W = np.stack([p.coef_.double().numpy() for p in final])
        B = np.array([float(p.intercept_) for p in final])
        self.site_coef_ = torch.as_tensor(W, dtype=torch.float32)
        self.site_intercept_ = torch.as_tensor(B, dtype=torch.float32)
        self.combiner_weight_ = torch.as_tensor(a, dtype=torch.float64)
        self.combiner_bias_ = torch.tensor([c], dtype=torch.float64)
        self.oof_scores_ = oof
        self._set_fitted(a[:, None] * W, float(a @ B + c), sites)
        return self

    def site_scores(self, X: SiteInput) -> np.ndarray:
        """``(n, n_sites)`` scores of the per-site probes (the combiner's inputs)."""
        self._check_fitted()
        Xt, _ = self._stack(X, "StackedProbe.site_scores")
        W = self.site_coef_.to(Xt.device)
        with torch.inference_mode():
            s = torch.einsum("nld,ld->nl", Xt.to(torch.float32), W) + self.site_intercept_.to(Xt.device)
        return s.cpu().numpy()


@register_probe
class ConcatProbe(MultiSiteProbe):
    """One L2 logistic regression over the sites' activations concatenated, each feature standardised.

    Exactly :class:`~probes.train.LogisticProbe` on ``concat(x_s for s in sites)`` (same ``C``, ``cv``,
    ``Cs``, ``backend`` ...), with the weight vector cut back into one ``(d,)`` piece per site. Reads
    ``n_sites`` times more features than one layer: give it enough rows or let ``cv`` choose ``C``.
    """

    kind = "concat"
    _extra_state = ("C",)

    def __init__(
        self,
        sites: Sequence[str] | None = None,
        C: float = 1.0,
        cv: int | None = None,
        Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
        standardize: bool = True,
        max_iter: int = 1000,
        class_weight: str | None = None,
        backend: str = "sklearn",
        seed: int = 0,
    ) -> None:
        self.sites = sites
        self.C = C
        self.cv = cv
        self.Cs = Cs
        self.standardize = standardize
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.backend = backend
        self.seed = seed

    def fit(self, X: SiteInput, y: Any, groups: Any = None) -> ConcatProbe:
        from probes.train.linear import LogisticProbe

        who = "ConcatProbe.fit"
        self.__dict__.pop("n_features_in_", None)
        Xt, sites = self._stack(X, who)
        n, n_sites, d = Xt.shape
        inner = LogisticProbe(
            C=self.C,
            standardize=self.standardize,
            max_iter=self.max_iter,
            cv=self.cv,
            Cs=self.Cs,
            class_weight=self.class_weight,
            backend=self.backend,
            seed=self.seed,
        ).fit(Xt.reshape(n, n_sites * d), y, groups=groups)
        self.C_ = inner.C_
        self.classes_ = inner.classes_
        self._set_fitted(inner.coef_.double().numpy().reshape(n_sites, d), float(inner.intercept_), sites)
        return self


def _features(X: Any) -> Mapping[str, Any]:
    return X.features if hasattr(X, "features") and not isinstance(X, Mapping) else X


def _encode_sites(sites: Sequence[str]) -> torch.Tensor:
    # Site names are learned state when sites=None (taken from the data): kept beside the weights, as UTF-8
    # JSON bytes, so the file checksum covers them too.
    return torch.tensor(list(json.dumps(list(sites)).encode("utf-8")), dtype=torch.uint8)


def _decode_sites(t: torch.Tensor) -> list[str]:
    try:
        sites = json.loads(bytes(t.to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"multi-layer probe state: the site list is unreadable ({exc}).") from exc
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites) or len(sites) < 2:
        raise BundleError(f"multi-layer probe state: the site list {sites!r} is not a list of >= 2 names.")
    return sites
