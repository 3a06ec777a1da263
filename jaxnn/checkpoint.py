"""Checkpoints of a training run through orbax-checkpoint: save, list, restore and check.

A checkpoint folder (the run's checkpoint root) holds one checkpoint per ``step``, a number
of the caller's choosing (an epoch or a step count)::

    directory/
      1/               a step: named by its number, holding jaxnn's manifest jaxnn/
        train_state/   the arrays: params, state, opt_state, step, key (orbax StandardSave)
        config/        the run's configuration (JSON)
        extra/         anything else JSON can hold, e.g. the metrics history
        jaxnn/         the manifest: every array's path, shape and dtype; the PRNG key impls
        _CHECKPOINT_METADATA   orbax's record of the items and the commit time
      2/
      5.damaged/       a damaged step moved out of the way by set_aside(): kept, never listed
      ...

**The folder belongs to the checkpoints.** A step is a folder whose name is the step as
``str(step)`` writes it *and* that holds ``jaxnn/``, which orbax commits atomically with the
rest of the step: a numbered folder of the user's (``2024/``, ``7/notes.txt``) is no step.
jaxnn deletes only what it wrote: the steps beyond ``keep`` (the oldest), and the leftovers
of a killed save (``<step>.orbax-checkpoint-tmp*``, orbax's temporary folders) or of a killed
deletion (``<step>.jaxnn-deleting``). Anything else in the folder makes :func:`prepare` and
:func:`save` raise before they write anything, naming it, so that a mistyped path (a home
folder, a data folder) loses nothing; the same checks find a file where the folder should be
and a folder that cannot be read or written.

What orbax gives (its ``Checkpointer`` with a ``CompositeCheckpointHandler``):

* **Atomic commits.** A checkpoint is written into a temporary folder
  (``2.orbax-checkpoint-tmp-*``) and renamed to ``2/`` only when complete, so a process
  killed while saving leaves the previous checkpoints intact and loadable; the next
  :func:`save` removes the unfinished folder.
* **Sharded arrays across hosts.** Each host writes its shards of a ``jax.Array``; restoring
  places the shards as the shardings of ``like``'s arrays say (a ``jax.Array`` or a
  ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``). With several hosts, every host calls
  :func:`save` and :func:`restore` with the same arguments (after ``jax.distributed.initialize``)
  and ``directory`` must be on a file system that all of them mount (jaxnn takes local paths,
  not ``gs://`` URLs); orbax coordinates them, and process 0 deletes old steps and leftovers.
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
* **No silent skips.** A step that is not after the latest saved one raises.
* **Damage is named.** A step that jaxnn committed but that can no longer be read raises
  :class:`CheckpointDamaged`: the step's folder, the reason in one line, the steps to fall
  back to. ``restore(..., fallback=True)`` takes the newest intact step instead, and
  :func:`set_aside` moves a damaged step out of the way so that its number can be saved again.

What counts as damage is what fails to read: orbax's and tensorstore's checks, jaxnn's of its
JSON items, and a read of the arrays' OCDBT index before orbax reads the arrays. Tried with
orbax-checkpoint 0.11.17 and 0.12.8, **detected**: a deleted or truncated file that a restore
reads (``train_state/manifest.ocdbt``, a b-tree node under ``train_state/d/``, an array's data
file); a changed byte in ``manifest.ocdbt`` or in a b-tree node (both carry CRC-32C checksums),
which covers the values of small arrays, kept inside the nodes (up to 1 KiB as stored: orbax's
``max_inline_value_bytes``); ``train_state/``'s
``_METADATA`` or ``array_metadatas/`` made invalid JSON; a deleted item folder; a deleted or
invalid ``metadata`` file of ``jaxnn/``, ``config/`` or ``extra/``. **Not detected**: a changed
byte inside the values of a larger array (its data file under ``train_state/ocdbt.process_*/d/``
has no checksum): the array restores with other values, unless the change breaks the
compressed stream's framing (a changed first byte did). Files that a restore does not read
(``_CHECKPOINT_METADATA``, ``train_state/_sharding``, the per-process copies of the index under
``train_state/ocdbt.process_*/``) may change without effect.

Saves are synchronous: when :func:`save` returns, the checkpoint is committed. A restored
array has the saved bits and dtype, so a run resumed from a checkpoint continues exactly as
the uninterrupted run would have.

Example::

    ts = TrainState.create(network, optimizer, jax.random.key(0), (128, 784))
    checkpoint.prepare("runs/a/ckpt")  # before training: a bad folder fails now, not later
    ...  # train
    checkpoint.save("runs/a/ckpt", ts, step=epoch, config=config, extra={"history": history})
    ...  # later, or after a crash
    fresh = TrainState.create(network, optimizer, jax.random.key(0), (128, 784))
    restored = checkpoint.restore("runs/a/ckpt", like=fresh, fallback=True)
    ts, config, extra, epoch = restored.train_state, restored.config, restored.extra, restored.step
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pathlib
import re
import secrets
import shutil
import stat
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxnn import _trees

__all__ = [
    "CheckpointDamaged",
    "Restored",
    "all_steps",
    "latest_step",
    "prepare",
    "restore",
    "save",
    "set_aside",
]

# orbax is imported inside the functions: it adds ~0.2 s to `import jaxnn` otherwise.

_ARRAYS = "train_state"  # the composite checkpoint's items
_CONFIG = "config"
_EXTRA = "extra"
_MANIFEST = "jaxnn"  # also the mark of a jaxnn step: a step folder holds it
_FORMAT = 1  # the manifest's layout; a change that old checkpoints cannot follow bumps it

# The names in a checkpoint folder that are jaxnn's (or orbax's on its behalf), besides steps.
_ORBAX_TMP = re.compile(r"[0-9]+\.orbax-checkpoint-tmp.*")  # a save that did not finish
_DELETING = re.compile(r"[0-9]+\.jaxnn-deleting")  # a pruned step being deleted
_SET_ASIDE = re.compile(r"[0-9]+\.damaged(-[0-9]+)?")  # set_aside(); jaxnn/ inside
_WRITE_CHECK = ".jaxnn-write-check-"  # prepare()'s probe file (left only by a killed process)
_REASON_CHARS = 200
# What a step folder holds: jaxnn's items, and orbax's commit records (its metadata files are
# named in capitals, `_CHECKPOINT_METADATA`); a step holding anything else is not deleted.
_STEP_ENTRIES = {_ARRAYS, _CONFIG, _EXTRA, _MANIFEST, "commit_success.txt"}
_ORBAX_METADATA = re.compile(r"_[A-Z_]+")

PathLike = str | os.PathLike[str]


class Restored(NamedTuple):
    """What :func:`restore` returns."""

    train_state: Any  # a pytree with exactly the structure of `like`, the saved arrays
    config: dict[str, Any]  # the run's configuration as saved ({} when none was)
    extra: dict[str, Any]  # the extra JSON as saved ({} when none was)
    step: int  # the checkpoint's step
    skipped: tuple[tuple[int, str], ...] = ()  # fallback=True: newer damaged (step, reason)


class CheckpointDamaged(ValueError):
    """A step that jaxnn committed but whose files can no longer be read back.

    Raised by :func:`restore` for any failure while reading a jaxnn step's manifest, config,
    extra or arrays (invalid JSON, a missing or truncated file, a checksum error), but not for
    a step that does not match ``like`` (a plain ``ValueError``: the same for every step).

    Attributes:
      directory: the checkpoint folder.
      step: the damaged step (with ``fallback=True`` and no step intact: the newest).
      reason: one line, at most ~200 characters: the item that failed, the error's type and
        the first line of its message, shortened.
      steps: every step in ``directory``, ascending, the damaged ones included.
      none_intact: ``True`` when ``restore(..., fallback=True)`` found no step intact.
    """

    def __init__(
        self,
        directory: PathLike,
        step: int,
        reason: str,
        steps: list[int],
        none_intact: bool = False,
    ) -> None:
        self.directory = pathlib.Path(directory)
        self.step = int(step)
        self.reason = reason
        self.steps = list(steps)
        self.none_intact = none_intact
        where = self.directory / str(self.step)
        if none_intact:
            fix = (
                f"None of the steps {self.steps} in {self.directory} is intact. Set them aside "
                f"with set_aside(directory, step) and start the run afresh."
            )
        elif len(self.steps) > 1:
            fix = (
                f"Restore an earlier step (steps: {self.steps}) with step=K, or fallback=True "
                f"to take the newest intact one; set_aside(directory, {self.step}) moves this "
                f"one out of the way so that step {self.step} can be saved again."
            )
        else:
            fix = (
                f"It is the only step in {self.directory}: set it aside with "
                f"set_aside(directory, {self.step}) and start the run afresh."
            )
        super().__init__(
            f"The checkpoint {where} is damaged ({reason}): its files were changed or lost "
            f"after jaxnn committed it. {fix}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (across processes) with its fields
        return (type(self), (self.directory, self.step, self.reason, self.steps, self.none_intact))


class _Leaf(NamedTuple):
    path: str  # "params/dense_0/w"
    parts: tuple[str, ...]  # ("params", "dense_0", "w")
    value: Any  # the leaf as in the tree (a typed key stays typed)
    shape: tuple[int, ...]
    dtype: str  # str(dtype): "float32", "key<fry>"


class _Listing(NamedTuple):
    """What a checkpoint folder holds, by kind (names relative to the folder)."""

    steps: list[int]  # ascending
    set_aside: list[str]  # "5.damaged"
    leftovers: list[str]  # unfinished saves and deletions, to remove
    foreign: dict[str, str]  # name -> how to describe it ("7/ (a folder without ...)")


def prepare(directory: PathLike) -> list[int]:
    """Make ``directory`` ready for checkpoints, or say now why it cannot be; its steps.

    Creates the folder (and its parents) if needed, and checks, before anything is written to
    it, that it is a folder, that it holds nothing but jaxnn's checkpoints (steps, steps set
    aside, leftovers of killed saves), and then that it can be written (a probe file is created
    and removed). :func:`save` runs the same checks; a training program calls this before its
    first epoch, so that every problem with the folder shows before any time is spent.

    Args:
      directory: the run's checkpoint folder.

    Returns:
      The steps already in ``directory``, ascending (``[]`` for a new folder).

    Raises:
      NotADirectoryError: ``directory``, or a folder on its path, is a file.
      PermissionError: ``directory`` cannot be created, read or written.
      ValueError: ``directory`` holds entries that jaxnn did not write (listed): checkpoints
        need a folder of their own, since keeping the last N deletes old steps.
      OSError: another file-system error (a read-only file system, a full disk).
    """
    return _prepare(_absolute(directory)).steps


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
      directory: the run's checkpoint folder, created if needed; one subfolder per step. It
        must hold nothing else (see :func:`prepare`, whose checks run first).
      train_state: a pytree of arrays (``jax.Array`` or NumPy), e.g. a ``TrainState(params,
        state, opt_state, step, key)``; typed PRNG keys are allowed anywhere in it.
      step: ``>= 0`` and greater than every step already in ``directory`` (an epoch number or
        a step count, the caller's choice).
      config: the run's configuration, JSON-serialisable (tuples come back as lists).
      extra: anything else JSON can hold, e.g. the metrics history.
      keep: how many steps to keep, the newest; ``None`` keeps all. Only steps are deleted
        (never steps set aside with :func:`set_aside`, never anything jaxnn did not write).

    Returns:
      The committed checkpoint's folder, ``directory/step``.

    Raises:
      ValueError: ``step`` is not after the latest saved step, ``keep < 1``, two paths of the
        tree coincide, ``config``/``extra`` is not JSON-serialisable, or ``directory`` holds
        entries that jaxnn did not write (nothing is written then).
      TypeError: a leaf of ``train_state`` is not an array, or ``config``/``extra`` is not a
        mapping.
      NotADirectoryError, PermissionError, OSError: as :func:`prepare`.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}.")
    step = int(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 (or None to keep all), got {keep!r}.")
    config_json = _json_object(config, "config")
    extra_json = _json_object(extra, "extra")
    arrays, manifest = _stored(train_state)

    directory = _absolute(directory)
    listing = _prepare(directory)
    if listing.steps and step <= listing.steps[-1]:
        latest = listing.steps[-1]
        raise ValueError(
            f"Cannot save step {step} in {directory}: it holds checkpoints up to step "
            f"{latest} (steps {listing.steps}), and a checkpoint's step must be greater "
            f"than every saved one. Resume from step {latest} with restore(), or give this "
            f"run its own directory."
        )

    import orbax.checkpoint as ocp

    # One process deletes (the others would race it on a shared file system); orbax's own
    # primary host is process 0 too.
    primary = jax.process_index() == 0
    if primary:
        for name in listing.leftovers:
            _remove(directory / name)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        checkpointer.save(
            directory / str(step),
            args=ocp.args.Composite(
                **{
                    _ARRAYS: ocp.args.StandardSave(arrays),
                    _CONFIG: ocp.args.JsonSave(config_json),
                    _EXTRA: ocp.args.JsonSave(extra_json),
                    _MANIFEST: ocp.args.JsonSave(manifest),
                }
            ),
        )
    finally:
        checkpointer.close()
    if keep is not None and primary:
        for old in [*listing.steps, step][:-keep]:
            _delete_step(directory, old, saved=step, keep=keep)
    return directory / str(step)


def all_steps(directory: PathLike) -> list[int]:
    """The steps of the committed checkpoints in ``directory``, ascending; ``[]`` if none.

    Only jaxnn's steps count (a numbered folder holding ``jaxnn/``): not a save that did not
    finish, not a step set aside, not a folder of the user's. A missing ``directory`` has no
    steps (and is not created).

    Raises:
      NotADirectoryError: ``directory``, or a folder on its path, is a file.
      PermissionError: ``directory``, a folder above it or a step in it cannot be read.
    """
    directory = _absolute(directory)
    if not _existing_folder(directory):
        return []
    return _scan(directory).steps


def latest_step(directory: PathLike) -> int | None:
    """The newest committed checkpoint's step in ``directory``, ``None`` if there is none.

    Raises:
      NotADirectoryError, PermissionError: as :func:`all_steps`.
    """
    steps = all_steps(directory)
    return steps[-1] if steps else None


def restore(
    directory: PathLike, like: Any, *, step: int | None = None, fallback: bool = False
) -> Restored:
    """Restore the checkpoint ``step`` (default: the latest) into the structure of ``like``.

    Args:
      directory: the run's checkpoint folder, as given to :func:`save`.
      like: a pytree with the structure, shapes and dtypes of the saved ``train_state``, e.g.
        the freshly initialised state of the same network and optimizer. Its leaves may be
        arrays or ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of the initialisation); only
        their shapes, dtypes and shardings are used. Each array is restored with the
        sharding of its leaf in ``like`` (the default device for NumPy arrays and
        ``ShapeDtypeStruct`` without one).
      step: the checkpoint to restore; ``None`` restores the latest.
      fallback: with ``step=None``, if the latest step is damaged, restore the newest intact
        one (the damaged newer ones are listed in ``skipped``). A step that does not match
        ``like`` is not skipped: that error is raised (the other steps of the run would not
        match either).

    Returns:
      ``Restored(train_state, config, extra, step, skipped)``; ``train_state`` has exactly the
      tree structure of ``like`` (NamedTuple types, empty dicts, ``None`` nodes) and the saved
      arrays, bit for bit, with the saved dtypes; typed PRNG keys are typed keys again.
      ``skipped`` holds ``(step, reason)`` of each newer damaged step (``fallback=True``).

    Raises:
      FileNotFoundError: ``directory`` holds no checkpoint, or none for ``step``.
      CheckpointDamaged: the step cannot be read back (with ``fallback=True``: no step can).
      ValueError: the checkpoint does not match ``like``: every missing or unexpected path,
        differing shape and dtype is listed, with the saved run's configuration. Or the
        folder holds no jaxnn checkpoint but other things, or a newer jaxnn's format, or
        ``step`` and ``fallback=True`` are both given.
      TypeError: a leaf of ``like`` is neither an array nor a ``jax.ShapeDtypeStruct``.
      NotADirectoryError, PermissionError: as :func:`all_steps`; also for a step's file that
        cannot be read.
    """
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0
    ):
        raise ValueError(f"step must be an int >= 0 or None (the latest), got {step!r}.")
    if step is not None:
        step = int(step)
    if step is not None and fallback:
        raise ValueError(
            f"restore got step={step} and fallback=True: fallback picks the newest intact step "
            f"itself. Give step=K for that step, or fallback=True alone."
        )
    expected = _leaves(like, "like", abstract=True)
    directory = _absolute(directory)
    exists = _existing_folder(directory)
    listing = _scan(directory) if exists else _Listing([], [], [], {})
    steps = listing.steps
    if step is not None and str(step) in listing.foreign:
        raise ValueError(
            f"{directory / str(step)} is no checkpoint of jaxnn's: "
            f"{listing.foreign[str(step)]}. The steps in {directory} are {steps}."
        )
    if not steps:
        if listing.foreign:
            raise ValueError(
                f"No checkpoint of jaxnn's to restore in {directory}: it holds "
                f"{_describe(listing.foreign)}. Restore from the folder that save() wrote to."
            )
        what = "does not exist" if not exists else "holds no committed checkpoint"
        aside = (
            f" (only steps set aside as damaged: {', '.join(listing.set_aside)})"
            if listing.set_aside
            else ""
        )
        raise FileNotFoundError(
            f"No checkpoint to restore: {directory} {what}{aside}. Check the path (a run's "
            f"checkpoints are where save() was given), or start the run without restoring."
        )
    if step is not None and step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step!r} in {directory}; its steps are {steps}. Restore "
            f"one of those, or step=None for the latest ({steps[-1]})."
        )
    if not fallback:
        return _restore_step(directory, steps[-1] if step is None else step, steps, expected, like)
    skipped: list[tuple[int, str]] = []
    for candidate in reversed(steps):
        try:
            restored = _restore_step(directory, candidate, steps, expected, like)
        except CheckpointDamaged as e:
            skipped.append((candidate, e.reason))
            continue
        return restored._replace(skipped=tuple(skipped))
    raise CheckpointDamaged(directory, steps[-1], skipped[0][1], steps, none_intact=True)


def set_aside(directory: PathLike, step: int) -> pathlib.Path:
    """Move the damaged step ``step`` out of the way: rename it ``<step>.damaged``.

    The folder is kept (its files may still be of use) but is no longer a step: it is not
    listed, restored or deleted, and the step's number can be saved again. If
    ``<step>.damaged`` is taken, ``<step>.damaged-2``, ``-3``, ... is used. With several
    hosts, call it on one of them.

    Args:
      directory: the run's checkpoint folder.
      step: a step in ``directory`` (see :func:`all_steps`).

    Returns:
      The step's new folder, ``directory/<step>.damaged``.

    Raises:
      ValueError: ``step`` is not a step in ``directory``.
      NotADirectoryError, PermissionError: as :func:`all_steps`.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}.")
    step = int(step)
    directory = _absolute(directory)
    listing = _scan(directory) if _existing_folder(directory) else _Listing([], [], [], {})
    if step not in listing.steps:
        what = (
            f"{directory / str(step)} is {listing.foreign[str(step)]}"
            if str(step) in listing.foreign
            else f"{directory} has no step {step}"
        )
        raise ValueError(
            f"Cannot set aside step {step}: {what}, and set_aside moves only jaxnn's own "
            f"steps. The steps in {directory} are {listing.steps}."
        )
    target = directory / f"{step}.damaged"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = directory / f"{step}.damaged-{n}"
    try:
        os.rename(directory / str(step), target)
    except OSError as e:
        raise type(e)(
            f"Cannot set aside {directory / str(step)} (rename it {target.name}): "
            f"{e.strerror or e}. jaxnn needs to write in its checkpoint folder: fix its "
            f"permissions, or rename the step folder yourself."
        ) from e
    return target


# --- the checkpoint folder -----------------------------------------------------------------


def _absolute(directory: PathLike) -> pathlib.Path:
    # orbax requires an absolute path (it resolves steps by string prefixes).
    return pathlib.Path(directory).expanduser().absolute()


def _fix(path: PathLike, *, recursive: bool = True) -> str:
    chmod = f"chmod -R u+rwX {path}" if recursive else f"chmod u+rwx {path}"
    return (
        f"jaxnn needs to read and write its checkpoint folder: fix the permissions (e.g. "
        f"{chmod}), or give another folder."
    )


def _existing_folder(directory: pathlib.Path) -> bool:
    """Whether ``directory`` exists (False if it does not); raises if it is not a folder."""
    try:
        mode = os.stat(directory).st_mode
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        file = next(
            (p for p in reversed(directory.parents) if _stats(p) and not p.is_dir()),
            directory.parent,
        )
        raise NotADirectoryError(
            f"The checkpoint folder {directory} cannot exist: {file} on its path is a file, not "
            f"a folder. Give a path whose parents are folders."
        ) from None
    except PermissionError:
        blocked = next((p for p in directory.parents if _stats(p)), directory.anchor)
        raise PermissionError(
            f"Cannot reach the checkpoint folder {directory}: permission denied in {blocked}, "
            f"a folder on its path. {_fix(blocked, recursive=False)}"
        ) from None
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(
            f"The checkpoint folder {directory} is a file, not a folder: checkpoints are "
            f"folders, one per step, in a folder of their own. Give the path of a folder (a new "
            f"one is created)."
        )
    return True


def _stats(path: pathlib.Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def _is_folder(path: pathlib.Path, directory: pathlib.Path) -> bool:
    """Whether ``path`` (inside the checkpoint folder) is a folder; raises if unreadable."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        raise PermissionError(
            f"Cannot read {path.parent} in the checkpoint folder {directory}: permission "
            f"denied. {_fix(path.parent)}"
        ) from None


def _scan(directory: pathlib.Path) -> _Listing:
    """Sort the entries of the existing folder ``directory`` into steps, jaxnn's and foreign."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except PermissionError:
        raise PermissionError(
            f"Cannot list the checkpoint folder {directory}: permission denied. {_fix(directory)}"
        ) from None
    steps, set_aside, leftovers, foreign = [], [], [], {}
    for entry in entries:
        name, path = entry.name, directory / entry.name
        if entry.is_symlink():
            foreign[name] = f"{name} (a link)"
        elif not entry.is_dir(follow_symlinks=False):
            if not name.startswith(_WRITE_CHECK):
                foreign[name] = name
        elif name.isascii() and name.isdigit() and str(int(name)) == name:
            if _is_folder(path / _MANIFEST, directory):
                steps.append(int(name))
            elif os.path.lexists(path / "_CHECKPOINT_METADATA"):
                foreign[name] = (
                    f"{name}/ (an orbax checkpoint not written by jaxnn.checkpoint.save, or one "
                    f"whose {_MANIFEST}/ manifest was removed)"
                )
            else:
                foreign[name] = f"{name}/ (a folder without jaxnn's manifest {_MANIFEST}/)"
        elif _ORBAX_TMP.fullmatch(name) or _DELETING.fullmatch(name):
            leftovers.append(name)
        elif _SET_ASIDE.fullmatch(name) and _is_folder(path / _MANIFEST, directory):
            set_aside.append(name)
        else:
            foreign[name] = f"{name}/"
    return _Listing(sorted(steps), set_aside, leftovers, foreign)


def _describe(foreign: Mapping[str, str], most: int = 5) -> str:
    shown = list(foreign.values())[:most]
    more = len(foreign) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _prepare(directory: pathlib.Path) -> _Listing:
    if not _existing_folder(directory):
        try:
            os.makedirs(directory, exist_ok=True)
        except PermissionError:
            parent = next((p for p in directory.parents if _stats(p)), directory.anchor)
            raise PermissionError(
                f"Cannot create the checkpoint folder {directory}: permission denied in "
                f"{parent}. {_fix(parent, recursive=False)}"
            ) from None
        except OSError as e:
            raise type(e)(
                f"Cannot create the checkpoint folder {directory}: {e.strerror or e}. Give a "
                f"folder on a file system that can be written."
            ) from e
    listing = _scan(directory)
    if listing.foreign:
        n = len(listing.foreign)
        raise ValueError(
            f"The checkpoint folder {directory} holds {n} entr{'y' if n == 1 else 'ies'} that "
            f"jaxnn did not write: {_describe(listing.foreign)}. Checkpoints need a folder of "
            f"their own (keeping the last N deletes old steps, and jaxnn deletes only what it "
            f"wrote): give the checkpoints a folder of their own, e.g. {directory / 'ckpt'}, or "
            f"move these entries out."
        )
    probe = directory / f"{_WRITE_CHECK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except PermissionError:
        raise PermissionError(
            f"Cannot write in the checkpoint folder {directory}: permission denied. "
            f"{_fix(directory)}"
        ) from None
    except OSError as e:
        raise type(e)(
            f"Cannot write in the checkpoint folder {directory}: {e.strerror or e}. Give a "
            f"folder on a file system that can be written (with space left)."
        ) from e
    return listing


def _remove(path: pathlib.Path) -> None:
    """Remove a folder that jaxnn (or orbax for it) wrote; gone already is fine."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _delete_step(directory: pathlib.Path, step: int, *, saved: int, keep: int) -> None:
    """Delete the step ``step`` (pruning after ``saved`` was committed)."""
    path = directory / str(step)
    if not _is_folder(path / _MANIFEST, directory):  # checked again: delete only a step
        return
    strangers = sorted(
        name
        for name in os.listdir(path)
        if name not in _STEP_ENTRIES and not _ORBAX_METADATA.fullmatch(name)
    )
    if strangers:
        warnings.warn(
            f"Kept the old step {path} (keep={keep}): it holds {', '.join(strangers)}, which "
            f"jaxnn did not write, and jaxnn deletes only what it wrote. Move those out of the "
            f"step folder; the next save deletes the step.",
            UserWarning,
            stacklevel=3,
        )
        return
    # Renamed first, atomically: a deletion killed midway leaves `<step>.jaxnn-deleting`
    # (removed by the next save), never a step folder with part of its files.
    doomed = directory / f"{step}.jaxnn-deleting"
    try:
        if os.path.lexists(doomed):
            _remove(doomed)
        os.rename(path, doomed)
        _remove(doomed)
    except OSError as e:
        raise type(e)(
            f"Saved step {saved} in {directory}, but could not delete the old step {step} "
            f"(keep={keep}): {e.strerror or e}. Fix the permissions of {path}; the next save "
            f"deletes it."
        ) from e


# --- restoring one step --------------------------------------------------------------------


def _restore_step(
    directory: pathlib.Path, step: int, steps: list[int], expected: list[_Leaf], like: Any
) -> Restored:
    """Restore the jaxnn step ``step``; any failure to read it is a CheckpointDamaged."""
    import orbax.checkpoint as ocp

    where = directory / str(step)
    _check_readable(where)

    def damaged(item: str, error: BaseException) -> CheckpointDamaged:
        if _permission_problem(error):
            raise PermissionError(
                f"Cannot read the checkpoint {where}: permission denied "
                f"({_reason(error, where, item)}). {_fix(where)}"
            ) from None
        return CheckpointDamaged(directory, step, _reason(error, where, item), steps)

    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        meta = {}
        for item in (_MANIFEST, _CONFIG, _EXTRA):  # one by one: the reason names the item
            try:
                value = checkpointer.restore(
                    where, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
                )[item]
                if not isinstance(value, dict):
                    raise TypeError(f"a JSON {type(value).__name__}, not an object")
            except Exception as e:  # orbax raises JSONDecodeError, FileNotFoundError, KeyError
                raise damaged(item, e) from None
            meta[item] = value
        manifest, config, extra = meta[_MANIFEST], meta[_CONFIG], meta[_EXTRA]
        if isinstance(manifest.get("format"), int) and manifest["format"] != _FORMAT:
            raise ValueError(
                f"The checkpoint {where} has manifest format {manifest['format']!r}; this jaxnn "
                f"reads format {_FORMAT}. Restore it with the jaxnn version that saved it."
            )
        try:
            saved, key_impls = _manifest_contents(manifest)
        except (KeyError, TypeError, ValueError) as e:
            raise damaged(_MANIFEST, e) from None
        _check(saved, expected, where, config)  # a mismatch with `like` is no damage

        default = _default_sharding()
        target: dict[str, Any] = {}
        for leaf in expected:
            _nest(target, leaf.parts, _stored_abstract(leaf.value, default))
        try:
            _check_index(where / _ARRAYS)
        except Exception as e:  # tensorstore's ValueError, before orbax starts reading
            raise damaged(_ARRAYS, e) from None
        error = None
        try:
            arrays = checkpointer.restore(
                where, args=ocp.args.Composite(**{_ARRAYS: ocp.args.StandardRestore(target)})
            )[_ARRAYS]
            values = []
            for leaf in expected:
                value = arrays
                for part in leaf.parts:
                    value = value[part]
                if leaf.path in key_impls:
                    value = jax.random.wrap_key_data(value, impl=key_impls[leaf.path])
                values.append(value)
        except Exception as e:  # tensorstore's ValueError (checksums, truncation), KeyError
            error = damaged(_ARRAYS, e)
        if error is not None:
            # orbax leaves its other reads as abandoned coroutines, each of which prints a
            # tensorstore spec of ~2 KB ("Exception ignored in ...") when collected: collect
            # them here, where that noise is known to be the damage already reported.
            with _orbax_read_noise_silenced():
                gc.collect()
            raise error
    finally:
        with _orbax_read_noise_silenced():
            checkpointer.close()
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), values)
    return Restored(restored, config, extra, int(step))


@contextlib.contextmanager
def _orbax_read_noise_silenced() -> Iterator[None]:
    """Drop the "Exception ignored" reports of orbax's abandoned array reads (and of their
    closed event loop) while the block runs; any other unraisable exception is reported."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        where = repr(getattr(unraisable, "object", ""))
        message = str(getattr(unraisable, "exc_value", ""))
        if "_read_array_index_and_device_put" in where or "Event loop is closed" in message:
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _check_index(arrays: pathlib.Path) -> None:
    """Read the step's arrays once, one after the other, through tensorstore: the OCDBT index
    (checksummed b-tree) and every array's chunks, decoded.

    A damaged file then fails here, with one error, before orbax reads the arrays
    concurrently: when one of orbax's reads fails, the others are abandoned, and as each
    completes it reports its own error ("Event loop is closed", a ~2 KB tensorstore spec) at
    some later time, up to the interpreter's exit. The check reads the arrays' bytes a second
    time (a restore of the digits MLP takes ~10 ms more).
    """
    if not ((arrays / "d").is_dir() or any(arrays.glob("ocdbt.process_*"))):
        return  # not OCDBT (orbax writes it by default): orbax's restore says what fails
    if not (arrays / "manifest.ocdbt").is_file():
        raise FileNotFoundError(f"{_ARRAYS}/manifest.ocdbt, the index of the arrays, is missing")
    import tensorstore as ts

    base = {"driver": "file", "path": f"{arrays}/"}
    keys = {
        k.decode()
        for k in ts.KvStore.open({"driver": "ocdbt", "base": base}).result().list().result()
    }
    for key in sorted(keys):
        name, _, leaf = key.rpartition("/")
        if leaf in (".zarray", "zarr.json"):  # one array, zarr v2 or v3
            driver = "zarr" if leaf == ".zarray" else "zarr3"
            kvstore = {"driver": "ocdbt", "base": base, "path": f"{name}/"}
            ts.open({"driver": driver, "kvstore": kvstore}).result().read().result()


def _manifest_contents(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest's leaves and key impls, checked to be as save() writes them."""
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"no manifest format (got {manifest.get('format')!r})")
    saved, key_impls = manifest["leaves"], manifest["key_impls"]
    if not isinstance(saved, dict) or not isinstance(key_impls, dict):
        raise TypeError("leaves and key_impls are not JSON objects")
    for path, info in saved.items():
        if not (
            isinstance(info, dict)
            and isinstance(info.get("shape"), list)
            and all(isinstance(n, int) for n in info["shape"])
            and isinstance(info.get("dtype"), str)
        ):
            raise ValueError(f"the entry of {path!r} is {info!r}, not a shape and a dtype")
    return saved, key_impls


def _check_readable(where: pathlib.Path) -> None:
    """Raise a PermissionError (not damage) for a folder or file of the step we cannot read."""
    for root, folders, files in os.walk(where, onerror=_raise):
        for name in [*folders, *files]:
            path = os.path.join(root, name)
            if not os.access(path, os.R_OK | (os.X_OK if name in folders else 0)):
                raise PermissionError(
                    f"Cannot read the checkpoint {where}: permission denied on {path}. "
                    f"{_fix(where)}"
                )


def _raise(error: OSError) -> None:
    if isinstance(error, PermissionError):  # others: orbax's reading says what is missing
        raise PermissionError(
            f"Cannot read the checkpoint folder {error.filename}: permission denied. "
            f"{_fix(error.filename)}"
        ) from None


def _permission_problem(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, PermissionError) or "PERMISSION_DENIED" in str(error)[:200]:
            return True
        error = error.__cause__
    return False


_TENSORSTORE_NOISE = re.compile(
    r'Error opening "[a-z0-9_]+" driver: | in OCDBT database at local file "[^"]*"'
)


def _reason(error: BaseException, where: pathlib.Path, item: str = "") -> str:
    """One line of at most ~200 characters: ``item/: ErrorType: message``, shortened."""
    # orbax wraps tensorstore's error ("See full TensorStore details: ...") in a plain
    # Exception whose cause says what failed.
    if "See full TensorStore details" in str(error) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
        text = error.args[0]  # str(KeyError) is the repr of its message
    else:
        text = str(error)
    text = (text.strip().splitlines() or [""])[0]
    text = text.split(" [tensorstore_spec")[0].split(" See full TensorStore details")[0]
    text = _TENSORSTORE_NOISE.sub("", text).replace(f"{where}/", "")
    head = (f"{item}/: " if item else "") + type(error).__name__
    # tensorstore nests its messages outer to inner ("CODE: Error reading X: Error decoding
    # Y: checksum ..."): the code and the innermost parts say most, so the middle goes first.
    parts = text.split(": ") if text else []
    code = [parts.pop(0)] if len(parts) > 1 and re.fullmatch(r"[A-Z_]{3,}", parts[0]) else []
    cut = False
    while len(parts) > 1 and len(": ".join([head, *code, "…", *parts])) > _REASON_CHARS:
        parts.pop(0)
        cut = True
    reason = ": ".join([head, *code, *(["…"] if cut else []), *parts])
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 1] + "…"
    return reason


# --- trees ---------------------------------------------------------------------------------


def _stored(train_state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What :func:`save` stores of ``train_state``: its arrays nested under their paths (typed
    keys as their raw data), and the manifest (every leaf's shape and dtype, the key impls)."""
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
    return arrays, manifest


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _leaves(tree: Any, name: str, *, abstract: bool) -> list[_Leaf]:
    """The leaves of ``tree`` with their paths; arrays only (``abstract``: or shape structs)."""
    kinds = (jax.Array, np.ndarray, np.generic) + ((jax.ShapeDtypeStruct,) if abstract else ())
    leaves = []
    seen: dict[str, str] = {}
    for keys, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = name + jax.tree_util.keystr(keys)
        parts = tuple(_trees.part(k) for k in keys)
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
