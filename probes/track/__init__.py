"""MLflow tracking: log a finished run (params, per-layer metrics, artifacts, the probe as a pyfunc model) and
pull a run's probe bundle back. mlflow is imported only inside these functions."""

from probes.track.tracking import (
    TrackingOutcome,
    check_reachable,
    default_tracking_uri,
    end_unfinished_runs,
    git_commit,
    log_run,
    log_text_model,
    not_tracked_outcome,
    pull,
    write_outcome,
)

__all__ = [
    "TrackingOutcome",
    "check_reachable",
    "default_tracking_uri",
    "end_unfinished_runs",
    "git_commit",
    "log_run",
    "log_text_model",
    "not_tracked_outcome",
    "pull",
    "write_outcome",
]
