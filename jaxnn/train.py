"""Training: a train state, a jit-compiled step, an epoch as one ``lax.scan``.

* :class:`TrainState` — params, state, optimizer state, step and the run's PRNG key: every
  array a run carries, nothing else (so it is donated, checkpointed and restored whole).
  ``TrainState.create(network, optimizer, key, input_shape)`` initialises one.
* :func:`make_train_step` — one update, ``step(ts, x, targets) -> (ts, loss)``.
* :func:`make_epoch` — one pass over shuffled minibatches as one compiled ``lax.scan``: the
  permutation is drawn from the state's key inside the compiled code, the data stays on the
  device, the state's buffers are donated.
* :func:`fit_full_batch` — many steps on one batch as one ``lax.scan`` (the worked example).

Epochs with validation, the best state and early stopping: :func:`jaxnn.fitting.fit`; the
network in eval mode: :func:`jaxnn.evaluation.evaluate` and :func:`jaxnn.evaluation.predict`;
the optimizer: any optax ``GradientTransformation``, or :func:`jaxnn.optim.sgd`.

Every function takes ``grad="autodiff" | "manual"``: the gradient is ``jax.grad`` of the
forward, or the hand-derived rules (:func:`jaxnn.backprop.value_and_grad`); a
:class:`~jaxnn.regularization.Penalty` is added to the loss on either path.

**Randomness.** ``ts.key`` is the run's key and never changes; what a step needs is derived
from it and ``ts.step``: the dropout key of update ``k`` is ``fold_in(fold_in(key, 0), k)``,
the permutation of the epoch that starts at update ``k`` is drawn from
``fold_in(fold_in(key, 1), k)``. So a run restored from a checkpoint at any update continues
bit for bit as the uninterrupted run would have.

**The ragged last minibatch.** With ``n`` examples and batch size ``B``, ``n mod B`` examples
are left over. ``remainder="drop"`` (the default) leaves them out of that epoch: every update
then sees ``B`` examples, so the gradient's noise and BatchNorm's batch statistics are the
same at every step, and since the permutation is new every epoch each example is left out
with probability ``(n mod B)/n`` per epoch, not forever (the choice of ``tf.data``'s
``drop_remainder`` and of Flax's examples). ``remainder="pad"`` runs one more update on the
leftover examples, padded to ``B`` and masked out of the loss
(:func:`jaxnn.losses.masked`) and out of BatchNorm's statistics (its ``mask``).

**Several devices.** :func:`make_epoch` (and :func:`~jaxnn.fitting.fit`,
:func:`~jaxnn.evaluation.evaluate`, :func:`~jaxnn.evaluation.predict`) take ``devices=`` (a
number, devices, or a mesh with a ``"batch"`` axis): the state and the data are replicated,
each minibatch is split over the devices, and ``jit`` adds the all-reduces; the gradient and
BatchNorm's statistics stay those of the whole minibatch (:mod:`jaxnn.parallel`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn import losses as _losses
from jaxnn import parallel as _parallel
from jaxnn._checks import all_finite, ensure_input_shape, refuse_float16, require
from jaxnn._inputs import check_data, ensure_pair, positive_int
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, State
from jaxnn.backprop import GRAD_MODES, GradMode, value_and_grad
from jaxnn.regularization import Penalty

__all__ = [
    "TrainState",
    "fit_full_batch",
    "make_epoch",
    "make_train_step",
]

Remainder = Literal["drop", "pad"]
REMAINDERS = ("drop", "pad")
_DROPOUT_STREAM, _SHUFFLE_STREAM = 0, 1


# ----------------------------------------------------------------------------- the state


def _as_key(key: Any, who: str) -> PRNGKey:
    """A typed PRNG key; a raw ``uint32[2]`` key (``jax.random.PRNGKey``) is wrapped."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        raise TypeError(
            f"{who}: key must be a PRNG key, got the int {key}. Pass jax.random.key({key})."
        )
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{who}: key must be a single PRNG key, got shape {key.shape}.")
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"{who}: key must be a PRNG key (jax.random.key(seed)), got {key.dtype} of shape "
        f"{key.shape}."
    )


class TrainState(NamedTuple):
    """Every array a training run carries (a pytree; donated by the step and the epoch)."""

    params: Params  # the network's trainable parameters
    state: State  # the network's non-trainable state (e.g. BatchNorm statistics)
    opt_state: optax.OptState  # the optimizer's state
    step: Array  # int32 []: the number of updates applied so far
    key: PRNGKey  # the run's key; a step's randomness is derived from it and `step`

    @classmethod
    def create(
        cls,
        network: Layer,
        optimizer: optax.GradientTransformation,
        key: PRNGKey,
        input_shape: Sequence[int] | None = None,
        *,
        params: Params | None = None,
        state: State | None = None,
    ) -> TrainState:
        """A fresh state: the network initialised, the optimizer's state, step 0.

        As Flax's ``TrainState.create``, but holding arrays only (the network and the
        optimizer are passed to the functions that use them).

        Args:
          network: the network (a :class:`~jaxnn.Layer`).
          optimizer: an optax ``GradientTransformation``.
          key: split in two: one key initialises the network, the other is the run's
            ``ts.key`` (dropout masks and the epochs' permutations).
          input_shape: ``[batch, features]`` for ``network.init``; not needed when ``params``
            and ``state`` are given.
          params, state: start from these instead of a fresh initialisation (e.g. published
            weights); both or neither. They are copied (the step donates the state's
            buffers; yours stay valid).

        Example::

            net = jaxnn.mlp([128, 64, 10], "relu", batchnorm=True)
            ts = TrainState.create(net, optax.adam(1e-3), jax.random.key(0), (128, 64))
        """
        if not isinstance(network, Layer):
            raise TypeError(f"TrainState.create: network must be a jaxnn Layer, got {network!r}.")
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                f"TrainState.create: optimizer must be an optax GradientTransformation (e.g. "
                f"optax.adam(1e-3)), got {type(optimizer).__name__}."
            )
        key = _as_key(key, "TrainState.create")
        init_key, run_key = jax.random.split(key)
        if (params is None) != (state is None):
            raise ValueError(
                "TrainState.create: give both params and state (as network.init returns "
                "them), or neither."
            )
        if params is None:
            if input_shape is None:
                raise ValueError(
                    "TrainState.create: input_shape is needed to initialise the network, e.g. "
                    "(batch, features) = x.shape."
                )
            params, state = network.init(init_key, ensure_input_shape(input_shape, network.name))
        else:  # the step donates the state's buffers: the caller's arrays stay valid
            params, state = jax.tree.map(jnp.copy, (params, state))
        _refuse_float16_params(params, "TrainState.create")
        return cls(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), run_key)


def _refuse_float16_params(params: Params, who: str) -> None:
    for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        refuse_float16(leaf, f"{who}: params{jax.tree_util.keystr(keys)}")


def _stream_key(ts: TrainState, stream: int) -> PRNGKey:
    return jax.random.fold_in(jax.random.fold_in(ts.key, stream), ts.step)


# ----------------------------------------------------------------------------- one step


def _check_grad_mode(grad: Any) -> None:
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}.")


def _update(
    network: Layer,
    loss: _losses.Loss,
    optimizer: optax.GradientTransformation,
    grad: GradMode,
    penalty: Penalty | None,
) -> Callable[..., tuple[TrainState, Array]]:
    """The step's computation, not jitted: ``update(ts, x, targets, key, mask)``."""
    vg = value_and_grad(network, loss, grad=grad, penalty=penalty)
    vg_masked = value_and_grad(network, _losses.masked(loss), grad=grad, penalty=penalty)

    def update(ts: TrainState, x: Array, targets: Any, key: PRNGKey | None, mask: Array | None):
        if key is None and network.stochastic:
            key = _stream_key(ts, _DROPOUT_STREAM)
        if mask is None:
            (value, new_state), grads = vg(ts.params, ts.state, x, targets, train=True, key=key)
        else:
            keywords = {"mask": mask} if "mask" in network.keywords else {}
            (value, new_state), grads = vg_masked(
                ts.params, ts.state, x, (targets, mask), train=True, key=key, **keywords
            )
        require(jnp.isfinite(value), "train step: the loss is {value}", value=value)
        require(all_finite(grads), "train step: a gradient is NaN or inf")
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        require(
            all_finite(params),
            "train step: the optimizer's update made a parameter NaN or inf (a NaN or too "
            "large learning rate?)",
        )
        return TrainState(params, new_state, opt_state, ts.step + 1, ts.key), value

    return update


def make_train_step(
    network: Layer,
    loss: str | _losses.Loss,
    optimizer: optax.GradientTransformation,
    *,
    grad: GradMode = "autodiff",
    penalty: Penalty | None = None,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, Array]]:
    """A jit-compiled step ``step(ts, x, targets, key=None) -> (new_ts, loss)``.

    ``step.lower(ts, x, targets)`` gives the compiled computation (``jax.stages.Lowered``),
    e.g. for its HLO or memory analysis.

    The step runs the network with ``train=True`` and applies the optimizer's update:
    ``w ← w - η ∂L/∂w`` for ``optax.sgd(η)``. The returned loss is the one of the forward
    pass that produced the gradient (i.e. before the update), penalty included; ``ts.step``
    counts the update.

    Args:
      network, loss, optimizer: the network, the loss (name or :class:`~jaxnn.losses.Loss`),
        an optax ``GradientTransformation``.
      grad: ``"autodiff"`` or ``"manual"`` (the hand-derived rules).
      penalty: a :class:`~jaxnn.regularization.Penalty` added to the loss.
      donate: donate ``ts``'s buffers to the new state (the default): the update is written
        in place, and the ``ts`` passed in must not be used again. ``False`` keeps it.

    ``key``: the stochastic layers' key (dropout). Left out, the step derives it from the
    state, ``fold_in(fold_in(ts.key, 0), ts.step)``, a new one every update.

    In the checking mode (:mod:`jaxnn.debug`) a NaN or infinite loss, gradient or updated
    parameter raises, naming which (e.g. ``optax.sgd(nan)`` makes the parameters NaN).
    """
    _check_grad_mode(grad)
    update = _update(network, _losses.get(loss), optimizer, grad, penalty)

    def carry_step(carry: tuple[Any, ...], run_key: PRNGKey | None, x, targets, key):
        ts, value = update(TrainState(*carry, run_key), jnp.asarray(x), jnp.asarray(targets),
                           key, None)  # fmt: skip
        return tuple(ts[:-1]), value

    compiled = jax.jit(carry_step, donate_argnums=(0,) if donate else ())

    # The run's key never changes: it goes into the compiled call (only where a layer draws
    # from it) but does not come out. A typed key among a jitted call's outputs is rebuilt in
    # Python at every call (~10 µs on a 2-core CPU), and one among its inputs costs ~2 µs.
    stochastic = network.stochastic

    def step(ts: TrainState, x: ArrayLike, targets: ArrayLike, key: PRNGKey | None = None):
        run_key = ts.key if stochastic and key is None else None
        carry, value = compiled(ts[:-1], run_key, x, targets, key)
        return TrainState(*carry, ts.key), value

    def lower(ts: TrainState, x: ArrayLike, targets: ArrayLike, key: PRNGKey | None = None):
        run_key = ts.key if stochastic and key is None else None
        return compiled.lower(ts[:-1], run_key, x, targets, key)

    step.lower = lower  # the compiled computation, for inspection (HLO, memory)
    return step


def fit_full_batch(
    step: Callable[..., tuple[TrainState, Array]],
    ts: TrainState,
    x: ArrayLike,
    targets: ArrayLike,
    num_steps: int,
    *,
    key: PRNGKey | None = None,
) -> tuple[TrainState, Array]:
    """``num_steps`` steps on the same batch as one compiled ``lax.scan``.

    Args:
      step: a step from :func:`make_train_step`.
      ts, x, targets: the starting state and the batch. ``ts`` is not consumed.
      num_steps: ``> 0``.
      key: split into one key per step (``jax.random.split(key, num_steps)``); left out, a
        stochastic network's step derives its key from the state.

    Returns:
      The final state and the losses, shape ``[num_steps]``; ``losses[k]`` is the loss after
      ``k`` updates (the forward pass of step ``k + 1``).
    """
    if isinstance(num_steps, bool) or not (isinstance(num_steps, int) and num_steps > 0):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    keys = None if key is None else jax.random.split(key, num_steps)
    return _scan(step, ts, jnp.asarray(x), jnp.asarray(targets), keys, num_steps)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _scan(step, ts, x, targets, keys, num_steps):
    def body(ts: TrainState, key: PRNGKey | None):
        return step(ts, x, targets, key)

    return jax.lax.scan(body, ts, keys, length=num_steps)


# ----------------------------------------------------------------------------- one epoch


def _batches(n: int, batch_size: int, remainder: str, who: str) -> tuple[int, int]:
    """``(full batches, leftover examples trained on)`` for ``n`` examples."""
    if remainder not in REMAINDERS:
        raise ValueError(f"{who}: remainder must be one of {REMAINDERS}, got {remainder!r}.")
    full, left = divmod(n, batch_size)
    if full == 0 and (remainder == "drop" or left == 0):
        raise ValueError(
            f"{who}: batch_size={batch_size} is larger than the {n} training examples, and "
            f"remainder='drop' drops a partial batch, so an epoch would make no update. Use a "
            f"batch_size <= {n}, or remainder='pad'."
        )
    return full, (left if remainder == "pad" else 0)


def make_epoch(
    network: Layer,
    loss: str | _losses.Loss,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    grad: GradMode = "autodiff",
    penalty: Penalty | None = None,
    remainder: Remainder = "drop",
    devices: _parallel.Devices = None,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, Array]]:
    """One epoch as one compiled ``lax.scan``: ``epoch(ts, x, targets) -> (ts, losses)``.

    The permutation of the ``n`` examples is drawn inside the compiled code from
    ``fold_in(fold_in(ts.key, 1), ts.step)``; each update gathers its minibatch from ``x`` and
    ``targets`` on the device. ``ts`` is donated (its buffers hold the new state); ``x`` and
    ``targets`` are not. The ragged last minibatch follows ``remainder`` (module docstring).

    ``devices`` (``None``, a number, devices or a mesh: :func:`jaxnn.parallel.data_mesh`)
    trains data-parallel: ``ts``, ``x`` and ``targets`` are replicated on the mesh (``jit``
    copies arrays of one process there; with several processes, place them with
    :func:`jaxnn.parallel.replicate`), every minibatch (indices, examples, targets, mask) is
    split over its ``"batch"`` axis, and the new state and the losses come back replicated.
    ``batch_size`` must be divisible by the number of devices along ``"batch"``. The updates
    equal one device's to rounding (:mod:`jaxnn.parallel`).

    Returns:
      The new state and the loss of each update, ``[updates]`` (penalty included).

    The function is cached for equal arguments (the same network, loss, optimizer objects and
    options), so calling it again compiles nothing new.
    """
    _check_grad_mode(grad)
    batch_size = positive_int(batch_size, "make_epoch: batch_size")
    mesh = _parallel.data_mesh(devices, "make_epoch")
    _parallel.batch_size_per_device(batch_size, mesh, "make_epoch")
    if remainder not in REMAINDERS:
        raise ValueError(f"make_epoch: remainder must be one of {REMAINDERS}, got {remainder!r}.")
    return _checked_epoch(
        network, _losses.get(loss), optimizer, batch_size, grad, penalty, remainder, mesh
    )


@functools.lru_cache(maxsize=64)
def _checked_epoch(network, loss, optimizer, batch_size, grad, penalty, remainder, mesh):
    """The compiled epoch behind the checks of its concrete arguments (:func:`_check_data`)."""
    epoch = _make_epoch(network, loss, optimizer, batch_size, grad, penalty, remainder, mesh)

    def checked(ts: TrainState, x: ArrayLike, targets: ArrayLike) -> tuple[TrainState, Array]:
        x, targets = ensure_pair(x, targets, "epoch")
        check_data(network, loss, ts.params, ts.state, x, targets, "epoch")
        return epoch(ts, x, targets)

    checked.lower = epoch.lower  # the compiled computation, for inspection
    return checked


@functools.lru_cache(maxsize=64)
def _make_epoch(network, loss, optimizer, batch_size, grad, penalty, remainder, mesh):
    update = _update(network, loss, optimizer, grad, penalty)
    shard = functools.partial(_parallel.shard_batch, mesh=mesh)

    def epoch(ts: TrainState, x: Array, targets: Array) -> tuple[TrainState, Array]:
        n = x.shape[0]
        full, left = _batches(n, batch_size, remainder, "fit")
        if left == 1 and "mask" in network.keywords:
            raise ValueError(
                f"fit: remainder='pad' leaves a last minibatch of 1 example ({n} examples, "
                f"batch_size={batch_size}), and BatchNorm's batch statistics need at least 2. "
                f"Use remainder='drop' or another batch_size."
            )
        perm = jax.random.permutation(_stream_key(ts, _SHUFFLE_STREAM), n)

        # With a mesh, the indices are split first: each device gathers its own rows from its
        # replica of the data set (no example crosses devices).
        def body(ts: TrainState, idx: Array) -> tuple[TrainState, Array]:
            idx = shard(idx)
            return update(ts, shard(x[idx]), shard(targets[idx]), None, None)

        ts, losses = jax.lax.scan(body, ts, perm[: full * batch_size].reshape(full, batch_size))
        if left:
            idx = shard(jnp.concatenate([perm[full * batch_size :], perm[: batch_size - left]]))
            mask = shard(jnp.arange(batch_size) < left)
            ts, last = update(ts, shard(x[idx]), shard(targets[idx]), None, mask)
            losses = jnp.concatenate([losses, last[None]])
        return ts, losses

    if mesh is None:
        return jax.jit(epoch, donate_argnums=(0,))
    replicated = NamedSharding(mesh, P())
    return jax.jit(epoch, donate_argnums=(0,), in_shardings=replicated, out_shardings=replicated)
