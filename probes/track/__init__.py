"""MLflow tracking: log a finished run (params, per-layer metrics, artifacts, the probe as a pyfunc model) and
pull a run's probe bundle back. mlflow is imported only inside these functions."""

from probes.track.tracking import (
    TrackingOutcome,
    check_reachable,
    default_tracking_uri,
    git_commit,
    log_run,
    pull,
)

__all__ = ["TrackingOutcome", "check_reachable", "default_tracking_uri", "git_commit", "log_run", "pull"]
