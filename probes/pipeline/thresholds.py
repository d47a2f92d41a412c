"""``set_thresholds``: the one function that sets a bundle's thresholds, shared by ``probes run`` and
``probes train`` so both write the same thresholds from the same config.

Each control set is split into a calibration part and a held-out part exactly as :func:`probes.evaluate`
splits it (grouped, seeded, ``control_holdout``); the threshold for each target FPR is the conformal rank over
the calibration parts pooled, and the held-out part is what the run's report checks it on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from probes.pipeline.outputs import _threshold_record

if TYPE_CHECKING:  # pragma: no cover
    from probes.pipeline.prepare import _Prepared
    from probes.pipeline.results import Reporter

#: The share of each control set held out to check the FPR (``probes.evaluate``'s default).
CONTROL_HOLDOUT = 0.5


def set_thresholds(
    probe: Any, prep: _Prepared, site: str, reporter: Reporter | None = None
) -> list[dict[str, Any]]:
    """Bundle thresholds of ``probe`` at ``site`` for the config's target FPRs, set on the control set(s).

    Returns ``[]`` (and warns) when the run has no control set; a target the control set is too small for
    gets no threshold (and a warning).
    """
    import numpy as np

    from probes.evaluation import conformal_threshold
    from probes.evaluation.core import as_split, grouped_holdout_split
    from probes.pipeline.prepare import control_for_evaluate

    control = control_for_evaluate(prep)
    if control is None or prep.control_ds is None:
        if reporter is not None:
            reporter.warn("no control set: the bundle has no threshold (set data.control to calibrate one).")
        return []
    sets = control if isinstance(control, dict) else {"control": control}
    calibration = []
    for name, acts in sets.items():
        split = as_split(acts, site, f"control set {name!r}", labels_required=False)
        scores = np.asarray(probe.decision_function(split.X), dtype=np.float64)
        cal_idx, _ = grouped_holdout_split(len(scores), split.groups, CONTROL_HOLDOUT, prep.config.seed)
        calibration.append(scores[cal_idx])
    cal = np.concatenate(calibration)
    out = []
    for fpr in prep.config.evaluation.target_fprs:
        value = conformal_threshold(cal, fpr)
        if math.isfinite(value):
            out.append(_threshold_record(value, fpr, len(cal), prep.control_ds))
        elif reporter is not None:
            reporter.warn(f"control set too small for target FPR {fpr:g}: no threshold stored for it.")
    return out
