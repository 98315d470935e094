"""Device meshes and sharding: one ``data`` axis over all devices (of all processes, or of this one).

popjax is data-parallel: batches are split along the ``data`` axis, parameters are replicated, and
``jax.jit`` inserts the collectives. Several hosts join with ``initialize_distributed`` first.
"""
from __future__ import annotations

import os

import numpy as np
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def use_all_cpu_cores() -> None:
    """Make one JAX CPU device per core, if nothing chose a count already; call before JAX starts.

    XLA runs one program on a CPU device with intra-op threads that leave part of the cores idle; splitting
    the batch over one device per core keeps them all busy (ResNet50's rate: ``benchmarks/RESULTS.md``).
    Accelerators are unaffected: ``jax.devices()`` still lists them first.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    except RuntimeError:  # JAX's backends are already up; keep what they have
        pass


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA,), axis_types=(AxisType.Auto,))


def training_mesh(num_devices: int = 0) -> Mesh:
    """The mesh training runs on: every device of every process (0), or the first ``num_devices`` of a
    single-process run (small models on a CPU's per-core devices train faster on one; see
    ``config.train.devices``)."""
    if not num_devices:
        return data_mesh()
    if jax.process_count() > 1:
        raise ValueError(f"config.train.devices = {num_devices} needs a single process; with "
                         f"{jax.process_count()} processes set it to 0 (every device of every process)")
    if not 0 < num_devices <= jax.device_count():
        raise ValueError(f"config.train.devices = {num_devices}: this run has {jax.device_count()} devices")
    return data_mesh(jax.devices()[:num_devices])


def local_mesh() -> Mesh:
    """A ``data`` mesh over this process's devices only (per-host work such as feature extraction)."""
    return data_mesh(jax.local_devices())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``."""
    return NamedSharding(mesh, P(DATA))


def split_sharding(mesh: Mesh, shape, axes=(0,)) -> NamedSharding:
    """The first of ``axes`` whose length divides evenly over ``data`` is split; none: replicated.

    E.g. the 18 frames of one video (axis 1 of [B, N, H, W, 3]) spread over the devices, where a batch of one
    video cannot be.
    """
    for axis in axes:
        if shape[axis] % mesh.size == 0:
            return NamedSharding(mesh, P(*([None] * axis), DATA))
    return replicated(mesh)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(tree, sharding: NamedSharding):
    """Host arrays (numpy, or anything ``np.asarray`` takes) onto ``sharding``; every process passes the same
    values and builds the shards of its own devices (no cross-process check, unlike ``jax.device_put``)."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, tree)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis of ``x`` with zeros up to ``size`` (static shapes for jit)."""
    if len(x) == size:
        return x
    pad = np.zeros((size - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
    """Join a multi-process JAX run (one process per host, or several on one machine for tests).

    On CPU the cross-process collectives go through gloo. With no arguments JAX auto-detects the cluster
    (Cloud TPU, SLURM, ...).
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # affects CPU devices only
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
