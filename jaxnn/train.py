"""Training: a train state, a jit-compiled step, an epoch as one ``lax.scan``, and ``fit``.

* :class:`TrainState` — params, state, optimizer state, step and the run's PRNG key: every
  array a run carries, nothing else (so it is donated, checkpointed and restored whole).
  ``TrainState.create(network, optimizer, key, input_shape)`` initialises one.
* :func:`make_train_step` — one update, ``step(ts, x, targets) -> (ts, loss)``.
* :func:`make_epoch` — one pass over shuffled minibatches as one compiled ``lax.scan``: the
  permutation is drawn from the state's key inside the compiled code, the data stays on the
  device, the state's buffers are donated.
* :func:`fit` — epochs, a validation pass after each, the best state, early stopping,
  per-epoch metrics; :func:`evaluate` and :func:`predict` in eval mode, batched and jitted.
* :func:`fit_full_batch` — many steps on one batch as one ``lax.scan`` (the worked example).

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

**Several devices.** :func:`make_epoch`, :func:`fit`, :func:`evaluate` and :func:`predict`
take ``devices=`` (a number, devices, or a mesh with a ``"batch"`` axis): the state and the
data are replicated, each minibatch is split over the devices, and ``jit`` adds the
all-reduces; the gradient and BatchNorm's statistics stay those of the whole minibatch
(:mod:`jaxnn.parallel`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn import losses as _losses
from jaxnn import metrics as _metrics
from jaxnn import parallel as _parallel
from jaxnn._checks import all_finite, ensure_input_shape, ensure_positive, is_traced, require
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, State
from jaxnn.backprop import GRAD_MODES, GradMode, value_and_grad
from jaxnn.regularization import Penalty

__all__ = [
    "FitResult",
    "TrainState",
    "evaluate",
    "fit",
    "fit_full_batch",
    "make_epoch",
    "make_train_step",
    "predict",
    "sgd",
]

Remainder = Literal["drop", "pad"]
REMAINDERS = ("drop", "pad")
_DROPOUT_STREAM, _SHUFFLE_STREAM = 0, 1


# ----------------------------------------------------------------------------- optimizer


def sgd(
    learning_rate: float | optax.Schedule,
    *,
    trainable: Callable[[tuple[Any, ...], Array], bool] | None = None,
) -> optax.GradientTransformation:
    """Plain gradient descent ``w ← w - η ∂L/∂w`` (optax's ``sgd``), with frozen leaves.

    Args:
      learning_rate: ``η > 0``, or an optax schedule ``step -> η`` (e.g.
        ``optax.exponential_decay(0.1, 1000, 0.5)``), which is checked when it is called.
      trainable: optional ``trainable(path, leaf) -> bool`` (``path`` as in
        ``jax.tree_util.tree_map_with_path``, ``leaf`` the gradient, of the parameter's shape
        and dtype); leaves for which it is false get a zero update.
        E.g. ``lambda path, _: path[-1].key == "w"`` trains the kernels and freezes the biases.

    Raises:
      ValueError: a numeric ``learning_rate`` is not a positive finite number.
      TypeError: ``learning_rate`` is neither a number nor a callable schedule.

    A traced rate (an array inside ``jit``) and a schedule's values are applied as given;
    the checking mode (:mod:`jaxnn.checking`) raises when one is not a positive finite number.
    """
    if callable(learning_rate):
        learning_rate = _checked_schedule(learning_rate)
    else:  # a schedule is evaluated by optax at every step
        scalar_array = isinstance(learning_rate, jax.Array) and learning_rate.ndim == 0
        if isinstance(learning_rate, bool) or not (
            isinstance(learning_rate, int | float | np.number) or scalar_array
        ):
            raise TypeError(
                f"learning_rate must be a positive number or an optax schedule (step -> rate), "
                f"got {type(learning_rate).__name__} {learning_rate!r}."
            )
        ensure_positive(learning_rate, "learning_rate")
    inner = optax.sgd(learning_rate)
    if is_traced(learning_rate):
        inner = _checked_rate(inner, learning_rate)
    if trainable is None:
        return inner

    # A frozen leaf's gradient is replaced by 0 before the step, so its update is -η·0 = 0
    # exactly. Stateless: the optimizer state stays sgd's own (optax.multi_transform would
    # add a state node per label, each carried and flattened at every step).
    def update(updates, state, params=None):
        updates = jax.tree_util.tree_map_with_path(
            lambda path, g: g if trainable(path, g) else jnp.zeros_like(g), updates
        )
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update)


def _rate_ok(rate: Array) -> Array:
    return (rate > 0) & jnp.isfinite(rate)


def _checked_schedule(schedule: optax.Schedule) -> optax.Schedule:
    def checked(count: Array) -> Array:
        rate = schedule(count)
        require(_rate_ok(rate), "sgd: the schedule gave learning rate {rate} at step {count}; "
                "it must be a positive finite number", rate=rate, count=count)  # fmt: skip
        return rate

    return checked


def _checked_rate(inner: optax.GradientTransformation, rate: Array) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        require(_rate_ok(rate), "sgd: learning rate {rate} must be a positive finite number",
                rate=rate)  # fmt: skip
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update)


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
        return cls(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), run_key)


def _stream_key(ts: TrainState, stream: int) -> PRNGKey:
    return jax.random.fold_in(jax.random.fold_in(ts.key, stream), ts.step)


# ----------------------------------------------------------------------------- one step


def _check_grad_mode(grad: Any) -> None:
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}.")


def _update(
    layer: Layer,
    loss: _losses.Loss,
    optimizer: optax.GradientTransformation,
    grad: GradMode,
    penalty: Penalty | None,
) -> Callable[..., tuple[TrainState, Array]]:
    """The step's computation, not jitted: ``update(ts, x, targets, key, mask)``."""
    vg = value_and_grad(layer, loss, grad=grad, penalty=penalty)
    vg_masked = value_and_grad(layer, _losses.masked(loss), grad=grad, penalty=penalty)

    def update(ts: TrainState, x: Array, targets: Any, key: PRNGKey | None, mask: Array | None):
        if key is None and layer.stochastic:
            key = _stream_key(ts, _DROPOUT_STREAM)
        if mask is None:
            (value, new_state), grads = vg(ts.params, ts.state, x, targets, train=True, key=key)
        else:
            keywords = {"mask": mask} if "mask" in layer.keywords else {}
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
    layer: Layer,
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
      layer, loss, optimizer: the network, the loss (name or :class:`~jaxnn.losses.Loss`),
        an optax ``GradientTransformation``.
      grad: ``"autodiff"`` or ``"manual"`` (the hand-derived rules).
      penalty: a :class:`~jaxnn.regularization.Penalty` added to the loss.
      donate: donate ``ts``'s buffers to the new state (the default): the update is written
        in place, and the ``ts`` passed in must not be used again. ``False`` keeps it.

    ``key``: the stochastic layers' key (dropout). Left out, the step derives it from the
    state, ``fold_in(fold_in(ts.key, 0), ts.step)``, a new one every update.

    In the checking mode (:mod:`jaxnn.checking`) a NaN or infinite loss, gradient or updated
    parameter raises, naming which (e.g. ``optax.sgd(nan)`` makes the parameters NaN).
    """
    _check_grad_mode(grad)
    update = _update(layer, _losses.get(loss), optimizer, grad, penalty)

    def carry_step(carry: tuple[Any, ...], run_key: PRNGKey | None, x, targets, key):
        ts, value = update(TrainState(*carry, run_key), jnp.asarray(x), jnp.asarray(targets),
                           key, None)  # fmt: skip
        return tuple(ts[:-1]), value

    compiled = jax.jit(carry_step, donate_argnums=(0,) if donate else ())

    # The run's key never changes: it goes into the compiled call (only where a layer draws
    # from it) but does not come out. A typed key among a jitted call's outputs is rebuilt in
    # Python at every call (~10 µs on a 2-core CPU), and one among its inputs costs ~2 µs.
    stochastic = layer.stochastic

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


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int | np.integer) and value > 0):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


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
    layer: Layer,
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
    batch_size = _positive_int(batch_size, "make_epoch: batch_size")
    mesh = _parallel.data_mesh(devices, "make_epoch")
    _parallel.batch_size_per_device(batch_size, mesh, "make_epoch")
    return _make_epoch(
        layer, _losses.get(loss), optimizer, batch_size, grad, penalty, remainder, mesh
    )


@functools.lru_cache(maxsize=64)
def _make_epoch(layer, loss, optimizer, batch_size, grad, penalty, remainder, mesh):
    update = _update(layer, loss, optimizer, grad, penalty)
    shard = functools.partial(_parallel.shard_batch, mesh=mesh)

    def epoch(ts: TrainState, x: Array, targets: Array) -> tuple[TrainState, Array]:
        n = x.shape[0]
        full, left = _batches(n, batch_size, remainder, "fit")
        if left == 1 and "mask" in layer.keywords:
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


# ----------------------------------------------------------------------------- eval mode


def _ensure_pair(x: ArrayLike, targets: ArrayLike, who: str) -> tuple[Array, Array]:
    x, targets = jnp.asarray(x), jnp.asarray(targets)
    if x.ndim < 1 or targets.ndim < 1 or x.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{who}: x and targets must have the same number of examples (first axis), got "
            f"x.shape={x.shape} and targets.shape={targets.shape}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{who}: no examples (x.shape={x.shape}).")
    return x, targets


@functools.lru_cache(maxsize=64)
def _predictor(
    layer: Layer, batch_size: int, mesh: Mesh | None
) -> Callable[[Params, State, Array], Array]:
    d = 1 if mesh is None else mesh.shape[_parallel.BATCH_AXIS]

    def apply(params: Params, state: State, xb: Array) -> Array:
        return layer.apply(params, state, _parallel.shard_batch(xb, mesh), train=False)[0]

    def run(params: Params, state: State, x: Array) -> Array:
        n = x.shape[0]
        size = -(-min(batch_size, n) // d) * d  # a chunk: at most batch_size, split d ways
        if size == n:
            return apply(params, state, x)
        batches = -(-n // size)
        padded = jnp.concatenate([x, jnp.zeros((batches * size - n, *x.shape[1:]), x.dtype)])
        if batches == 1:
            return apply(params, state, padded)[:n]
        chunks = padded.reshape(batches, size, *x.shape[1:])
        y = jax.lax.map(lambda xb: apply(params, state, xb), chunks)
        return y.reshape(batches * size, *y.shape[2:])[:n]

    if mesh is None:
        return jax.jit(run)
    replicated = NamedSharding(mesh, P())
    return jax.jit(run, in_shardings=replicated, out_shardings=replicated)


def predict(
    layer: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    *,
    batch_size: int = 1024,
    devices: _parallel.Devices = None,
) -> Array:
    """The network's outputs in eval mode (``train=False``: BatchNorm's running statistics,
    no dropout), ``batch_size`` examples at a time, jitted.

    In eval mode every example's output depends on that example alone, so batching changes
    nothing but memory: the last batch is padded and the padding's outputs dropped.

    ``devices`` (:func:`jaxnn.parallel.data_mesh`): each batch is split over the mesh's
    ``"batch"`` axis (its size rounded up to a multiple of the devices), params and state
    replicated; the outputs come back replicated on every device (and process).

    Returns:
      ``[n, ...]``, the outputs of ``layer.apply(params, state, x, train=False)``.
    """
    batch_size = _positive_int(batch_size, "predict: batch_size")
    mesh = _parallel.data_mesh(devices, "predict")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"predict: x must be [examples, ...] with examples > 0, got {x.shape}.")
    if mesh is not None:
        params, state, x = _parallel.replicate((params, state, x), mesh)
    return _predictor(layer, batch_size, mesh)(params, state, x)


def evaluate(
    layer: Layer,
    loss: str | _losses.Loss,
    params: Params,
    state: State,
    x: ArrayLike,
    targets: ArrayLike,
    *,
    batch_size: int = 1024,
    devices: _parallel.Devices = None,
) -> dict[str, Any]:
    """The loss and, for a classification loss, accuracy and confusion matrix, in eval mode.

    ``devices``: the batches split over a mesh, as :func:`predict`; the scores are the same.

    Returns:
      ``{"loss": float, "accuracy": float, "confusion": [[int]]}`` (the last two for the
      losses of :data:`jaxnn.metrics.CLASSIFICATION_LOSSES` only). ``loss`` is the data loss
      of the whole set (no penalty), as ``loss(predict(...), targets)``; ``confusion[i][j]``
      counts the examples of class ``i`` predicted as ``j``.
    """
    loss = _losses.get(loss)
    mesh = _parallel.data_mesh(devices, "evaluate")
    x, targets = _ensure_pair(x, targets, "evaluate")
    if mesh is not None:
        targets = _parallel.replicate(targets, mesh)
    y = predict(layer, params, state, x, batch_size=batch_size, devices=mesh)
    return _scores(loss, y, targets)


def _scores(loss: _losses.Loss, y: Array, targets: Array) -> dict[str, Any]:
    value, acc, confusion = _score_fn(loss)(y, targets)
    out: dict[str, Any] = {"loss": float(value)}
    if _metrics.is_classification(loss):
        out["accuracy"] = float(acc)
        out["confusion"] = np.asarray(confusion).tolist()
    return out


@functools.lru_cache(maxsize=64)
def _score_fn(loss: _losses.Loss) -> Callable[[Array, Array], tuple[Array, Array, Array]]:
    @jax.jit
    def scores(y: Array, targets: Array):
        value = loss.fn(y, targets)
        if not _metrics.is_classification(loss):
            return value, jnp.nan, jnp.zeros((0, 0), jnp.int32)
        return (
            value,
            _metrics.accuracy(y, targets, loss),
            _metrics.confusion_matrix(y, targets, loss),
        )

    return scores


# ----------------------------------------------------------------------------- fit


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    state: TrainState  # after the last epoch run
    best: TrainState  # after the best epoch of this call by `monitor` (see best_epoch)
    best_epoch: int  # 1-based epoch with the best `monitor`, counting `history`; if it is an
    #                  epoch of the earlier history (a resumed run), `best` is `state`
    history: list[dict[str, float]]  # one record per epoch (see fit)
    stopped_early: bool  # whether early stopping ended the run


_MONITORS = {"val_loss": min, "val_accuracy": max, "loss": min}


@functools.lru_cache(maxsize=16)
def _copier(mesh: Mesh | None) -> Callable[[Any], Any]:
    """Fresh buffers for every leaf, in one dispatch (a ``tree.map`` is one per leaf); with a
    mesh, replicated on it: an epoch's input then has the sharding of its output, so the
    epoch compiles once (a one-device mesh's copy would otherwise leave the mesh)."""
    copy = functools.partial(jax.tree.map, jnp.copy)
    return jax.jit(copy, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def fit(
    layer: Layer,
    loss: str | _losses.Loss,
    optimizer: optax.GradientTransformation,
    ts: TrainState,
    train: tuple[ArrayLike, ArrayLike],
    *,
    epochs: int,
    batch_size: int = 128,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    grad: GradMode = "autodiff",
    penalty: Penalty | None = None,
    remainder: Remainder = "drop",
    monitor: str | None = None,
    patience: int | None = None,
    evaluate_train: bool = False,
    history: Sequence[Mapping[str, float]] = (),
    callback: Callable[[int, TrainState, dict[str, float]], None] | None = None,
    progress: bool | None = False,
    devices: _parallel.Devices = None,
) -> FitResult:
    """Train for ``epochs`` epochs of shuffled minibatches; evaluate after each.

    Each epoch is one compiled ``lax.scan`` (:func:`make_epoch`); the data are moved to the
    device once. After each epoch the network is evaluated in eval mode on ``validation``
    (and on the training set with ``evaluate_train``), and a record is appended to the
    history::

        {"epoch": 3, "loss": mean training loss of the epoch's updates (train mode,
         penalty included), "val_loss": ..., "val_accuracy": ..., "train_loss": ...,
         "train_accuracy": ..., "seconds": wall time of the epoch}

    Args:
      layer, loss, optimizer: the network, the loss, an optax ``GradientTransformation``.
      ts: the starting state (:meth:`TrainState.create`, or a restored checkpoint). It is
        not consumed: the first epoch works on a copy.
      train: ``(x, targets)``; ``validation`` likewise, optional.
      epochs: the number of epochs to run (``> 0``).
      batch_size, remainder: the minibatches (module docstring: ``"drop"`` or ``"pad"``).
      grad, penalty: the gradient path and the penalty, as :func:`make_train_step`.
      monitor: the record key that chooses the best epoch and drives early stopping:
        ``"val_loss"`` (default with validation; lower is better), ``"val_accuracy"``
        (higher is better), or ``"loss"`` (the default without validation).
      patience: stop after this many epochs without improvement of ``monitor``; ``None``
        runs every epoch.
      evaluate_train: also record ``train_loss``/``train_accuracy`` in eval mode.
      history: the records of earlier epochs (a resumed run): epochs are numbered on from
        them and they count towards the best epoch and the patience. ``best`` is a state of
        this call's epochs.
      callback: ``callback(epoch, ts, record)`` after each epoch (e.g. to save a
        checkpoint). ``ts`` is valid during the call only (the next epoch donates it): save
        or copy it there.
      progress: a tqdm bar over the epochs on stderr with the latest metrics; ``None`` shows
        it only when stderr is a terminal.
      devices: data parallelism (:mod:`jaxnn.parallel`): ``None`` (JAX's default device), a
        number ``N`` (the first ``N`` local devices; ``N`` of each process after
        ``jax.distributed.initialize``), a sequence of devices, or a ``Mesh`` with a
        ``"batch"`` axis. The state and the data sets are replicated on the mesh once, each
        minibatch and each evaluation batch is split over ``"batch"``; ``batch_size`` must be
        divisible by the number of devices. The gradient and BatchNorm's statistics are those
        of the whole minibatch, so the run equals a one-device run to rounding. ``best``,
        ``state`` and the callback's ``ts`` are replicated on the mesh.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError: a bad argument (its message names it and the fix), e.g. ``batch_size``
        not divisible by the number of devices, or more devices than a process has.
    """
    epochs = _positive_int(epochs, "fit: epochs")
    batch_size = _positive_int(batch_size, "fit: batch_size")
    mesh = _parallel.data_mesh(devices, "fit")
    _parallel.batch_size_per_device(batch_size, mesh, "fit")
    _check_grad_mode(grad)
    loss = _losses.get(loss)
    x, targets = _ensure_pair(*train, "fit: train")
    _batches(x.shape[0], batch_size, remainder, "fit")
    if validation is not None:
        val = _ensure_pair(*validation, "fit: validation")
    monitor = monitor or ("val_loss" if validation is not None else "loss")
    if monitor not in _MONITORS or (monitor.startswith("val_") and validation is None):
        raise ValueError(
            f"fit: monitor must be one of {sorted(_MONITORS)} ('val_*' need validation data), "
            f"got {monitor!r}."
        )
    if monitor == "val_accuracy" and not _metrics.is_classification(loss):
        raise ValueError(
            f"fit: monitor='val_accuracy' needs a classification loss, got {loss.name}."
        )
    if patience is not None:
        patience = _positive_int(patience, "fit: patience")
    better = _MONITORS[monitor]

    epoch_fn = make_epoch(
        layer, loss, optimizer, batch_size=batch_size, grad=grad, penalty=penalty,
        remainder=remainder, devices=mesh,
    )  # fmt: skip
    if mesh is not None:  # once: the epochs and evaluations then find everything in place
        ts, x, targets = _parallel.replicate((ts, x, targets), mesh)
        if validation is not None:
            val = _parallel.replicate(val, mesh)
    copy = _copier(mesh)
    ts = copy(ts)  # the caller's state survives the donation
    records = [dict(r) for r in history]
    scored = [r[monitor] for r in records if monitor in r]
    best_value = better(scored) if scored else None
    best, best_epoch, waited = ts, len(records), 0
    if scored:
        waited = (
            len(records) - 1 - max(i for i, r in enumerate(records) if r.get(monitor) == best_value)
        )

    from tqdm.auto import tqdm  # a runtime dependency; imported where it is used

    bar = tqdm(range(len(records) + 1, len(records) + epochs + 1), desc="fit", unit="epoch",
               disable=None if progress is None else not progress, leave=False)  # fmt: skip
    stopped = False
    for epoch in bar:
        start = time.perf_counter()
        ts, losses = epoch_fn(ts, x, targets)
        record: dict[str, float] = {"epoch": epoch, "loss": float(jnp.mean(losses))}
        if validation is not None:
            scores = evaluate(layer, loss, ts.params, ts.state, *val, devices=mesh)
            record.update({f"val_{k}": v for k, v in scores.items() if k != "confusion"})
        if evaluate_train:
            scores = evaluate(layer, loss, ts.params, ts.state, x, targets, devices=mesh)
            record.update({f"train_{k}": v for k, v in scores.items() if k != "confusion"})
        record["seconds"] = time.perf_counter() - start
        records.append(record)
        bar.set_postfix(
            {k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")}
        )
        value = record[monitor]
        if not math.isfinite(value):
            improved = False
        else:
            improved = best_value is None or better(value, best_value) != best_value
        if improved:
            best_value, best_epoch, waited = value, epoch, 0
            best = copy(ts)  # the next epoch donates ts's buffers
        else:
            waited += 1
        if callback is not None:
            callback(epoch, ts, record)
        if patience is not None and waited >= patience:
            stopped = True
            break
    bar.close()
    if best_epoch <= len(history):  # no epoch of this call beat the earlier ones
        best = ts
    return FitResult(ts, best, best_epoch, records, stopped)
