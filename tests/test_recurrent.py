"""Recurrent cells, the BPTT loop, the recurrent layer and the embedding: the hand backward
equals jax.vjp, masks (padding never reaches a real step; an empty sequence keeps its initial
carry), a sequence of one step, repeated tokens, clear errors, training on both gradient paths
(float32, 100 updates) and clipping through optax."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numerics import RTOL, norm_rel_err

import jaxnn
from jaxnn import recurrent
from jaxnn.recurrent import elman_cell, embedding, gru_cell, lstm_cell, recurrent_layer

CELLS = {
    "elman": lambda h, **kw: elman_cell(h, **kw),
    "lstm": lambda h, **kw: lstm_cell(h, **kw),
    "gru": lambda h, **kw: gru_cell(h, **kw),
}
B, T, I, H = 3, 6, 4, 5


def _draw(kind, seed=0, batch=B, time=T, n_in=I, hidden=H):
    cell = CELLS[kind](hidden)
    k_p, k_x, k_c, k_w = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k_p, n_in)
    x = jax.random.normal(k_x, (batch, time, n_in))
    carry0 = jax.tree.map(
        lambda a, k: jax.random.normal(k, a.shape),
        cell.initial_carry(batch),
        tuple(jax.random.split(k_c, 2)) if kind == "lstm" else k_c,
    )
    return cell, params, x, carry0, k_w


def _cotangents(key, ys, carry):
    k_y, k_c = jax.random.split(key)
    dys = jax.random.normal(k_y, ys.shape)
    leaves, tree = jax.tree.flatten(carry)
    keys = jax.random.split(k_c, len(leaves))
    return dys, tree.unflatten(
        [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)]
    )


def _autodiff(cell, params, x, carry0, mask, dys, dcarry):
    _, vjp = jax.vjp(
        lambda p, x, c: recurrent.scan(cell, p, x, initial_carry=c, seq_mask=mask),
        params,
        x,
        carry0,
    )
    return vjp((dys, dcarry))


def _lengths_mask(lengths, time=T):
    return jnp.arange(time) < jnp.asarray(lengths)[:, None]


# ----------------------------------------------------------------------------- hand = autodiff


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("masked", [False, True])
def test_hand_bptt_equals_jax_vjp_of_the_scan(kind, masked):
    cell, params, x, carry0, key = _draw(kind)
    mask = _lengths_mask([6, 2, 4]) if masked else None
    ys, carry, backward = jax.jit(
        lambda p, x, c: recurrent.scan_vjp(cell, p, x, initial_carry=c, seq_mask=mask)
    )(params, x, carry0)
    ys_ref, carry_ref = recurrent.scan(cell, params, x, initial_carry=carry0, seq_mask=mask)
    assert norm_rel_err((ys, carry), (ys_ref, carry_ref)) <= RTOL
    dys, dcarry = _cotangents(key, ys, carry)
    hand = jax.jit(lambda b, dys, dc: b(dys, dc))(backward, dys, dcarry)  # crosses jit
    assert norm_rel_err(hand, _autodiff(cell, params, x, carry0, mask, dys, dcarry)) <= RTOL


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_the_scan_is_the_cell_step_repeated(kind):
    cell, params, x, carry0, _ = _draw(kind)
    carry, outs = carry0, []
    for t in range(T):
        carry, y = cell.step(params, carry, x[:, t])
        outs.append(y)
    ys, carry_t = recurrent.scan(cell, params, x, initial_carry=carry0)
    assert norm_rel_err((ys, carry_t), (jnp.stack(outs, 1), carry)) <= RTOL


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_sequence_of_one_step_is_one_cell_step_on_both_paths(kind):
    cell, params, x, carry0, key = _draw(kind, time=1)
    ys, carry, backward = recurrent.scan_vjp(cell, params, x, initial_carry=carry0)
    new, y, step_backward = cell.step_vjp(params, carry0, x[:, 0])
    assert norm_rel_err((ys[:, 0], carry), (y, new)) <= RTOL
    dys, dcarry = _cotangents(key, ys, carry)
    dparams, dx, dcarry0 = backward(dys, dcarry)
    s_dparams, s_dcarry0, s_dx = step_backward(dcarry, dys[:, 0])
    assert norm_rel_err((dparams, dx[:, 0], dcarry0), (s_dparams, s_dx, s_dcarry0)) <= RTOL
    assert (
        norm_rel_err((dparams, dx, dcarry0), _autodiff(cell, params, x, carry0, None, dys, dcarry))
        <= RTOL
    )


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_padding_never_changes_a_real_step_output_or_gradient(kind):
    """Each masked sequence gives what it gives alone, cut to its length; padding holds NaN,
    which is never read."""
    cell, params, x, carry0, key = _draw(kind)
    lengths = [6, 2, 4]
    mask = _lengths_mask(lengths)
    x_pad = jnp.where(mask[..., None], x, jnp.nan)
    ys, carry, backward = recurrent.scan_vjp(
        cell, params, x_pad, initial_carry=carry0, seq_mask=mask
    )
    dys, dcarry = _cotangents(key, ys, carry)
    dparams, dx, dcarry0 = backward(dys, dcarry)
    assert not any(
        bool(jnp.isnan(a).any()) for a in jax.tree.leaves((ys, carry, dparams, dx, dcarry0))
    )
    assert bool(jnp.all(ys[~mask] == 0)) and bool(jnp.all(dx[~mask] == 0))
    total = jax.tree.map(jnp.zeros_like, params)
    for b, n in enumerate(lengths):
        one = lambda tree, b=b: jax.tree.map(lambda a: a[b : b + 1], tree)  # noqa: E731
        ys_b, carry_b, backward_b = recurrent.scan_vjp(
            cell, params, x[b : b + 1, :n], initial_carry=one(carry0)
        )
        assert norm_rel_err((ys[b : b + 1, :n], one(carry)), (ys_b, carry_b)) <= RTOL
        dparams_b, dx_b, dcarry0_b = backward_b(dys[b : b + 1, :n], one(dcarry))
        assert norm_rel_err((dx[b : b + 1, :n], one(dcarry0)), (dx_b, dcarry0_b)) <= RTOL
        total = jax.tree.map(jnp.add, total, dparams_b)
    assert norm_rel_err(dparams, total) <= RTOL


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("path", ["hand", "autodiff"])
def test_an_all_zero_mask_keeps_the_initial_carry_with_zero_gradients(kind, path):
    cell, params, x, carry0, key = _draw(kind)
    mask = _lengths_mask([6, 0, 3])
    x = x.at[1].set(jnp.nan)  # an empty sequence's inputs are never read
    ys, carry, backward = recurrent.scan_vjp(cell, params, x, initial_carry=carry0, seq_mask=mask)
    dys, dcarry = _cotangents(key, ys, carry)
    if path == "hand":
        _, dx, dcarry0 = backward(dys, dcarry)
    else:
        _, dx, dcarry0 = _autodiff(cell, params, x, carry0, mask, dys, dcarry)
    row = lambda tree: jax.tree.map(lambda a: a[1], tree)  # noqa: E731
    chex.assert_trees_all_equal(row(carry), row(carry0))  # exactly the initial carry
    assert bool(jnp.all(ys[1] == 0)) and bool(jnp.all(dx[1] == 0))
    chex.assert_trees_all_equal(row(dcarry0), row(dcarry))  # dcarry_0 = dcarry_T
    # The params' gradient is the other sequences' alone.
    if path == "hand":
        rows = lambda tree: jax.tree.map(lambda a: a[::2], tree)  # noqa: E731
        others = recurrent.scan_vjp(
            cell, params, x[::2], initial_carry=rows(carry0), seq_mask=mask[::2]
        )[2](dys[::2], rows(dcarry))[0]
        assert norm_rel_err(backward(dys, dcarry)[0], others) <= RTOL


def test_every_sequence_empty_gives_the_initial_carry_and_no_nan():
    cell, params, x, carry0, key = _draw("lstm")
    mask = jnp.zeros((B, T), bool)
    ys, carry, backward = recurrent.scan_vjp(cell, params, x, initial_carry=carry0, seq_mask=mask)
    chex.assert_trees_all_equal(carry, carry0)
    dparams, dx, _ = backward(*_cotangents(key, ys, carry))
    chex.assert_trees_all_equal(dparams, jax.tree.map(jnp.zeros_like, params))
    assert bool(jnp.all(dx == 0)) and bool(jnp.all(ys == 0))


# ----------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("return_sequences", [True, False])
def test_the_layer_is_the_scan_and_its_backward_is_the_bptt(return_sequences):
    layer = recurrent_layer(gru_cell(H), return_sequences=return_sequences)
    params, state = layer.init(jax.random.key(0), (B, T, I))
    assert state == {} and layer.keywords == ("seq_mask", "initial_carry")
    x = jax.random.normal(jax.random.key(1), (B, T, I))
    mask = _lengths_mask([6, 1, 0])
    y, _, backward = layer.vjp(params, state, x, train=True, seq_mask=mask)
    ys, h_t = recurrent.scan(gru_cell(H), params, x, seq_mask=mask)
    assert norm_rel_err(y, ys if return_sequences else h_t) <= RTOL
    dy = jax.random.normal(jax.random.key(2), y.shape)
    _, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, train=True, seq_mask=mask)[0], params, x)
    assert norm_rel_err(backward(dy), vjp(dy)) <= RTOL


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_a_given_initial_carry_is_held_constant_on_both_paths(grad):
    layer = recurrent_layer(lstm_cell(H), return_sequences=False)
    if grad == "manual":
        layer = jaxnn.manual(layer)
    params, state = layer.init(jax.random.key(0), (B, T, I))
    x = jax.random.normal(jax.random.key(1), (B, T, I))
    carry0 = (jnp.ones((B, H)), -jnp.ones((B, H)))

    def f(carry0):
        return jnp.sum(layer.apply(params, state, x, train=True, initial_carry=carry0)[0])

    zeros = f((jnp.zeros((B, H)), jnp.zeros((B, H))))
    assert float(f(carry0)) != float(zeros)  # it is used
    chex.assert_trees_all_equal(jax.grad(f)(carry0), jax.tree.map(jnp.zeros_like, carry0))


def test_embedding_recurrent_dense_network_both_paths_agree():
    net = jaxnn.serial(
        embedding(7, 4, padding_idx=0),
        recurrent_layer(lstm_cell(H), return_sequences=False),
        jaxnn.dense(3),
    )
    tokens = jax.random.randint(jax.random.key(0), (8, T), 0, 7)
    labels = jax.random.randint(jax.random.key(1), (8,), 0, 3)
    params, state = net.init(jax.random.key(2), tokens.shape)
    mask = _lengths_mask([6, 5, 4, 3, 2, 1, 0, 6])
    out = {}
    for grad in ("autodiff", "manual"):
        vg = jaxnn.value_and_grad(net, "softmax_cross_entropy_with_integer_labels", grad=grad)
        out[grad] = vg(params, state, tokens, labels, train=True, seq_mask=mask)
    assert norm_rel_err(out["autodiff"], out["manual"]) <= RTOL
    (emb,) = [k for k in params if k.startswith("embedding")]
    assert bool(jnp.all(out["manual"][1][emb]["w"][0] == 0))  # the padding row: no gradient


# ----------------------------------------------------------------------------- embedding


def test_embedding_sums_the_gradients_of_repeated_indices():
    layer = embedding(5, 3)
    params, state = layer.init(jax.random.key(0), (2, 4))
    tokens = jnp.array([[1, 1, 4, 1], [0, 4, 1, 2]])
    dy = jax.random.normal(jax.random.key(1), (2, 4, 3))
    y, _, backward = layer.vjp(params, state, tokens, train=False)
    assert norm_rel_err(y, params["w"][tokens]) == 0
    (dparams, dx) = backward(dy)
    expected = np.zeros((5, 3))
    for (b, t), k in np.ndenumerate(np.asarray(tokens)):
        expected[k] += np.asarray(dy[b, t])
    np.testing.assert_allclose(dparams["w"], expected, rtol=1e-15, atol=1e-15)
    assert np.all(np.asarray(dparams["w"])[3] == 0)  # an unused row
    assert dx.dtype == jax.dtypes.float0 and dx.shape == tokens.shape
    auto = jax.grad(lambda p: jnp.sum(dy * layer.apply(p, state, tokens, train=False)[0]))(params)
    assert norm_rel_err(dparams, auto) <= RTOL


def test_embedding_padding_row_starts_at_zero_and_gets_no_gradient_on_either_path():
    layer = embedding(5, 3, padding_idx=-1)  # counts from the end, as PyTorch
    params, state = layer.init(jax.random.key(0), (1, 3))
    assert bool(jnp.all(params["w"][4] == 0))
    tokens = jnp.array([[4, 4, 2]])
    hand = layer.vjp(params, state, tokens, train=True)[2](jnp.ones((1, 3, 3)))[0]
    auto = jax.grad(lambda p: jnp.sum(layer.apply(p, state, tokens, train=True)[0]))(params)
    for g in (hand, auto):
        assert bool(jnp.all(g["w"][4] == 0)) and bool(jnp.all(g["w"][2] == 1))


def test_embedding_refuses_floats_and_out_of_range_indices():
    layer = embedding(5, 3)
    params, state = layer.init(jax.random.key(0), (2,))
    with pytest.raises(
        TypeError, match=r"embedding: x must hold integer token indices, got dtype float"
    ):
        layer.apply(params, state, jnp.array([1.0, 2.0]), train=False)
    with pytest.raises(
        ValueError, match=r"embedding: x holds 1 indices outside \[0, 5\) \(e.g. 5\)"
    ):
        layer.apply(params, state, jnp.array([1, 5]), train=False)
    # Under jit the value is unknown: a NaN row, never a silent clamp to the last row.
    y = jax.jit(lambda x: layer.apply(params, state, x, train=False)[0])(jnp.array([1, 5]))
    assert bool(jnp.all(jnp.isnan(y[1]))) and bool(jnp.all(y[0] == params["w"][1]))
    with pytest.raises(ValueError, match=r"padding_idx=5 is outside the vocabulary"):
        embedding(5, 3, padding_idx=5)


def test_check_layer_needs_the_tokens_of_an_embedding_and_checks_its_params():
    from jaxnn.gradcheck import check_layer

    layer = embedding(4, 2)
    with pytest.raises(
        ValueError, match=r"layer 'embedding' takes integer input .* pass its input as x="
    ):
        check_layer(layer, (2, 3))
    reports = check_layer(layer, (2, 3), x=jnp.array([[3, 3, 0], [1, 3, 2]]))
    assert all(r.ok for r in reports.values())
    assert [leaf.path for leaf in reports["train"].leaves] == ["dparams['w']"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_hidden_size_that_does_not_match_the_params_names_the_layer(kind):
    params = CELLS[kind](4).init(jax.random.key(0), I)
    layer = recurrent_layer(CELLS[kind](H), name="encoder")
    with pytest.raises(
        ValueError, match=rf"'encoder' \({kind} cell, hidden {H}\): w_hh has shape \(4, "
    ):
        layer.apply(params, {}, jnp.zeros((B, T, I)), train=False)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_an_input_size_that_does_not_match_the_params_names_the_layer(kind):
    layer = recurrent_layer(CELLS[kind](H), name="encoder")
    params, _ = layer.init(jax.random.key(0), (B, T, I))
    with pytest.raises(
        ValueError, match=rf"'encoder' .*: the input has 7 features, but w_ih has shape \({I}, "
    ):
        layer.vjp(params, {}, jnp.zeros((B, T, 7)), train=False)


def test_bad_shapes_and_carries_are_refused_clearly():
    cell, params, x, carry0, _ = _draw("lstm")
    with pytest.raises(
        ValueError, match=r"x must be \[batch, time, features\] .* got shape \(6, 4\)"
    ):
        recurrent.scan(cell, params, x[0])
    with pytest.raises(
        ValueError, match=r"seq_mask has shape \(3,\); it must be \[batch, time\] = \(3, 6\)"
    ):
        recurrent.scan(cell, params, x, seq_mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match=r"initial_carry must be the pair \(h, c\)"):
        recurrent.scan(cell, params, x, initial_carry=carry0[0])
    with pytest.raises(
        ValueError,
        match=r"initial_carry c has shape \(3, 2\); it must be \[batch, hidden\] = \(3, 5\)",
    ):
        recurrent.scan(cell, params, x, initial_carry=(carry0[0], jnp.zeros((3, 2))))
    with pytest.raises(TypeError, match=r"recurrent_layer: cell must be a jaxnn recurrent Cell"):
        recurrent_layer(jaxnn.dense(3))
    with pytest.raises(ValueError, match=r"activation 'softmax' is not elementwise"):
        elman_cell(3, activation="softmax")
    with pytest.raises(ValueError, match=r"hidden must be a positive int"):
        lstm_cell(0)
    with pytest.raises(ValueError, match=r"params must be a dict with keys \['w_hh', 'w_ih'\]"):
        recurrent.scan(lstm_cell(H, use_bias=False), params, x)


# ----------------------------------------------------------------------------- training


def _norm(tree):
    return math.sqrt(sum(float(np.sum(np.square(a))) for a in jax.tree.leaves(tree)))


def _lstm_task(seed=0, n=64, time=12, features=3):
    """Sum of the first feature over time: a regression an LSTM learns."""
    x = jax.random.normal(jax.random.key(seed), (n, time, features), jnp.float32)
    return x, jnp.sum(x[:, :, :1], axis=1) / math.sqrt(time)


def test_100_float32_lstm_updates_give_the_same_params_on_both_paths():
    """100 SGD updates of an LSTM regression network in float32, autodiff vs hand BPTT.

    The two gradients are the same formula in a different order of float32 operations, a few
    ulps apart times the gradient's condition (1.5e-7 relative at the first step here). An
    update adds ``lr · g``; while the run is stable (the loss falls at every step: asserted)
    the map from params to params contracts, and the difference stays at the level of one
    step's (7e-8 measured), under the 1e-6 the test asserts. An unstable run separates any
    two trajectories exponentially (at lr 0.05 this one jumps near step 80 and the paths end
    1e-2 apart): that is the dynamics, not the gradients, so the premise is asserted first.
    """
    net = jaxnn.serial(
        recurrent_layer(lstm_cell(8, param_dtype=jnp.float32), return_sequences=False),
        jaxnn.dense(1, param_dtype=jnp.float32),
    )
    x, y = _lstm_task()
    params0, state = net.init(jax.random.key(1), x.shape)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params0))
    opt = optax.sgd(0.03)
    final, losses = {}, {}
    for grad in ("autodiff", "manual"):
        vg = jaxnn.value_and_grad(net, "mean_squared_error", grad=grad)

        def step(carry, _, vg=vg):
            params, opt_state = carry
            (loss, _), g = vg(params, state, x, y, train=True)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), loss_curve = jax.jit(
            lambda p: jax.lax.scan(step, (p, opt.init(p)), None, 100)
        )(params0)
        final[grad], losses[grad] = params, loss_curve
    for curve in losses.values():
        assert bool(jnp.all(jnp.diff(curve) < 0))  # stable: the loss falls at every update
        assert float(curve[-1]) < 0.5 * float(curve[0])  # and it trained
    assert norm_rel_err(final["autodiff"], final["manual"]) <= 1e-6


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_fit_with_optax_clip_by_global_norm_bounds_every_update(grad):
    """``optax.clip_by_global_norm(c)`` before SGD: each update's norm is at most ``lr · c``,
    on both paths; the clip engages (the first gradient's norm exceeds ``c``)."""
    net = jaxnn.serial(
        recurrent_layer(elman_cell(8, param_dtype=jnp.float32), return_sequences=False),
        jaxnn.dense(1, param_dtype=jnp.float32),
    )
    x, y = _lstm_task(n=32)
    lr, c = 0.1, 0.05
    opt = optax.chain(optax.clip_by_global_norm(c), optax.sgd(lr))
    params0, state = net.init(jax.random.key(0), x.shape)
    vg = jaxnn.value_and_grad(net, "mean_squared_error", grad=grad)
    (_, _), g0 = vg(params0, state, x, y, train=True)
    assert float(_norm(g0)) > 2 * c
    ts = jaxnn.TrainState.create(net, opt, jax.random.key(0), params=params0, state=state)
    seen = [jax.tree.map(np.asarray, params0)]
    result = jaxnn.fit(
        net, "mean_squared_error", opt, ts, (x, y), epochs=5, batch_size=32, grad=grad,
        callback=lambda epoch, ts, record: seen.append(jax.tree.map(np.asarray, ts.params)),
    )  # fmt: skip
    assert len(seen) == 6  # one update per epoch (32 examples, batch 32)
    for before, after in itertools.pairwise(seen):
        step = _norm(jax.tree.map(np.subtract, after, before))
        assert float(step) <= lr * c * (1 + 1e-5)
        assert float(step) >= lr * c * (1 - 1e-5)  # clipped: the gradient's norm is above c
    assert np.isfinite(result.history[-1]["loss"])
