"""The ``engine`` section: where forward passes run -- this process (``local``) or a Ray cluster (``ray``).

::

    engine: {kind: ray, address: auto, workers: 8, gpus_per_worker: 1, cpus_per_worker: 4}

The science is the same either way: the Ray engine runs the local collection engine on each worker and
writes the same cache shards (see :mod:`probes.collection.ray_engine`), so the two give bit-identical
activations and share cache entries. ``address``: ``local`` starts a Ray cluster on this machine for the
run; ``auto`` joins the cluster ``ray start --head`` started on this node (or ``$RAY_ADDRESS``);
``ray://host:10001`` connects through the Ray client; ``host:6379`` names a head node's GCS.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from probes.config.base import Strict


class EngineConfig(Strict):
    """Where collection runs."""

    kind: Literal["local", "ray"] = Field("local", description="'local' (this process) or 'ray'.")
    address: str = Field(
        "local", description="Ray only: 'local' (start one here), 'auto' (join a running one), 'ray://h:p'."
    )
    workers: int = Field(1, gt=0, description="Ray only: actors, each holding one copy of the model.")
    gpus_per_worker: float = Field(0, ge=0, description="Ray only: GPUs each actor reserves (1 = own GPU).")
    cpus_per_worker: float = Field(
        1, gt=0, description="Ray only: CPUs each actor reserves (= torch threads)."
    )
    block_tokens: int = Field(
        65536, gt=0, description="Ray only: token budget of one block (one task, one cache shard)."
    )
    shard_writer: Literal["auto", "workers", "driver"] = Field(
        "auto",
        description=(
            "Ray only: who writes each block's cache shard. 'workers': the worker that computed it, straight "
            "into the cache folder (needs the folder on a file system every worker sees, as on one machine "
            "or a shared mount); the driver lists it after checking its hash and rows, and holds no features. "
            "'driver': results travel back through Ray's object store and the driver writes them. 'auto': "
            "workers when every worker sees the cache folder (checked with a probe file), else driver."
        ),
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Ray only: give up on an unreachable address after this many seconds."
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("address must be 'local', 'auto', 'ray://host:port' or 'host:port'")
        return value
