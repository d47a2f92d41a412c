"""Multi-layer probes: stacked and concatenated logistic probes over several sites, the per-site linear seam
a monitor streams, persistence, bundles, evaluate(), and a real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.collection import Activations
from probes.errors import BundleError
from probes.evaluation import auroc, evaluate
from probes.package import ProbeBundle
from probes.train import ConcatProbe, LogisticProbe, StackedProbe, load_probe, make_probe, save_probe

SITES = ["layers.1", "layers.2", "layers.3"]
D = 16


def _acts(n: int, seed: int, strengths=(0.5, 0.7, 0.9)) -> Activations:
    """Three sites, each with its own planted direction and noise, so no single site has all the signal."""
    geo = np.random.default_rng(99)
    dirs = geo.normal(size=(len(SITES), D))
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    feats = {
        site: torch.as_tensor(
            rng.normal(size=(n, D)) * (1 + i) + 5.0 + (y[:, None] - 0.5) * s * dirs[i], dtype=torch.float32
        )
        for i, (site, s) in enumerate(zip(SITES, strengths, strict=True))
    }
    return Activations(
        features=feats, labels=y, ids=[f"r{i}" for i in range(n)], groups=[f"g{i // 2}" for i in range(n)]
    )


@pytest.fixture(scope="module")
def data() -> tuple[Activations, Activations]:
    return _acts(600, 0), _acts(600, 1)


@pytest.mark.parametrize("cls", [StackedProbe, ConcatProbe])
def test_combining_layers_beats_every_single_layer(cls, data) -> None:
    train, test = data
    probe = cls().fit(train, train.labels, groups=train.groups)
    assert probe.sites_ == SITES and probe.n_features_in_ == D and probe.n_sites_ == 3
    combined = auroc(test.labels, probe.decision_function(test))
    singles = [
        auroc(test.labels, LogisticProbe().fit(train[s], train.labels).decision_function(test[s]))
        for s in SITES
    ]
    assert combined > max(singles) + 0.02


@pytest.mark.parametrize("cls", [StackedProbe, ConcatProbe])
def test_the_score_is_a_sum_of_per_site_linear_scores(cls, data) -> None:
    train, test = data
    probe = cls().fit(train, train.labels)
    forms = probe.linear_forms()
    assert list(forms) == SITES
    summed = sum(test[s] @ w + b for s, (w, b) in forms.items())
    np.testing.assert_allclose(summed.numpy(), probe.decision_function(test), rtol=1e-5, atol=1e-4)
    assert float(sum(b for _, b in forms.values())) == pytest.approx(float(probe.intercept_))
    # Every accepted input gives the same scores: Activations, {site: X}, an (n, sites, d) stack.
    stack = torch.stack([test[s] for s in SITES], dim=1)
    np.testing.assert_array_equal(
        probe.decision_function(dict(test.features)), probe.decision_function(stack)
    )
    assert probe.linear_form() is None and probe.flops_per_row() == 2 * 3 * D


def test_concat_probe_is_a_logistic_probe_on_the_concatenated_sites(data) -> None:
    train, test = data
    probe = ConcatProbe(C=0.3).fit(train, train.labels)
    flat = LogisticProbe(C=0.3).fit(torch.cat([train[s] for s in SITES], dim=1), train.labels)
    np.testing.assert_allclose(
        probe.decision_function(test),
        flat.decision_function(torch.cat([test[s] for s in SITES], dim=1)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_stacked_combiner_is_fitted_on_out_of_fold_scores() -> None:
    train = _acts(600, 3, strengths=(0.9, 0.0, 1.5))  # the middle site is pure noise
    probe = StackedProbe(cv=4).fit(train, train.labels, groups=train.groups)
    # Out-of-fold scores differ from the refitted probes' in-sample scores (they never saw their rows).
    in_sample = probe.site_scores(train)
    assert probe.oof_scores_.shape == in_sample.shape == (600, 3)
    assert not np.allclose(probe.oof_scores_, in_sample)
    # The combiner learns from the out-of-fold scores that the noise site is worth little.
    weight = np.abs(probe.combiner_weight_.numpy() * probe.oof_scores_.std(0))
    assert weight[1] < 0.3 * min(weight[0], weight[2])
    np.testing.assert_allclose(
        probe.coef_.numpy(), probe.combiner_weight_.numpy()[:, None] * probe.site_coef_.numpy(), rtol=1e-5
    )


def test_inputs_are_checked(data) -> None:
    train, test = data
    with pytest.raises(ValueError, match="pass sites="):
        StackedProbe().fit(torch.stack([train[s] for s in SITES], 1), train.labels)
    StackedProbe(sites=SITES).fit(torch.stack([train[s] for s in SITES], 1), train.labels)
    with pytest.raises(ValueError, match="at least 2 sites"):
        ConcatProbe(sites=["layers.1"]).fit(train, train.labels)
    probe = ConcatProbe(sites=["layers.3", "layers.1"]).fit(train, train.labels)
    assert probe.sites_ == ["layers.3", "layers.1"]
    with pytest.raises(KeyError, match="layers.3"):
        probe.decision_function({"layers.1": test["layers.1"]})
    with pytest.raises(ValueError, match="cannot be scored"):
        probe.score_torch(test["layers.1"])
    with pytest.raises(ValueError, match="fitted on 16-dim"):
        probe.decision_function({s: torch.zeros(4, 8) for s in SITES})
    assert isinstance(make_probe("stacked", meta_C=0.5), StackedProbe)


@pytest.mark.parametrize("cls", [StackedProbe, ConcatProbe])
def test_save_load_and_bundle_roundtrip(tmp_path, cls, data) -> None:
    train, test = data
    probe = cls().fit(train, train.labels)
    again = load_probe(save_probe(probe, tmp_path / "p.safetensors"))
    assert again.sites_ == SITES
    np.testing.assert_array_equal(again.decision_function(test), probe.decision_function(test))

    fingerprint = {"name": "synthetic", "num_layers": 4, "hidden_size": D}
    bundle = ProbeBundle.from_probe(probe, model=fingerprint, name="multi", threshold=1.0)
    bundle.add(LogisticProbe().fit(train["layers.2"], train.labels), layer=2, name="single")
    loaded = ProbeBundle.load(bundle.save(tmp_path / "bundle"))
    entry = loaded["multi"]
    assert entry.site == "layers.3" and entry.sites == tuple(SITES)  # the deepest site, then all of them
    forms = entry.score_forms()
    summed = sum(test[s] @ w + b for s, (w, b) in forms.items())
    np.testing.assert_allclose(summed.numpy(), probe.decision_function(test), rtol=1e-5, atol=1e-4)
    single = loaded["single"]
    assert list(single.score_forms()) == ["layers.2"] and single.sites == ("layers.2",)
    np.testing.assert_allclose(entry.score(dict(test.features)).numpy(), probe.decision_function(test))


def test_bundle_refuses_a_layer_or_non_canonical_sites(data) -> None:
    train, _ = data
    fingerprint = {"name": "synthetic", "num_layers": 4, "hidden_size": D}
    probe = StackedProbe().fit(train, train.labels)
    with pytest.raises(ValueError, match="leave out layer="):
        ProbeBundle.from_probe(probe, model=fingerprint, layer=2)
    odd = ConcatProbe(sites=["layers.-1", "layers.1"]).fit(
        {"layers.-1": train["layers.3"], "layers.1": train["layers.1"]}, train.labels
    )
    with pytest.raises(ValueError, match="non-canonical"):
        ProbeBundle.from_probe(odd, model=fingerprint)
    with pytest.raises(ValueError, match="pass layer="):
        ProbeBundle.from_probe(LogisticProbe().fit(train["layers.1"], train.labels), model=fingerprint)


def test_a_damaged_site_list_is_refused(tmp_path, data) -> None:
    from probes.train.multilayer import _decode_sites

    with pytest.raises(BundleError, match="site list"):
        _decode_sites(torch.tensor(list(b"not json"), dtype=torch.uint8))
    train, _ = data
    probe = ConcatProbe().fit(train, train.labels)
    state = probe.state_tensors()
    state["coef"] = state["coef"][:2]
    with pytest.raises(BundleError, match="n_sites"):
        ConcatProbe().load_state_tensors(state)


def test_evaluate_reads_the_probe_sites(data) -> None:
    train, test = data
    control = _acts(400, 5)
    control.labels[:] = 0
    probe = StackedProbe().fit(train, train.labels)
    report = evaluate(probe, test, control=control, n_bootstrap=50)
    assert report.layer == "+".join(SITES)
    assert report.auroc == pytest.approx(auroc(test.labels, probe.decision_function(test)))
    with pytest.raises(ValueError, match="in that order"):
        evaluate(probe, test, control=control, layer=list(reversed(SITES)), n_bootstrap=10)
