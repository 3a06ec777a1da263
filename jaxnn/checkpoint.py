"""Checkpoints of a training run through orbax-checkpoint: save, list, restore and check.

A checkpoint directory (the run's checkpoint root) holds one checkpoint per ``step``, a number
of the caller's choosing (an epoch or a step count), as orbax's
:class:`~orbax.checkpoint.CheckpointManager` lays it out::

    directory/
      1/
        train_state/   the arrays: params, state, opt_state, step, key (orbax StandardSave)
        config/        the run's configuration (JSON)
        extra/         anything else JSON can hold, e.g. the metrics history
        jaxnn/         the manifest: every array's path, shape and dtype; the PRNG key impls
      2/
      ...

What orbax gives:

* **Atomic commits.** A checkpoint is written into a temporary directory
  (``2.orbax-checkpoint-tmp-*``) and renamed to ``2/`` only when complete, so a process
  killed while saving leaves the previous checkpoints intact and loadable; the next
  :func:`save` removes the unfinished directory.
* **Keeping the last N.** ``save(..., keep=N)`` deletes all but the newest ``N`` checkpoints.
* **Sharded arrays across hosts.** Each host writes its shards of a ``jax.Array``; restoring
  places the shards as the shardings of ``like``'s arrays say (a ``jax.Array`` or a
  ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``). With several hosts, every host calls
  :func:`save` and :func:`restore` with the same arguments (after ``jax.distributed.initialize``)
  and ``directory`` must be on a file system that all of them mount (jaxnn takes local paths,
  not ``gs://`` URLs); orbax coordinates them.
  Arrays that carry no sharding (NumPy arrays) are restored onto the default device.

What jaxnn adds:

* **The tree's structure comes from the caller.** The arrays are stored as nested dicts under
  their paths (``params/dense_0/w``, ``opt_state/0/mu/dense_0/w``, ``key``), and
  :func:`restore` rebuilds exactly the tree structure of ``like``: its NamedTuples
  (``BatchNormState``, optax states), empty dicts, ``None`` and ``optax.EmptyState()`` nodes,
  whatever orbax's own handling of custom nodes (restored without a target, orbax gives back
  plain dicts, lists and ``None``).
* **Restore checks before it loads.** The saved paths, shapes and dtypes (from the manifest,
  written in the same atomic commit) are compared with ``like``'s, and every difference is
  reported in one ``ValueError``. Orbax itself casts to the target's dtype silently (float32
  saved, float64 restored) and stops at the first shape that differs, without its path.
* **Typed PRNG keys** (``jax.random.key``, dtype ``key<fry>``) are stored as their raw data
  (``jax.random.key_data``, uint32) with the impl's name, and restored as typed keys equal to
  the saved ones: the arrays on disk are plain, and a different impl is reported as a dtype.
* **No silent skips.** Orbax's manager returns ``False`` and saves nothing for a step that is
  not after the latest one; :func:`save` raises instead.

Saves are synchronous: when :func:`save` returns, the checkpoint is committed. A restored
array has the saved bits and dtype, so a run resumed from a checkpoint continues exactly as
the uninterrupted run would have.

Example::

    ts = TrainState.create(network, optimizer, jax.random.key(0), (128, 784))
    ...  # train
    checkpoint.save("runs/a/ckpt", ts, step=epoch, config=config, extra={"history": history})
    ...  # later, or after a crash
    fresh = TrainState.create(network, optimizer, jax.random.key(0), (128, 784))
    ts, config, extra, epoch = checkpoint.restore("runs/a/ckpt", like=fresh)
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Restored", "all_steps", "latest_step", "restore", "save"]

# orbax is imported inside the functions: it adds ~0.2 s to `import jaxnn` otherwise.

_ARRAYS = "train_state"  # the composite checkpoint's items
_CONFIG = "config"
_EXTRA = "extra"
_MANIFEST = "jaxnn"
_FORMAT = 1  # the manifest's layout; a change that old checkpoints cannot follow bumps it

PathLike = str | os.PathLike[str]


class Restored(NamedTuple):
    """What :func:`restore` returns."""

    train_state: Any  # a pytree with exactly the structure of `like`, the saved arrays
    config: dict[str, Any]  # the run's configuration as saved ({} when none was)
    extra: dict[str, Any]  # the extra JSON as saved ({} when none was)
    step: int  # the checkpoint's step


class _Leaf(NamedTuple):
    path: str  # "params/dense_0/w"
    parts: tuple[str, ...]  # ("params", "dense_0", "w")
    value: Any  # the leaf as in the tree (a typed key stays typed)
    shape: tuple[int, ...]
    dtype: str  # str(dtype): "float32", "key<fry>"


def save(
    directory: PathLike,
    train_state: Any,
    *,
    step: int,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep: int | None = 3,
) -> pathlib.Path:
    """Save ``train_state``, the run's ``config`` and ``extra`` as the checkpoint ``step``.

    Args:
      directory: the run's checkpoint root, created if needed; one subdirectory per step.
      train_state: a pytree of arrays (``jax.Array`` or NumPy), e.g. a ``TrainState(params,
        state, opt_state, step, key)``; typed PRNG keys are allowed anywhere in it.
      step: ``>= 0`` and greater than every step already in ``directory`` (an epoch number or
        a step count, the caller's choice).
      config: the run's configuration, JSON-serialisable (tuples come back as lists).
      extra: anything else JSON can hold, e.g. the metrics history.
      keep: how many checkpoints to keep, the newest; ``None`` keeps all.

    Returns:
      The committed checkpoint's directory, ``directory/step``.

    Raises:
      ValueError: ``step`` is not after the latest saved step, ``keep < 1``, two paths of the
        tree coincide, or ``config``/``extra`` is not JSON-serialisable.
      TypeError: a leaf of ``train_state`` is not an array, or ``config``/``extra`` is not a
        mapping.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}.")
    step = int(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 (or None to keep all), got {keep!r}.")
    config_json = _json_object(config, "config")
    extra_json = _json_object(extra, "extra")
    leaves = _leaves(train_state, "train_state", abstract=False)
    arrays: dict[str, Any] = {}
    for leaf in leaves:
        value = jax.random.key_data(leaf.value) if _is_key(leaf.value) else leaf.value
        _nest(arrays, leaf.parts, value)
    manifest = {
        "format": _FORMAT,
        "leaves": {leaf.path: {"shape": list(leaf.shape), "dtype": leaf.dtype} for leaf in leaves},
        "key_impls": {
            leaf.path: str(jax.random.key_impl(leaf.value))
            for leaf in leaves
            if _is_key(leaf.value)
        },
    }

    import orbax.checkpoint as ocp

    directory = _absolute(directory)
    # cleanup_tmp_directories: a save that was killed leaves `<step>.orbax-checkpoint-tmp-*`
    # behind (never listed as a step); the next save's manager removes it.
    with _manager(directory, max_to_keep=keep, cleanup_tmp_directories=True) as mngr:
        latest = mngr.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"Cannot save step {step} in {directory}: it holds checkpoints up to step "
                f"{latest} (steps {mngr.all_steps()}), and a checkpoint's step must be greater "
                f"than every saved one. Resume from step {latest} with restore(), or give this "
                f"run its own directory."
            )
        saved = mngr.save(
            step,
            args=ocp.args.Composite(
                **{
                    _ARRAYS: ocp.args.StandardSave(arrays),
                    _CONFIG: ocp.args.JsonSave(config_json),
                    _EXTRA: ocp.args.JsonSave(extra_json),
                    _MANIFEST: ocp.args.JsonSave(manifest),
                }
            ),
        )
        mngr.wait_until_finished()
    if not saved:  # orbax's save policy skipped the step: never leave that unnoticed
        raise RuntimeError(f"orbax did not save step {step} in {directory} (it returned False).")
    return directory / str(step)


def all_steps(directory: PathLike) -> list[int]:
    """The steps of the committed checkpoints in ``directory``, ascending; ``[]`` if none.

    A checkpoint whose save did not finish is not listed.
    """
    directory = _absolute(directory)
    if not directory.is_dir():
        return []
    with _manager(directory) as mngr:
        return sorted(int(s) for s in mngr.all_steps())


def latest_step(directory: PathLike) -> int | None:
    """The newest committed checkpoint's step in ``directory``, ``None`` if there is none."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def restore(directory: PathLike, like: Any, *, step: int | None = None) -> Restored:
    """Restore the checkpoint ``step`` (default: the latest) into the structure of ``like``.

    Args:
      directory: the run's checkpoint root, as given to :func:`save`.
      like: a pytree with the structure, shapes and dtypes of the saved ``train_state``, e.g.
        the freshly initialised state of the same network and optimizer. Its leaves may be
        arrays or ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of the initialisation); only
        their shapes, dtypes and shardings are used. Each array is restored with the
        sharding of its leaf in ``like`` (the default device for NumPy arrays and
        ``ShapeDtypeStruct`` without one).
      step: the checkpoint to restore; ``None`` restores the latest.

    Returns:
      ``Restored(train_state, config, extra, step)``; ``train_state`` has exactly the tree
      structure of ``like`` (NamedTuple types, empty dicts, ``None`` nodes) and the saved
      arrays, bit for bit, with the saved dtypes; typed PRNG keys are typed keys again.

    Raises:
      FileNotFoundError: ``directory`` holds no checkpoint, or none for ``step``.
      ValueError: the checkpoint does not match ``like``: every missing or unexpected path,
        differing shape and dtype is listed, with the saved run's configuration. Or it was
        not written by :func:`save`.
      TypeError: a leaf of ``like`` is neither an array nor a ``jax.ShapeDtypeStruct``.
    """
    directory = _absolute(directory)
    steps = all_steps(directory)
    if not steps:
        what = "does not exist" if not directory.exists() else "holds no committed checkpoint"
        raise FileNotFoundError(
            f"No checkpoint to restore: {directory} {what}. Check the path (a run's checkpoints "
            f"are where save() was given), or start the run without restoring."
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step!r} in {directory}; its steps are {steps}. Restore "
            f"one of those, or step=None for the latest ({steps[-1]})."
        )
    expected = _leaves(like, "like", abstract=True)

    import orbax.checkpoint as ocp

    with _manager(directory) as mngr:
        try:
            meta = mngr.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        _MANIFEST: ocp.args.JsonRestore(),
                        _CONFIG: ocp.args.JsonRestore(),
                        _EXTRA: ocp.args.JsonRestore(),
                    }
                ),
            )
        except KeyError as e:  # orbax: 'Item "config" was not found in the checkpoint'
            raise ValueError(
                f"{directory / str(step)} is an orbax checkpoint but not one of jaxnn's ({e}): "
                f"it lacks the items {_ARRAYS}, {_CONFIG}, {_EXTRA}, {_MANIFEST} that "
                f"jaxnn.checkpoint.save writes. Restore it with the program that saved it."
            ) from None
        manifest, config, extra = meta[_MANIFEST], meta[_CONFIG], meta[_EXTRA]
        if manifest.get("format") != _FORMAT:
            raise ValueError(
                f"The checkpoint {directory / str(step)} has manifest format "
                f"{manifest.get('format')!r}; this jaxnn reads format {_FORMAT}. Restore it "
                f"with the jaxnn version that saved it."
            )
        _check(manifest["leaves"], expected, directory / str(step), config)

        key_impls = manifest["key_impls"]
        default = _default_sharding()
        target: dict[str, Any] = {}
        for leaf in expected:
            abstract = _stored_abstract(leaf.value, default)
            _nest(target, leaf.parts, abstract)
        arrays = mngr.restore(
            step, args=ocp.args.Composite(**{_ARRAYS: ocp.args.StandardRestore(target)})
        )[_ARRAYS]

    values = []
    for leaf in expected:
        value = arrays
        for part in leaf.parts:
            value = value[part]
        if leaf.path in key_impls:
            value = jax.random.wrap_key_data(value, impl=key_impls[leaf.path])
        values.append(value)
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), values)
    return Restored(restored, config, extra, int(step))


# --- helpers -------------------------------------------------------------------------------


def _manager(directory: pathlib.Path, **options: Any):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, **options),
    )


def _absolute(directory: PathLike) -> pathlib.Path:
    # orbax requires an absolute path (it resolves steps by string prefixes).
    return pathlib.Path(directory).expanduser().absolute()


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _part(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _leaves(tree: Any, name: str, *, abstract: bool) -> list[_Leaf]:
    """The leaves of ``tree`` with their paths; arrays only (``abstract``: or shape structs)."""
    kinds = (jax.Array, np.ndarray, np.generic) + ((jax.ShapeDtypeStruct,) if abstract else ())
    leaves = []
    seen: dict[str, str] = {}
    for keys, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = name + jax.tree_util.keystr(keys)
        parts = tuple(_part(k) for k in keys)
        path = "/".join(parts)
        if not parts:
            raise TypeError(
                f"{name} is a single {type(value).__name__}: a checkpoint holds a tree of arrays "
                f"(e.g. a TrainState), each named by its path."
            )
        if path in seen:
            raise ValueError(
                f"{where} and {seen[path]} would both be stored as {path!r}: use dicts with "
                f"distinct str keys without '/'."
            )
        seen[path] = where
        if not isinstance(value, kinds):
            what = "an array or a jax.ShapeDtypeStruct" if abstract else "an array"
            raise TypeError(
                f"{name}/{path} is a {type(value).__name__}, not {what}: a checkpoint holds "
                f"arrays. Convert it with jnp.asarray(value, dtype=...), so its dtype is explicit."
            )
        leaves.append(_Leaf(path, parts, value, tuple(value.shape), str(value.dtype)))
    return leaves


def _nest(tree: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _json_object(value: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping (a dict), got {type(value).__name__}.")
    value = dict(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must be JSON-serialisable (str keys; numbers, strings, lists, dicts, None), "
            f"but {e}. Convert arrays with .tolist() and other objects to str."
        ) from None
    return value


def _default_sharding() -> jax.sharding.Sharding:
    # The device jax puts a new array on (honours `jax.default_device`).
    return jax.numpy.zeros(()).sharding


def _stored_abstract(leaf: Any, default: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    """How ``leaf``'s array is stored: shape, dtype and the sharding to restore it with."""
    if _is_key(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        if isinstance(leaf, jax.Array):
            sharding = jax.random.key_data(leaf).sharding
        else:  # a ShapeDtypeStruct: its sharding covers the key's axes, the data has one more
            sharding = getattr(leaf, "sharding", None) or default
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):  # NumPy arrays, bare ShapeDtypeStruct
        sharding = default
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)


def _check(
    saved: Mapping[str, Any], expected: list[_Leaf], where: pathlib.Path, config: Any
) -> None:
    """Raise a ValueError listing every difference between the saved and expected leaves."""
    want = {leaf.path: leaf for leaf in expected}
    problems = []
    for path, leaf in want.items():
        if path not in saved:
            problems.append(
                f"{path}: expected {leaf.dtype}{list(leaf.shape)}, not in the checkpoint"
            )
            continue
        shape, dtype = tuple(saved[path]["shape"]), saved[path]["dtype"]
        if shape != leaf.shape:
            problems.append(f"{path}: shape {shape} saved, {leaf.shape} expected")
        if dtype != leaf.dtype:
            problems.append(f"{path}: dtype {dtype} saved, {leaf.dtype} expected")
    for path, info in saved.items():
        if path not in want:
            problems.append(
                f"{path}: {info['dtype']}{info['shape']} in the checkpoint, not expected "
                f"(no such leaf in `like`)"
            )
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(
            f"The checkpoint {where} does not match the expected train state (`like`): "
            f"{len(problems)} difference(s):\n  {listing}\n"
            f"Restore into a state built with the same network and optimizer configuration as "
            f"the saved run, whose config is: {json.dumps(config, sort_keys=True)}"
        )
