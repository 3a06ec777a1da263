"""conv2d, pooling and the norms matched to PyTorch 2.13.0, and BatchNorm over NHWC channels.

The fixtures (``tests/fixtures/layers_reference.npz`` and ``.json``, written by
``fixtures/make_layer_fixtures.py`` from ``torch.nn.functional`` in float32 on the CPU, not
from jaxnn) hold, per case, ``x``, the parameters, a cotangent ``cot``, torch's ``y`` and the
gradients of ``L = sum(cot * y)``, all in jaxnn's layout (NHWC, HWIO kernels). Each case's
jaxnn layer is built from the call its metadata records; its forward, its hand-derived
backward (``layer.vjp(...)[2](cot)``) and ``jax.vjp`` of its ``apply`` (the autodiff path),
each compiled with ``jax.jit``, must equal torch's values in float32.

**The measure and the bound.** ``norm_rel_err(a, b) = max|a - b| / max(max|a|, max|b|)``
per array (tests/numerics.py): an elementwise relative error is meaningless where a true
gradient entry is near zero. Both sides are float32 results, unit roundoff
``u = 2**-24 ≈ 6e-8``. Every stored value is a sum of at most ``n`` rounded terms (``n`` per
case is the JSON's ``longest_reduction``: 4 to 54 here; statistics, convolution windows,
``dw`` over the output positions, ``dgamma`` over the batch). The standard error bound of a
length-``n`` sum is ``n·u`` relative to the sum of the terms' magnitudes (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., §3.1 and §4.2), ``≤ 54·u ≈ 3e-6`` in the
worst case; rounding errors of independent terms add like a random walk, ``√n·u ≈ 4e-7``,
and measured against the largest entry (not the sum of magnitudes) it is smaller still. The
fixture generator's float64 cross-check measured torch's side at ``≤ 3e-7``; 1e-6 (17·u) is
the BatchNorm fixtures' bound, and still three orders of magnitude below what a convention
error costs (a wrong padding, divisor, eps or group assignment moves values by ``≥ 1e-3``).
"""

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import norm_rel_err

from jaxnn.batchnorm import BatchNormState, batchnorm
from jaxnn.conv import conv2d
from jaxnn.norms import groupnorm, layernorm, rmsnorm
from jaxnn.pooling import avg_pool, max_pool

FIXTURES = Path(__file__).parent / "fixtures"
REF = np.load(FIXTURES / "layers_reference.npz")
META = json.loads((FIXTURES / "layers_reference.json").read_text())
BN_REF = np.load(FIXTURES / "batchnorm_reference.npz")
BN_META = json.loads((FIXTURES / "batchnorm_reference.json").read_text())
TOL = 1e-6
FACTORIES = {
    "conv2d": conv2d,
    "max_pool": max_pool,
    "avg_pool": avg_pool,
    "layernorm": layernorm,
    "groupnorm": groupnorm,
    "rmsnorm": rmsnorm,
}


def _tuples(v):
    """JSON lists back to the tuples jaxnn's factories are documented with."""
    return tuple(_tuples(e) for e in v) if isinstance(v, list) else v


def _arrays(ref, case: str) -> dict[str, jax.Array]:
    return {k.split("/", 1)[1]: jnp.asarray(v) for k, v in ref.items() if k.startswith(case + "/")}


def layer_of(case: str):
    """The jaxnn layer the case's metadata names, with the exact arguments recorded."""
    call = META["cases"][case]["jaxnn"]
    args = [_tuples(a) for a in call["args"]]
    return FACTORIES[call["factory"]](*args, **{k: _tuples(v) for k, v in call["kwargs"].items()})


def errors(case: str, path: str) -> dict[str, float]:
    """``norm_rel_err`` of jaxnn (float32, ``path`` = "hand" or "autodiff") vs torch, per array."""
    with jax.enable_x64(False):
        layer = layer_of(case)
        r = _arrays(REF, case)
        params = {p: r[f"param_{p}"] for p in META["cases"][case]["params"]}
        init_params, state = layer.init(jax.random.key(0), r["x"].shape)
        # The fixture's parameters have exactly the names, shapes and dtype jaxnn's init makes.
        chex.assert_trees_all_equal_shapes_and_dtypes(init_params, params)
        assert state == {}

        def run(params, x, cot):
            if path == "hand":
                y, new_state, backward = layer.vjp(params, state, x, train=True)
                assert new_state == {}
            else:
                y, backward = jax.vjp(
                    lambda p, x: layer.apply(p, state, x, train=True)[0], params, x
                )
            return y, backward(cot)

        # Compiled, as training runs it (and one program per case is quicker than op by op).
        y, (dparams, dx) = jax.jit(run)(params, r["x"], r["cot"])
        out = {"y": y, "dx": dx, **{f"grad_{p}": g for p, g in dparams.items()}}
        assert sorted(out) == sorted(k for k in r if k in ("y", "dx") or k.startswith("grad_"))
        for name, v in out.items():
            assert v.dtype == jnp.float32, (name, v.dtype)
        return {name: norm_rel_err(v, r[name]) for name, v in out.items()}


@pytest.mark.parametrize("path", ["hand", "autodiff"])
@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_matches_torch_in_float32(case, path):
    err = errors(case, path)
    assert max(err.values()) <= TOL, (META["cases"][case]["jaxnn"]["call"], err)


def test_fixtures_cover_every_layer_and_the_issue_cases():
    cases = META["cases"]
    assert {c["kind"] for c in cases.values()} == set(FACTORIES)
    assert META["versions"]["torch"].startswith("2.13.0")
    conv = [c["jaxnn"]["kwargs"] for c in cases.values() if c["kind"] == "conv2d"]
    assert {str(k["padding"]) for k in conv} >= {"0", "1", "2", "SAME", "VALID"}
    assert any(isinstance(k["padding"], list) for k in conv)  # explicit asymmetric pairs
    assert any(k["kernel_dilation"] != 1 for k in conv)
    assert any(k["feature_group_count"] == 2 for k in conv)
    assert not all(k["use_bias"] for k in conv)
    depthwise = [
        c
        for c in cases.values()
        if c["kind"] == "conv2d"
        and c["shapes"]["x"][3] == c["jaxnn"]["kwargs"]["feature_group_count"]
    ]
    assert depthwise and all(c["jaxnn"]["args"][0] == 2 * c["shapes"]["x"][3] for c in depthwise)
    assert any(c["ties"] for c in cases.values())
    avg = [
        c["jaxnn"]["kwargs"]["count_include_pad"] for c in cases.values() if c["kind"] == "avg_pool"
    ]
    assert set(avg) == {True, False}
    groups = {
        c["jaxnn"]["args"][0] / c["shapes"]["x"][3]
        for c in cases.values()
        if c["kind"] == "groupnorm"
    }
    assert {1 / 6, 2 / 6, 1.0} <= groups


def _bn_errors(path: str) -> dict[str, float]:
    """jaxnn's batchnorm() (default axis=-1) on NHWC input vs torch.nn.BatchNorm2d on NCHW."""
    case = "torch_bn2d"
    meta = BN_META["cases"][case]
    assert meta["module"] == "torch.nn.BatchNorm2d"
    assert meta["layout_conversion"]["stored_layout"] == "[N, H, W, C]"
    with jax.enable_x64(False):
        layer = batchnorm()  # the defaults: axis=-1, PyTorch's convention, momentum 0.1, eps 1e-5
        assert meta["module_args"] == {"num_features": 3, "eps": 1e-5, "momentum": 0.1}
        r = _arrays(BN_REF, case)
        x, w = r["x_train"][0], r["w_train"][0]
        assert x.ndim == 4  # [N, H, W, C]: the statistics over N, H, W are BatchNorm2d's
        params, state = layer.init(jax.random.key(0), x.shape)
        assert params["gamma"].shape == (x.shape[-1],) and state.mean.dtype == jnp.float32
        params = {"gamma": r["gamma"], "beta": r["beta"]}

        def run(state, x, w, train):
            if path == "hand":
                y, new_state, backward = layer.vjp(params, state, x, train=train)
            else:
                (y, new_state), backward = jax.vjp(
                    lambda p, x: layer.apply(p, state, x, train=train), params, x
                )
                backward = (lambda b: lambda w: b((w, jax.tree.map(jnp.zeros_like, new_state))))(
                    backward
                )
            dparams, dx = backward(w)
            return y, new_state, dparams, dx

        err = {}
        # The first training step, from the initial running statistics (mean 0, var 1).
        y, new_state, dparams, dx = run(state, x, w, True)
        err["train/y"] = norm_rel_err(y, r["y_train"][0])
        err["train/dx"] = norm_rel_err(dx, r["dx_train"][0])
        err["train/dgamma"] = norm_rel_err(dparams["gamma"], r["dgamma_train"][0])
        err["train/dbeta"] = norm_rel_err(dparams["beta"], r["dbeta_train"][0])
        err["train/running_mean"] = norm_rel_err(new_state.mean, r["running_mean"][0])
        err["train/running_var"] = norm_rel_err(new_state.var, r["running_var"][0])
        # The eval step, with torch's running statistics after its last training step.
        steps = r["x_train"].shape[0]
        eval_state = BatchNormState(
            r["running_mean"][steps - 1], r["running_var"][steps - 1], jnp.int32(steps)
        )
        y, same, dparams, dx = run(eval_state, r["x_eval"], r["w_eval"], False)
        chex.assert_trees_all_equal(same, eval_state)
        err["eval/y"] = norm_rel_err(y, r["y_eval"])
        err["eval/dx"] = norm_rel_err(dx, r["dx_eval"])
        err["eval/dgamma"] = norm_rel_err(dparams["gamma"], r["dgamma_eval"])
        err["eval/dbeta"] = norm_rel_err(dparams["beta"], r["dbeta_eval"])
        return err


@pytest.mark.parametrize("path", ["hand", "autodiff"])
def test_batchnorm_over_nhwc_channels_is_axis_minus_one(path):
    # BatchNorm2d normalises each channel over (N, H, W). On channels-last input that is every
    # axis but the last: jaxnn's batchnorm with its default axis=-1, no option needed. Checked
    # against the BatchNorm fixtures' BatchNorm2d case (stored NHWC), forward, gradients and the
    # running statistics of the first training step, and the eval step.
    err = _bn_errors(path)
    assert max(err.values()) <= TOL, err
