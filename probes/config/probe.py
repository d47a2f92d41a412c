"""What is trained: the residual ``layers`` to sweep and the ``probe`` section (kind, params, grid)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from probes.config.base import Strict


class LayerRange(Strict):
    """``{start, stop, step}`` over residual sites; ``stop`` is exclusive like Python's range, None = to the end."""

    start: int = 0
    stop: int | None = None
    step: int = Field(1, gt=0)


LayerItem = int | str


class ProbeConfig(Strict):
    """Probe type and hyperparameters; ``grid`` tries every combination and keeps the best on validation."""

    kind: str = Field(
        "logistic", description="Probe kind (probes.train registry): logistic, diffmeans, mlp, ..."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters passed to the probe.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Small grid over hyperparameters, e.g. {C: [0.1, 1, 10]}."
    )

    @field_validator("grid")
    @classmethod
    def _small_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = 1
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key} is empty; give at least one value")
            size *= len(values)
        if size > 64:
            raise ValueError(f"the grid has {size} combinations; keep it at 64 or fewer")
        return grid

    def candidates(self) -> list[dict[str, Any]]:
        """Every hyperparameter combination to try (``params`` overlaid with each grid point)."""
        combos: list[dict[str, Any]] = [dict(self.params)]
        for key, values in self.grid.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return combos
