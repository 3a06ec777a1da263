"""The vanishing-gradients experiment: its files, its verdicts, and its gradients.

The quick run is made once. Its verdicts are recomputed here from the numbers it recorded,
with the rules' formulas written out again (not the module's helpers). Its per-layer
gradients are checked against ``jax.grad`` on small float64 networks (the conftest enables
x64): ``∂L/∂W_l`` against ``jax.grad`` w.r.t. the params, ``δ_l = ∂L/∂z_l`` against
``jax.grad`` w.r.t. a zero added to each dense layer's output. A tiny 3-layer sigmoid network
is worked in numpy, float64, where the bound ``‖δ_l‖ ≤ (1/4)‖W_{l+1}‖₂ ‖δ_{l+1}‖`` is attained.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn_experiments.vanishing_gradients as vg
from jaxnn import losses, mlp
from jaxnn.combinators import layer_keys
from jaxnn.gradcheck import RTOL

pytestmark = pytest.mark.slow  # the experiment's quick run


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
U32 = 2.0**-24
TINY32 = float(np.finfo(np.float32).tiny)
EPS64 = 2.0**-52


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("vanishing_gradients")
    result = vg.main(path, quick=True)
    return path, result


@pytest.fixture(scope="module")
def res(out):
    return out[1]


def _checkpoints(res, act=None, bn=None):
    """(depth, act, init, bn, checkpoint record) for every recorded checkpoint."""
    for depth_key, by_act in res["runs"].items():
        for a, by_init in by_act.items():
            for init, by_bn in by_init.items():
                for b, entry in by_bn.items():
                    if (act is None or a == act) and (bn is None or b == bn):
                        for rec in entry["checkpoints"]:
                            yield int(depth_key.removeprefix("depth_")), a, init, b, rec


# ----------------------------------------------------------------------------- files


def test_files_and_json(out):
    path, result = out
    png = (path / f"{vg.NAME}.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    written = json.loads((path / f"{vg.NAME}.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["quick"] is True and written["rules"] == vg.RULES
    assert written["labels"] == vg.LABELS
    assert written["setup"]["depths"] == list(vg.QUICK_DEPTHS)


def test_every_network_recorded_at_every_checkpoint(res):
    for depth in vg.QUICK_DEPTHS:
        for act, bn in vg.QUICK_NETWORKS:
            for init in vg.INITS:
                entry = res["runs"][f"depth_{depth}"][act][init][bn]
                assert [r["epoch"] for r in entry["checkpoints"]] == list(vg.QUICK_CHECKPOINTS)
                assert len(entry["history"]) == vg.QUICK_EPOCHS
                for rec in entry["checkpoints"]:
                    assert len(rec["grad_w_norm"]) == len(rec["delta_norm"]) == depth
                    assert len(rec["dact_max"]) == depth - 1


# ----------------------------------------------------------------------------- verdicts


def _gamma(k):
    return k * U32 / (1 - k * U32)


def _within(rec, i, m):
    """‖δ_l‖ <= m (‖W_{l+1}‖₂ + γ_{n+4}‖|W_{l+1}|‖₂)‖δ_{l+1}‖ + √(B n_l)(2n + 2) t, l = i + 1."""
    d, w2, wabs = rec["delta_norm"], rec["w_spectral_norm"], rec["w_abs_spectral_norm"]
    n, n_l, b = rec["fan_out"][i + 1], rec["fan_out"][i], rec["batch"]
    values = (d[i], d[i + 1], w2[i + 1], wabs[i + 1], m)
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    rhs = m * (w2[i + 1] + _gamma(n + 4) * wabs[i + 1]) * d[i + 1]
    return d[i] <= rhs + math.sqrt(b * n_l) * (2 * n + 2) * TINY32


def test_claim_a_recomputed(res):
    checked = violations = 0
    for _, _, _, _, rec in _checkpoints(res, "sigmoid", "no_bn"):
        for i in range(len(rec["delta_norm"]) - 1):
            ok = _within(rec, i, 0.25)
            checked += 1
            violations += not ok
            assert rec["ok_quarter"][i] == bool(ok)
            # The recorded ratio and bound are what the figure shows.
            d = rec["delta_norm"]
            assert rec["delta_ratio"][i] == pytest.approx(d[i] / d[i + 1], rel=4 * EPS64)
            assert rec["bound_quarter"][i] == pytest.approx(0.25 * rec["w_spectral_norm"][i + 1])
    a = res["decisions"]["claim_a"]
    assert (a["checked"], a["violations"]) == (checked, violations)
    assert checked > 0
    assert a["holds"] == (violations == 0)
    assert res["claims"][0]["holds"] == a["holds"]


def test_general_bound_recomputed(res):
    checked = violations = non_finite = 0
    for _, _, _, _, rec in _checkpoints(res, bn="no_bn"):
        for i in range(len(rec["delta_norm"]) - 1):
            ok = _within(rec, i, rec["dact_max"][i]) if rec["dact_max"][i] is not None else None
            checked += 1
            non_finite += ok is None
            violations += not ok
    g = res["decisions"]["general_bound"]
    assert (g["checked"], g["violations"], g["non_finite"]) == (checked, violations, non_finite)


def _first_over_last(rec):
    return rec["grad_w_norm"][0] / rec["grad_w_norm"][-1]


def test_claims_b_c_d_recomputed(res):
    depth = max(vg.QUICK_DEPTHS)
    deep = res["runs"][f"depth_{depth}"]

    def at_init(act, bn):
        rec = deep[act]["standard"][bn]["checkpoints"][0]
        assert rec["epoch"] == 0
        assert rec["first_over_last"] == pytest.approx(_first_over_last(rec), rel=4 * EPS64)
        return _first_over_last(rec)

    base, with_bn, relu = (
        at_init("sigmoid", "no_bn"),
        at_init("sigmoid", "bn"),
        at_init("relu", "no_bn"),
    )
    holds = {
        "claim_b": base < vg.VANISHING_THRESHOLD,
        "claim_c": with_bn >= vg.MITIGATION_FACTOR * base,
        "claim_d": relu >= vg.MITIGATION_FACTOR * base,
    }
    for i, key in enumerate(("claim_b", "claim_c", "claim_d"), start=1):
        assert res["decisions"][key]["holds"] == holds[key]
        assert res["claims"][i]["holds"] == holds[key]
        assert res["claims"][i]["rule"] == vg.RULES[key]
    assert res["decisions"]["claim_b"]["depth"] == depth
    assert res["claims"][0]["rule"] == vg.RULES["claim_a"]


def test_geometric_means_recomputed(res):
    for _, _, _, _, rec in _checkpoints(res):
        ratios = rec["delta_ratio"]
        if rec["geometric_mean_ratio"] is None:
            assert any(r is None or not r > 0 for r in ratios)
            continue
        d = rec["delta_norm"]
        expected = (d[0] / d[-1]) ** (1 / (len(d) - 1))  # the product telescopes
        assert rec["geometric_mean_ratio"] == pytest.approx(expected, rel=64 * EPS64)


# ----------------------------------------------------------------------------- gradients


def _perturbed_loss(net, params, state, x, y, eps):
    """The loss with ``eps[name]`` added to each dense layer's output (zeros: the loss)."""
    h = x
    for i, layer in enumerate(net.children):
        name = f"{layer.name}_{i}"
        h, _ = layer.apply(params.get(name, {}), state.get(name, {}), h, train=True)
        if layer.name == "dense":
            h = h + eps[name]
    return losses.get(vg.LOSS).fn(h, y)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize(
    ("act", "bn"), [("sigmoid", False), ("tanh", False), ("relu", False), ("sigmoid", True)]
)
def test_layer_gradients_equal_jax_grad(act, bn):
    depth, width, batch, classes = 4, 6, 7, 3
    net = mlp([width] * (depth - 1) + [classes], act, batchnorm=bn, param_dtype=jnp.float64)
    k_init, k_x, k_y = jax.random.split(jax.random.key(3), 3)
    params, state = net.init(k_init, (batch, 4))
    x = jax.random.normal(k_x, (batch, 4), jnp.float64)
    y = jax.random.randint(k_y, (batch,), 0, classes)
    dense = layer_keys(net, "dense")
    eps = {n: jnp.zeros((batch, params[n]["w"].shape[1]), jnp.float64) for n in dense}

    @jax.jit  # one compilation (eager, every small op would be compiled on its own)
    def both(params, eps):
        def loss(p, e):
            return _perturbed_loss(net, p, state, x, y, e)

        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, eps)
        return vg.layer_gradients(net, act, params, state, x, y), value, grads

    got, loss, (g_params, g_eps) = both(params, eps)
    assert len(got["grad_w"]) == len(got["delta"]) == depth
    for n, grad_w, delta in zip(dense, got["grad_w"], got["delta"], strict=True):
        assert _rel(grad_w, g_params[n]["w"]) <= RTOL
        assert _rel(delta, g_eps[n]) <= RTOL
    assert float(got["loss"]) == pytest.approx(float(loss), rel=RTOL)

    # The record's norms are those of these arrays, in float64.
    rec = vg.checkpoint_record(net, act, bn, {**got, "val_accuracy": 0.5}, params, 0)
    for i, n in enumerate(dense):
        assert rec["grad_w_norm"][i] == pytest.approx(
            float(np.linalg.norm(g_params[n]["w"])), rel=RTOL
        )
        assert rec["delta_norm"][i] == pytest.approx(float(np.linalg.norm(g_eps[n])), rel=RTOL)
        assert rec["w_spectral_norm"][i] == pytest.approx(
            float(np.linalg.svd(np.asarray(params[n]["w"]), compute_uv=False)[0]), rel=1e-12
        )
    if not bn:  # the general bound holds with plenty of room in float64
        assert all(rec["ok_general"])


def test_tiny_sigmoid_network_bound_by_hand():
    """3 dense layers 2 -> 2 -> 2 -> 2, batch 2, worked in numpy float64.

    ``W_2 = 0`` puts every ``z_2`` at 0, where ``σ' = 1/4`` exactly, and ``W_3 = c I`` makes
    ``‖δ_3 W_3ᵀ‖ = c ‖δ_3‖``: the bound ``‖δ_2‖ ≤ (1/4)‖W_3‖₂ ‖δ_3‖`` is attained.
    """
    c = 3.0
    w = [np.array([[0.5, -1.0], [2.0, 0.25]]), np.zeros((2, 2)), c * np.eye(2)]
    b = [np.array([0.1, -0.2]), np.zeros(2), np.array([0.3, -0.1])]
    x = np.array([[1.0, -2.0], [0.5, 1.5]])
    y = np.array([0, 1])

    def sig(z):
        return 1 / (1 + np.exp(-z))

    z1 = x @ w[0] + b[0]
    z2 = sig(z1) @ w[1] + b[1]
    z3 = sig(z2) @ w[2] + b[2]
    p = np.exp(z3 - z3.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d3 = (p - np.eye(2)[y]) / 2
    d2 = sig(z2) * (1 - sig(z2)) * (d3 @ w[2].T)
    d1 = sig(z1) * (1 - sig(z1)) * (d2 @ w[1].T)
    assert np.all(sig(z2) * (1 - sig(z2)) == 0.25)
    ratio = np.linalg.norm(d2) / np.linalg.norm(d3)
    bound = 0.25 * np.linalg.svd(w[2], compute_uv=False)[0]
    assert bound == 0.25 * c
    assert ratio == pytest.approx(bound, rel=8 * EPS64)  # attained, to rounding
    assert np.linalg.norm(d1) == 0.0

    net = mlp([2, 2, 2], "sigmoid", param_dtype=jnp.float64)
    params, state = net.init(jax.random.key(0), (2, 2))
    for i, name in enumerate(("dense_0", "dense_2", "dense_4")):
        params[name] = {"w": jnp.asarray(w[i]), "b": jnp.asarray(b[i])}
    got = jax.jit(vg.layer_gradients, static_argnums=(0, 1))(net, "sigmoid", params, state, x, y)
    for mine, theirs in zip(got["delta"], (d1, d2, d3), strict=True):
        np.testing.assert_allclose(
            np.asarray(mine), theirs, rtol=RTOL, atol=RTOL * np.abs(d3).max()
        )
    rec = vg.checkpoint_record(net, "sigmoid", False, {**got, "val_accuracy": 0.0}, params, 0)
    assert rec["delta_ratio"][1] == pytest.approx(ratio, rel=RTOL)
    assert rec["bound_quarter"][1] == pytest.approx(bound, rel=1e-12)
    assert rec["dact_max"][1] == 0.25
    assert rec["ok_quarter"] == [True, True]
    # The float32 slack the rule allows is γ_{n+4}·(1/4)‖|W|‖₂ (+ the underflow term).
    assert rec["slack_quarter"][1] == pytest.approx(
        0.25 * _gamma(2 + 4) * c + math.sqrt(2 * 2) * 6 * TINY32 / np.linalg.norm(d3), rel=1e-12
    )
