"""Data parallelism: the model replicated on every device, each minibatch split among them.

A mesh is a grid of devices with named axes; jaxnn uses its ``"batch"`` axis
(:data:`BATCH_AXIS`). Params, state and optimizer state are **replicated** (the same values
on every device, ``PartitionSpec()``); each minibatch of ``B`` examples is **sharded** over
``"batch"`` (``PartitionSpec("batch")``): with ``d`` devices, device ``k`` holds rows
``k·B/d … (k+1)·B/d - 1``. Under ``jax.jit`` XLA partitions the computation (GSPMD) and
inserts the collectives the math needs:

* the loss is a mean over the whole minibatch, ``L = (1/B) Σ_k Σ_{i ∈ shard k} ℓ_i``, so its
  gradient is a sum of per-device partial sums, ``∂L/∂w = Σ_k (1/B) Σ_{i ∈ shard k} ∂ℓ_i/∂w``:
  one all-reduce, after which every device applies the same update and the parameters stay
  replicated;
* BatchNorm's statistics are means over the batch axis (:mod:`jaxnn.batchnorm`), so they
  become all-reduces too: the statistics of the global batch, count-weighted when a mask
  pads it, never a mean of per-device means.

So ``d`` devices compute what one device computes on the same minibatch; only the order in
which the sums are added differs (results equal to rounding, not bit for bit). Dropout masks
are the same too: JAX's partitionable threefry (``jax_threefry_partitionable``, on by
default) draws the same bits whatever the sharding.

**The data set** is replicated on every device: an epoch's permutation is drawn inside the
compiled scan and each device gathers the rows of its shard locally, so no example crosses
devices during the epoch. A data set that does not fit in one device's memory needs another
layout (e.g. a host-side loader with ``jax.make_array_from_process_local_data``).

**Several hosts** (or several processes on one machine). ``jax.distributed.initialize``
connects the processes (JAX's engine, not jaxnn's); every process then runs the *same*
program on the *same* data (loaded with the same seed), and a mesh spans the devices of all
of them. ``devices=N`` means ``N`` devices of each process (:func:`data_mesh`). A try-out with
two processes on one machine, two simulated CPU devices each (a mesh of four)::

    export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2
    python train.py 0 & python train.py 1; wait     # train.py below; argv[1]: process id

    # train.py
    import sys, jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    jax.distributed.initialize(coordinator_address="localhost:12355", num_processes=2,
                               process_id=int(sys.argv[1]))
    ...  # the same data, the same key, on every process
    result = jaxnn.fit(net, loss, opt, ts, train, epochs=10, batch_size=64, devices=2)

On a cluster, process ``i`` of ``N`` runs the same script with
``coordinator_address="<host of process 0>:<port>"``, ``num_processes=N``,
``process_id=i``; under SLURM or on Cloud TPU ``jax.distributed.initialize()`` finds all
three itself. Results (:func:`jaxnn.evaluation.evaluate`, the losses) are replicated, so every
process gets them; let one process (``jax.process_index() == 0``) write files.
``jaxnn.run.run(RunConfig(devices=2), out=...)`` in place of ``fit`` does so (and every
process saves its share of the checkpoints); the ``jaxnn train`` command runs one process.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "BATCH_AXIS",
    "Devices",
    "batch_size_per_device",
    "data_mesh",
    "replicate",
    "shard_batch",
]

BATCH_AXIS = "batch"
Devices = int | Sequence[jax.Device] | Mesh | None
_MORE_CPU_DEVICES = (
    "On the CPU, XLA_FLAGS=--xla_force_host_platform_device_count={n} (set before JAX starts) "
    "simulates {n} devices"
)


def data_mesh(devices: Devices, who: str = "data_mesh") -> Mesh | None:
    """The mesh that ``devices`` names, with a ``"batch"`` axis; ``None`` for ``None``.

    Args:
      devices: one of

        * ``None`` — no mesh: ``jit`` runs on JAX's default device, as without jaxnn.parallel;
        * an int ``N >= 1`` — the first ``N`` of ``jax.local_devices()``; with several
          processes (``jax.distributed.initialize``), the first ``N`` devices *of each
          process*, ``N × jax.process_count()`` in all;
        * a sequence of devices, e.g. ``jax.devices()[2:6]``: a 1-D mesh over them, in order;
        * a ``jax.sharding.Mesh`` with a ``"batch"`` axis, returned as it is (the minibatch is
          split over ``"batch"`` and replicated over any other axis).
      who: the caller's name, the error messages' prefix (none if empty).

    Raises:
      ValueError: ``N`` is more than the devices a process has, a sequence is empty or
        repeats a device, a mesh has no ``"batch"`` axis.
      TypeError: ``devices`` is none of the above.
    """
    who = f"{who}: " if who else ""
    if devices is None or isinstance(devices, Mesh):
        if devices is not None and BATCH_AXIS not in devices.axis_names:
            raise ValueError(
                f"{who}the mesh must have a {BATCH_AXIS!r} axis (the minibatch is split "
                f"over it), got axes {devices.axis_names}. Build one with "
                f"jax.make_mesh((n,), ({BATCH_AXIS!r},))."
            )
        return devices
    if isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise ValueError(f"{who}devices must be >= 1, got {n}.")
        per_process: dict[int, list[jax.Device]] = {}
        for d in jax.devices():
            per_process.setdefault(d.process_index, []).append(d)
        have = min(len(ds) for ds in per_process.values())
        if n > have:
            kind = jax.local_devices()[0].platform
            where = "this process has" if len(per_process) == 1 else "the smallest process has"
            more = _MORE_CPU_DEVICES.format(n=n) if kind == "cpu" else "Use fewer"
            raise ValueError(
                f"{who}devices={n}, but {where} {have} {kind} device(s). {more}; or pass "
                f"devices <= {have}."
            )
        chosen = [d for p in sorted(per_process) for d in per_process[p][:n]]
        return Mesh(np.array(chosen), (BATCH_AXIS,))
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError(
                f"{who}devices must be a non-empty sequence of jax devices (e.g. "
                f"jax.devices()[:4]), got {devices!r}."
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"{who}devices lists a device twice: {chosen}.")
        return Mesh(np.array(chosen), (BATCH_AXIS,))
    raise TypeError(
        f"{who}devices must be None, a number of devices, a sequence of jax devices or a "
        f"jax.sharding.Mesh with a {BATCH_AXIS!r} axis, got {type(devices).__name__} "
        f"{devices!r}."
    )


def batch_size_per_device(batch_size: int, mesh: Mesh | None, who: str) -> int:
    """``batch_size / d`` for the mesh's ``d`` devices along ``"batch"``; refuses a remainder."""
    who = f"{who}: " if who else ""
    d = 1 if mesh is None else mesh.shape[BATCH_AXIS]
    if batch_size % d:
        lower, upper = batch_size // d * d, -(-batch_size // d) * d
        choices = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{who}batch_size={batch_size} must be divisible by the {d} devices the "
            f"minibatch is split over (each takes batch_size/{d} examples). Use batch_size "
            f"{choices}, or a number of devices that divides {batch_size}."
        )
    return batch_size // d


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: constrain every leaf's first axis to be split over ``"batch"``.

    The identity without a mesh. Leaves are ``[batch, ...]``; ``batch`` divisible by the
    mesh's ``"batch"`` size.
    """
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P(BATCH_AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` on every device of ``mesh`` (``PartitionSpec()``).

    Leaves already replicated on ``mesh`` are returned as they are; the others are copied.
    With several processes each process passes its own copy of the same values (the same
    data, the same seed): the leaves' checksums are compared across processes first.

    Raises:
      ValueError: (several processes) a leaf differs between processes.
    """
    sharding = NamedSharding(mesh, P())
    leaves, treedef = jax.tree.flatten(tree)
    todo = [
        i
        for i, leaf in enumerate(leaves)
        if not (isinstance(leaf, jax.Array) and leaf.sharding == sharding)
    ]
    if not todo:
        return tree
    if sharding.is_fully_addressable:  # one process: device to device
        for i in todo:
            leaves[i] = jax.device_put(leaves[i], sharding)
        return jax.tree.unflatten(treedef, leaves)
    # Several processes: a global array is built from each process's host copy.
    keys = {i: jax.random.key_impl(leaves[i]) for i in todo if _is_key(leaves[i])}
    host = {i: np.asarray(jax.random.key_data(leaves[i]) if i in keys else leaves[i]) for i in todo}
    _check_equal_across_processes(host, treedef, len(leaves))
    for i in todo:
        put = jax.device_put(host[i], sharding)
        leaves[i] = jax.random.wrap_key_data(put, impl=keys[i]) if i in keys else put
    return jax.tree.unflatten(treedef, leaves)


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _check_equal_across_processes(host: dict[int, np.ndarray], treedef: Any, count: int) -> None:
    from jax.experimental import multihost_utils

    ids = sorted(host)
    mine = np.asarray([zlib.crc32(np.ascontiguousarray(host[i]).tobytes()) for i in ids], np.uint32)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, leaves]
    differ = [ids[j] for j in range(len(ids)) if np.any(every[:, j] != every[0, j])]
    if differ:
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
            jax.tree.unflatten(treedef, list(range(count))))[0]]  # fmt: skip
        raise ValueError(
            f"replicate: the processes hold different values for {[paths[i] for i in differ]}. "
            f"Every process must load the same data and create the state from the same key "
            f"(the same seed)."
        )
