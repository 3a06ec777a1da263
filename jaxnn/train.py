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
import inspect
import math
import numbers
import time
import warnings
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
from jaxnn._checks import (
    all_finite,
    ensure_input_shape,
    ensure_positive,
    is_traced,
    refuse_float16,
    require,
)
from jaxnn._trees import differences as _differences
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, State
from jaxnn.backprop import GRAD_MODES, GradMode, value_and_grad
from jaxnn.regularization import Penalty

__all__ = [
    "DivergenceWarning",
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
    if remainder not in REMAINDERS:
        raise ValueError(f"make_epoch: remainder must be one of {REMAINDERS}, got {remainder!r}.")
    return _checked_epoch(
        layer, _losses.get(loss), optimizer, batch_size, grad, penalty, remainder, mesh
    )


@functools.lru_cache(maxsize=64)
def _checked_epoch(layer, loss, optimizer, batch_size, grad, penalty, remainder, mesh):
    """The compiled epoch behind the checks of its concrete arguments (:func:`_check_data`)."""
    epoch = _make_epoch(layer, loss, optimizer, batch_size, grad, penalty, remainder, mesh)

    def checked(ts: TrainState, x: ArrayLike, targets: ArrayLike) -> tuple[TrainState, Array]:
        x, targets = _ensure_pair(x, targets, "epoch")
        _check_data(layer, loss, ts.params, ts.state, x, targets, "epoch")
        return epoch(ts, x, targets)

    checked.lower = epoch.lower  # the compiled computation, for inspection
    return checked


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


def _pair_argument(value: Any, who: str) -> tuple[Array, Array]:
    """``(x, targets)`` from a ``fit`` argument such as ``train=(x, y)``, checked."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        got = (
            f"a {type(value).__name__} of {len(value)} item(s)"
            if isinstance(value, tuple | list)
            else f"a {type(value).__name__}"
        )
        raise TypeError(
            f"{who} must be a pair (x, targets) of arrays with one example per row, got {got}."
        )
    return _ensure_pair(*value, who)


@functools.lru_cache(maxsize=64)
def _init_shapes(layer: Layer, features: tuple[int, ...]) -> Any:
    """The shapes of ``layer.init``'s ``(params, state)`` for examples of shape ``features``."""
    return jax.eval_shape(lambda key: layer.init(key, (2, *features)), jax.random.key(0))


@functools.lru_cache(maxsize=64)
def _outputs(layer: Layer) -> Callable[[Params, State, Array], Array]:
    """``layer``'s eval-mode output; :func:`jax.eval_shape` of it gives the outputs' shape."""
    return lambda params, state, x: layer.apply(params, state, x, train=False)[0]


def _check_network(layer: Layer, params: Params, state: State, x: Array, who: str) -> None:
    """Refuse ``params``/``state`` that are not ``layer``'s for inputs like ``x``."""
    if not isinstance(layer, Layer):
        raise TypeError(f"{who}: the network must be a jaxnn Layer (mlp(...), serial(...)), got "
                        f"{type(layer).__name__}.")  # fmt: skip
    try:
        want = _init_shapes(layer, tuple(x.shape[1:]))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return  # an init that cannot be traced: the layer's own checks stand
    problems = [f"params/{d}" for d in _differences(want[0], params)]
    problems += [f"state/{d}" for d in _differences(want[1], state)]
    if problems:
        listing = "\n  ".join(
            problems[:12] + ([f"... {len(problems) - 12} more"] if len(problems) > 12 else [])
        )
        raise ValueError(
            f"{who}: the params and state do not belong to the network {layer.name!r} for "
            f"inputs of shape {tuple(x.shape)} ({len(problems)} difference(s)):\n  {listing}\n"
            f"Build the state for this network: TrainState.create(network, optimizer, key, "
            f"x.shape), or network.init(key, x.shape)."
        )


def _check_data(
    layer: Layer, loss: _losses.Loss, params: Params, state: State, x: Array, targets: Array,
    who: str,
) -> None:  # fmt: skip
    """The concrete checks of a network's inputs: its params and state, and the targets its
    outputs must meet (:func:`jaxnn.losses.check_targets`: e.g. labels in ``[0, classes)``)."""
    _check_network(layer, params, state, x, who)
    # The outputs of one example (one trace per input shape, cached): the first axis is the
    # batch in every layer.
    one = jax.eval_shape(
        _outputs(layer), params, state, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    )
    _losses.check_targets(loss, targets, (x.shape[0], *one.shape[1:]), who)


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
    _check_network(layer, params, state, x, "predict")
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
      classification losses only: :func:`jaxnn.losses.is_classification`). ``loss`` is the data loss
      of the whole set (no penalty), as ``loss(predict(...), targets)``; ``confusion[i][j]``
      counts the examples of class ``i`` predicted as ``j``.
    """
    loss = _losses.get(loss)
    batch_size = _positive_int(batch_size, "evaluate: batch_size")
    mesh = _parallel.data_mesh(devices, "evaluate")
    x, targets = _ensure_pair(x, targets, "evaluate")
    _check_data(layer, loss, params, state, x, targets, "evaluate")
    return _evaluate(layer, loss, params, state, x, targets, batch_size, mesh)


def _evaluate(layer, loss, params, state, x, targets, batch_size, mesh) -> dict[str, Any]:
    """:func:`evaluate` of checked arguments."""
    if mesh is not None:
        params, state, x, targets = _parallel.replicate((params, state, x, targets), mesh)
    y = _predictor(layer, batch_size, mesh)(params, state, x)
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

    state: TrainState  # after the last epoch run (non-finite if the run diverged)
    best: TrainState  # after the best epoch of this call by `monitor`, always a finite one
    #                   (see best_epoch)
    best_epoch: int  # 1-based epoch with the best finite `monitor`, counting `history`; 0 or
    #                  an epoch of the earlier history when no epoch of this call beat it:
    #                  `best` is then `state`, or the starting state if the run diverged
    history: list[dict[str, float]]  # one record per epoch (see fit)
    stopped_early: bool  # whether early stopping ended the run
    diverged: int | None = None  # the first epoch whose record holds a NaN or inf, if any


class DivergenceWarning(RuntimeWarning):
    """A :func:`fit` epoch ended with a NaN or infinite loss or metric."""


_MONITORS = {"val_loss": min, "val_accuracy": max, "loss": min}
ON_NONFINITE = ("stop", "continue")


@functools.lru_cache(maxsize=16)
def _copier(mesh: Mesh | None) -> Callable[[Any], Any]:
    """Fresh buffers for every leaf, in one dispatch (a ``tree.map`` is one per leaf); with a
    mesh, replicated on it: an epoch's input then has the sharding of its output, so the
    epoch compiles once (a one-device mesh's copy would otherwise leave the mesh)."""
    copy = functools.partial(jax.tree.map, jnp.copy)
    return jax.jit(copy, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _nonfinite(record: Mapping[str, Any]) -> list[str]:
    """``"name value"`` of each number in ``record`` that is NaN or infinite."""
    return [
        f"{k} {v}"
        for k, v in record.items()
        if k not in ("epoch", "seconds") and _is_number(v) and not math.isfinite(v)
    ]


def _checked_history(history: Any, monitor: str) -> list[dict[str, Any]]:
    """The earlier epochs' records, checked: mappings numbered 1, 2, ... with the monitor."""
    if isinstance(history, Mapping | str | bytes) or not isinstance(history, Sequence):
        raise TypeError(
            f"fit: history must be a list of the earlier epochs' records (dicts, as "
            f"FitResult.history holds them), got a {type(history).__name__}."
        )
    records = []
    for i, r in enumerate(history):
        if not isinstance(r, Mapping):
            raise TypeError(
                f"fit: history[{i}] must be a dict (an epoch's record), got a {type(r).__name__}."
            )
        epoch = r.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch != i + 1:
            raise ValueError(
                f"fit: history[{i}] must be the record of epoch {i + 1} (records numbered 1, "
                f"2, ... in order, as FitResult.history holds them), got epoch {epoch!r}. Pass "
                f"the whole history of the run being resumed."
            )
        if not _is_number(r.get(monitor)):
            raise ValueError(
                f"fit: history[{i}] (epoch {epoch}) has no number for the monitor {monitor!r} "
                f"(keys: {sorted(r)}). Resume with the monitor the run was trained with, or "
                f"with the same validation data."
            )
        records.append(dict(r))
    return records


def _checked_callback(callback: Any) -> Callable[[int, TrainState, dict[str, float]], Any] | None:
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(
            f"fit: callback must be a function callback(epoch, ts, record), got a "
            f"{type(callback).__name__}."
        )
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return callback
    try:
        signature.bind(1, None, {})
    except TypeError as e:
        raise TypeError(
            f"fit: callback must take three arguments, callback(epoch, ts, record), but "
            f"{getattr(callback, '__name__', 'it')}{signature} cannot ({e}). E.g. "
            f"lambda epoch, ts, record: ..."
        ) from None
    return callback


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
    on_nonfinite: Literal["stop", "continue"] = "stop",
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

    **A run that diverges is noticed.** An epoch whose record holds a NaN or infinite loss or
    metric ends the run (``on_nonfinite="stop"``) with a :class:`DivergenceWarning` naming
    the epoch and the values; its record stays in the history, ``diverged`` is its number and
    ``best`` is the best finite state (the starting state if no epoch was finite).

    Before anything is compiled, the concrete arguments are checked: ``ts`` must hold params
    and state of ``layer``'s shapes for these inputs, the targets must be what the loss takes
    (:func:`jaxnn.losses.check_targets`: e.g. integer labels in ``[0, classes)``), ``history``
    must be records numbered 1, 2, ... holding the monitor, ``callback`` a function of three
    arguments.

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
        (higher is better), or ``"loss"`` (the default without validation). Only finite
        values count.
      patience: stop after this many epochs without improvement of ``monitor``; ``None``
        runs every epoch.
      evaluate_train: also record ``train_loss``/``train_accuracy`` in eval mode.
      history: the records of earlier epochs (a resumed run): epochs are numbered on from
        them and they count towards the best epoch and the patience (non-finite values
        never count as the best). ``best`` is a state of this call's epochs.
      callback: ``callback(epoch, ts, record)`` after each epoch (e.g. to save a
        checkpoint), the diverged epoch's included (check ``record`` before saving ``ts``).
        ``ts`` is valid during the call only (the next epoch donates it): save or copy it
        there.
      on_nonfinite: ``"stop"`` (default) ends the run after the first epoch whose record is
        not finite; ``"continue"`` runs every epoch anyway. Both warn once.
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
      ValueError, TypeError: a bad argument (its message names it and the fix), e.g. a
        ``ts`` of another network, labels out of range, ``batch_size`` not divisible by the
        number of devices, or more devices than a process has.

    Warns:
      DivergenceWarning: an epoch's loss or metric is NaN or infinite.
    """
    epochs = _positive_int(epochs, "fit: epochs")
    batch_size = _positive_int(batch_size, "fit: batch_size")
    mesh = _parallel.data_mesh(devices, "fit")
    _parallel.batch_size_per_device(batch_size, mesh, "fit")
    _check_grad_mode(grad)
    loss = _losses.get(loss)
    if not isinstance(ts, TrainState):
        raise TypeError(
            f"fit: ts must be a TrainState (TrainState.create(network, optimizer, key, "
            f"x.shape), or a restored checkpoint), got a {type(ts).__name__}."
        )
    _refuse_float16_params(ts.params, "fit: ts")
    x, targets = _pair_argument(train, "fit: train")
    _batches(x.shape[0], batch_size, remainder, "fit")
    _check_data(layer, loss, ts.params, ts.state, x, targets, "fit: train")
    if validation is not None:
        val = _pair_argument(validation, "fit: validation")
        _check_data(layer, loss, ts.params, ts.state, *val, "fit: validation")
    monitor = monitor or ("val_loss" if validation is not None else "loss")
    if monitor not in _MONITORS or (monitor.startswith("val_") and validation is None):
        raise ValueError(
            f"fit: monitor must be one of {sorted(_MONITORS)} ('val_*' need validation data), "
            f"got {monitor!r}."
        )
    if monitor == "val_accuracy" and not _losses.is_classification(loss):
        raise ValueError(
            f"fit: monitor='val_accuracy' needs a classification loss (targets 'labels', "
            f"'probabilities' or 'binary'), got {loss.name} (targets={loss.targets!r})."
        )
    if patience is not None:
        patience = _positive_int(patience, "fit: patience")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"fit: on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
    records = _checked_history(history, monitor)
    callback = _checked_callback(callback)
    better = _MONITORS[monitor]

    epoch_fn = _make_epoch(layer, loss, optimizer, batch_size, grad, penalty, remainder, mesh)
    if mesh is not None:  # once: the epochs and evaluations then find everything in place
        ts, x, targets = _parallel.replicate((ts, x, targets), mesh)
        if validation is not None:
            val = _parallel.replicate(val, mesh)
    copy = _copier(mesh)
    start = ts  # never donated: the state to fall back on if no epoch of this call is finite
    ts = copy(ts)  # the caller's state survives the donation
    scored = [r[monitor] for r in records if math.isfinite(r[monitor])]
    best_value = better(scored) if scored else None
    best, best_epoch, waited = start, len(records), 0
    if scored:  # the earlier best (its latest epoch, on ties) and the epochs since
        best_epoch = max(r["epoch"] for r in records if r[monitor] == best_value)
        waited = len(records) - best_epoch
    diverged = None

    from tqdm.auto import tqdm  # a runtime dependency; imported where it is used

    bar = tqdm(range(len(records) + 1, len(records) + epochs + 1), desc="fit", unit="epoch",
               disable=None if progress is None else not progress, leave=False)  # fmt: skip
    stopped = False
    for epoch in bar:
        begin = time.perf_counter()
        ts, losses = epoch_fn(ts, x, targets)
        record: dict[str, float] = {"epoch": epoch, "loss": float(jnp.mean(losses))}
        if validation is not None:
            scores = _evaluate(layer, loss, ts.params, ts.state, *val, 1024, mesh)
            record.update({f"val_{k}": v for k, v in scores.items() if k != "confusion"})
        if evaluate_train:
            scores = _evaluate(layer, loss, ts.params, ts.state, x, targets, 1024, mesh)
            record.update({f"train_{k}": v for k, v in scores.items() if k != "confusion"})
        record["seconds"] = time.perf_counter() - begin
        records.append(record)
        bar.set_postfix(
            {k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")}
        )
        value = record[monitor]
        improved = math.isfinite(value) and (
            best_value is None or better(value, best_value) != best_value
        )
        if improved:
            best_value, best_epoch, waited = value, epoch, 0
            best = copy(ts)  # the next epoch donates ts's buffers
        else:
            waited += 1
        bad = _nonfinite(record)
        if bad and diverged is None:
            diverged = epoch
            kept = (
                f"the state after epoch {best_epoch} ({monitor} {best_value:.6g})"
                if best_epoch > len(history)
                else "the state fit started from"
            )
            what = "stopped" if on_nonfinite == "stop" else "going on (on_nonfinite='continue')"
            warnings.warn(
                f"fit: the run diverged at epoch {epoch}: {', '.join(bad)}; {what}. "
                f"FitResult.best is {kept}. Lower the learning rate, or look for NaN or inf "
                f"in the data; jaxnn.checking.checked(step) names the first non-finite step.",
                DivergenceWarning,
                stacklevel=2,
            )
        if callback is not None:
            callback(epoch, ts, record)
        if bad and on_nonfinite == "stop":
            break
        if patience is not None and waited >= patience:
            stopped = True
            break
    bar.close()
    if best_epoch <= len(history):  # no epoch of this call beat the earlier ones
        best = ts if diverged is None else start
    return FitResult(ts, best, best_epoch, records, stopped, diverged)
