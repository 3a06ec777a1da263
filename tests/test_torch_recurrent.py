"""The recurrent cells, the scan over time and the embedding matched to PyTorch 2.13.0.

The fixtures (``tests/fixtures/recurrent_reference.npz`` and ``.json``, written by
``fixtures/make_recurrent_fixtures.py`` from ``torch.nn.RNN`` (tanh, relu), ``torch.nn.LSTM``,
``torch.nn.GRU`` (one layer, ``batch_first=True``; masked cases through
``pack_padded_sequence``/``pad_packed_sequence``) and ``torch.nn.Embedding``, in float32 on the
CPU, not from jaxnn) hold, per case, the input, the initial state, torch's parameters (torch's
names and layout), random cotangents, torch's ``output``, ``h_n`` (``c_n``) and the gradients
w.r.t. the input, the initial state and every parameter of three losses:
``total = Σ cot_out·output + Σ cot_h·h_n (+ Σ cot_c·c_n)``, ``output`` (its first term) and
``h_n`` (its second).

The mapping to jaxnn: ``w_ih = weight_ih_l0.T``, ``w_hh = weight_hh_l0.T``,
``b_ih = bias_ih_l0``, ``b_hh = bias_hh_l0`` (gate blocks in torch's order); carry ``h0[0]``
(LSTM ``(h0[0], c0[0])``), or None for the zero-state cases; ``seq_mask = arange(T) <
lengths``. Each case is checked, compiled with ``jax.jit``, on two paths:

* **hand**: ``recurrent.scan_vjp`` and its backward ``(dys, dcarry_T) -> (dparams, dx,
  dcarry_0)`` against ``total`` (so ``dcarry_0`` is torch's ``h0``/``c0`` gradient);
  ``recurrent_layer(cell).vjp`` against ``output`` and ``recurrent_layer(cell,
  return_sequences=False).vjp`` against ``h_n``; for the length-1 cases also ``cell.step_vjp``
  against ``total``; ``embedding(...).vjp`` (the scatter-add) for the embedding cases;
* **autodiff**: ``jax.vjp`` of ``recurrent.scan`` w.r.t. the params, ``x`` and
  ``initial_carry`` (explicit zeros for the zero-state cases), of each layer's ``apply``, of
  ``cell.step`` and of the embedding's ``apply``.

**The measure and the bound.** ``norm_rel_err(a, b) = max|a - b| / max(max|a|, max|b|)`` per
array (tests/numerics.py), as the other torch fixtures are checked: an elementwise relative
error is meaningless where a true gradient entry is near zero. Both sides are float32 results,
unit roundoff ``u = 2**-24 ≈ 6e-8``. A value here is at most ``T = 7`` steps of dot products
of ``I + H ≤ 11`` terms forward and back, and a weight gradient sums ``B·T ≤ 28`` per-step
terms; with every contraction below 1 in norm at PyTorch's init (``|W| ≤ 1/√H``, ``|tanh'|,
|σ'| ≤ 1``) rounding errors add over the steps instead of growing, so each side is within a
few tens of ``u`` of the exact value at worst (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., §3.1). The generator measured torch's side against torch in float64 on
the same inputs: ``≤ 3.2e-7`` over every value (the JSON's ``max_float32_vs_float64_error``,
required below to stay ``≤ TOL / 2``); jaxnn's side rounds as much, so the two differ by less
than twice that. 1e-6 (17·u) is the bound of the other torch fixtures, and five orders of
magnitude below what a convention error costs: LSTM gates i and f swapped, GRU gates r and z
swapped, ``b_hn`` outside ``r ⊙ (·)``, a transposed ``W_hh``, or a masked case run unmasked
each move the outputs or the weight gradients by 0.15 to 0.9 (norm-wise) on these cases.
"""

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import norm_rel_err

from jaxnn import recurrent
from jaxnn.recurrent import elman_cell, embedding, gru_cell, lstm_cell, recurrent_layer

FIXTURES = Path(__file__).parent / "fixtures"
REF = np.load(FIXTURES / "recurrent_reference.npz")
META = json.loads((FIXTURES / "recurrent_reference.json").read_text())
TOL = 1e-6
RECURRENT = sorted(c for c, m in META["cases"].items() if m["kind"] != "embedding")
EMBEDDING = sorted(c for c, m in META["cases"].items() if m["kind"] == "embedding")
TORCH_PARAMS = {
    "w_ih": "weight_ih_l0",
    "w_hh": "weight_hh_l0",
    "b_ih": "bias_ih_l0",
    "b_hh": "bias_hh_l0",
}


def _arrays(case: str) -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: REF[k] for k in REF.files if k.startswith(case + "/")}


def cell_of(meta: dict):
    """The jaxnn cell of a case: kind, hidden size, activation and bias as recorded."""
    hidden, use_bias = meta["sizes"]["H"], meta["bias"]
    if meta["kind"] == "rnn":
        return elman_cell(hidden, activation=meta["nonlinearity"], use_bias=use_bias)
    return {"lstm": lstm_cell, "gru": gru_cell}[meta["kind"]](hidden, use_bias=use_bias)


def _params(r: dict, prefix: str, use_bias: bool) -> dict[str, np.ndarray]:
    """torch's parameters (or their gradients) in jaxnn's names and orientation."""
    names = TORCH_PARAMS if use_bias else {k: TORCH_PARAMS[k] for k in ("w_ih", "w_hh")}
    return {k: r[prefix + t].T if k.startswith("w_") else r[prefix + t] for k, t in names.items()}


def _carry(r: dict, h: str, c: str, kind: str):
    """A torch state pair ``[1, B, H]`` as jaxnn's carry ``[B, H]`` (LSTM: ``(h, c)``)."""
    return (r[h][0], r[c][0]) if kind == "lstm" else r[h][0]


def _errors(prefix: str, got, want) -> dict[str, float]:
    """``norm_rel_err`` per array, keyed by ``prefix`` and its path in the pytree."""
    leaves = jax.tree_util.tree_leaves_with_path(want)
    got_leaves = jax.tree.leaves(got)
    assert jax.tree.structure(got) == jax.tree.structure(want), (prefix, got, want)
    out = {}
    for (path, w), g in zip(leaves, got_leaves, strict=True):
        assert g.dtype == jnp.float32, (prefix, path, g.dtype)
        out[prefix + jax.tree_util.keystr(path)] = norm_rel_err(g, w)
    return out


def recurrent_errors(case: str, path: str) -> dict[str, float]:
    """``norm_rel_err`` of every jaxnn value (float32, ``path`` "hand" or "autodiff") vs torch."""
    meta = META["cases"][case]
    kind, (B, T, I) = meta["kind"], (meta["sizes"][k] for k in "BTI")
    r = _arrays(case)
    with jax.enable_x64(False):
        cell = cell_of(meta)
        params = jax.tree.map(jnp.asarray, _params(r, "param/", meta["bias"]))
        # The fixture's parameters have exactly the names, shapes and dtype jaxnn's init makes.
        chex.assert_trees_all_equal_shapes_and_dtypes(cell.init(jax.random.key(0), I), params)
        x = jnp.asarray(r["x"])
        given = meta["initial_state"] == "given"
        carry0 = _carry(r, "h0", "c0", kind) if given else None
        mask = None
        if meta["lengths"] is not None:
            mask = jnp.arange(T)[None, :] < jnp.asarray(r["lengths"], jnp.int32)[:, None]
        cot_out = r["cot/output"]
        cot_carry = _carry(r, "cot/h_n", "cot/c_n", kind)
        cot_h = r["cot/h_n"][0]
        seq = recurrent_layer(cell)
        last = recurrent_layer(cell, return_sequences=False)
        assert seq.init(None, x.shape)[1] == {}

        def run(params, x, carry0, mask, cot_out, cot_carry, cot_h):
            def layer_apply(layer):
                return lambda p, x: layer.apply(
                    p, {}, x, train=True, seq_mask=mask, initial_carry=carry0
                )[0]

            if path == "hand":
                ys, carry_t, backward = recurrent.scan_vjp(
                    cell, params, x, initial_carry=carry0, seq_mask=mask
                )
                scan_grads = backward(cot_out, cot_carry)
                layers = {}
                for name, layer, cot in (("seq", seq, cot_out), ("last", last, cot_h)):
                    y, state, layer_backward = layer.vjp(
                        params, {}, x, train=True, seq_mask=mask, initial_carry=carry0
                    )
                    assert state == {}
                    layers[name] = (y, layer_backward(cot))
            else:
                # Zero-state cases: differentiate w.r.t. explicit zeros (None has no gradient).
                c0 = carry0 if carry0 is not None else cell.initial_carry(B, jnp.float32)
                (ys, carry_t), scan_backward = jax.vjp(
                    lambda p, x, c: recurrent.scan(cell, p, x, initial_carry=c, seq_mask=mask),
                    params,
                    x,
                    c0,
                )
                scan_grads = scan_backward((cot_out, cot_carry))
                layers = {}
                for name, layer, cot in (("seq", seq, cot_out), ("last", last, cot_h)):
                    y, layer_backward = jax.vjp(layer_apply(layer), params, x)
                    layers[name] = (y, layer_backward(cot))
            return ys, carry_t, scan_grads, layers

        ys, carry_t, (dparams, dx, dcarry0), layers = jax.jit(run)(
            params, x, carry0, mask, cot_out, cot_carry, cot_h
        )
        if mask is not None:  # padding: outputs and input gradients exactly zero, as torch's
            pad = ~np.asarray(mask)
            assert not np.asarray(ys)[pad].any() and not np.asarray(dx)[pad].any()

        def grads(loss):
            return _params(r, f"grad/{loss}/", meta["bias"]), r[f"grad/{loss}/x"]

        err = {}
        err |= _errors("scan/ys", ys, r["output"])
        err |= _errors("scan/carry_T", carry_t, _carry(r, "h_n", "c_n", kind))
        err |= _errors("scan/dparams", dparams, grads("total")[0])
        err |= _errors("scan/dx", dx, grads("total")[1])
        err |= _errors("scan/dcarry0", dcarry0, _carry(r, "grad/total/h0", "grad/total/c0", kind))
        err |= _errors("seq/y", layers["seq"][0], r["output"])
        err |= _errors("seq/grads", layers["seq"][1], grads("output"))
        err |= _errors("last/y", layers["last"][0], r["h_n"][0])
        err |= _errors("last/grads", layers["last"][1], grads("h_n"))
        if T == 1:
            err |= step_errors(case, path, cell, params, carry0, cot_out[:, 0], cot_carry, r)
        return err


def step_errors(case, path, cell, params, carry0, cot_y, cot_carry, r) -> dict[str, float]:
    """One step (``T = 1``): ``cell.step_vjp``'s backward or ``jax.vjp`` of ``cell.step``
    against torch's ``total`` gradients (``y_1 = h_1``: both cotangents reach it)."""
    kind = META["cases"][case]["kind"]
    x0 = jnp.asarray(r["x"][:, 0])

    def run(params, carry0, x0, cot_carry, cot_y):
        if path == "hand":
            carry, y, backward = cell.step_vjp(params, carry0, x0)
            dparams, dcarry0, dx0 = backward(cot_carry, cot_y)
        else:
            (carry, y), backward = jax.vjp(cell.step, params, carry0, x0)
            dparams, dcarry0, dx0 = backward((cot_carry, cot_y))
        return carry, y, dparams, dcarry0, dx0

    carry, y, dparams, dcarry0, dx0 = jax.jit(run)(params, carry0, x0, cot_carry, cot_y)
    err = _errors("step/y", y, r["output"][:, 0])
    err |= _errors("step/carry", carry, _carry(r, "h_n", "c_n", kind))
    err |= _errors("step/dparams", dparams, _params(r, "grad/total/", cell.config.use_bias))
    err |= _errors("step/dcarry0", dcarry0, _carry(r, "grad/total/h0", "grad/total/c0", kind))
    err |= _errors("step/dx", dx0, r["grad/total/x"][:, 0])
    return err


def embedding_errors(case: str, path: str) -> dict[str, float]:
    """jaxnn's embedding (output and ``dw``) vs ``torch.nn.Embedding``, float32."""
    meta = META["cases"][case]
    r = _arrays(case)
    V, D = r["param/weight"].shape
    with jax.enable_x64(False):
        layer = embedding(V, D, padding_idx=meta["padding_idx"])
        idx = jnp.asarray(r["indices"], jnp.int32)
        params = {"w": jnp.asarray(r["param/weight"])}
        init_params, state = layer.init(jax.random.key(0), idx.shape)
        chex.assert_trees_all_equal_shapes_and_dtypes(init_params, params)
        assert state == {}

        def run(params, idx, cot):
            if path == "hand":
                y, new_state, backward = layer.vjp(params, {}, idx, train=True)
                assert new_state == {}
                dparams, dx = backward(cot)
                assert dx.dtype == jax.dtypes.float0 and dx.shape == idx.shape
            else:
                y, backward = jax.vjp(lambda p: layer.apply(p, {}, idx, train=True)[0], params)
                (dparams,) = backward(cot)
            return y, dparams

        y, dparams = jax.jit(run)(params, idx, jnp.asarray(r["cot/output"]))
        return _errors("y", y, r["output"]) | _errors(
            "dparams", dparams, {"w": r["grad/total/weight"]}
        )


@pytest.mark.parametrize("path", ["hand", "autodiff"])
@pytest.mark.parametrize("case", RECURRENT)
def test_recurrent_matches_torch_in_float32(case, path):
    err = recurrent_errors(case, path)
    assert max(err.values()) <= TOL, (META["cases"][case]["torch"]["module"], err)


@pytest.mark.parametrize("path", ["hand", "autodiff"])
@pytest.mark.parametrize("case", EMBEDDING)
def test_embedding_matches_torch_in_float32(case, path):
    err = embedding_errors(case, path)
    assert max(err.values()) <= TOL, (META["cases"][case]["torch"]["module"], err)


def test_fixtures_cover_every_layer_and_the_issue_cases():
    cases = META["cases"]
    assert META["versions"]["torch"].startswith("2.13.0")
    assert META["max_float32_vs_float64_error"] <= TOL / 2  # the bound's premise (docstring)
    rec = [c for c in cases.values() if c["kind"] != "embedding"]
    assert {c["kind"] for c in cases.values()} == {"rnn", "lstm", "gru", "embedding"}
    assert {c["nonlinearity"] for c in rec if c["kind"] == "rnn"} == {"tanh", "relu"}
    for kind in ("rnn", "lstm", "gru"):
        of_kind = [c for c in rec if c["kind"] == kind]
        assert {c["bias"] for c in of_kind} == {True, False}, kind
        assert {c["initial_state"] for c in of_kind} == {"given", "zero"}, kind
        masked = [c for c in of_kind if c["lengths"] is not None]
        assert {c["initial_state"] for c in masked} == {"given", "zero"}, kind
        assert any(1 in c["lengths"] for c in masked), kind  # a sequence of length 1
        assert any(c["sizes"]["T"] == 1 for c in of_kind), kind  # a batch of length 1
    # padding past every sequence's end (pad_packed_sequence's total_length)
    assert any(max(c["lengths"]) < c["sizes"]["T"] for c in rec if c["lengths"] is not None)
    emb = [c for c in cases.values() if c["kind"] == "embedding"]
    assert all(max(c["index_counts"]) > 1 for c in emb)  # repeated indices
    padded = [c for c in emb if c["padding_idx"] is not None]
    assert all(c["index_counts"][c["padding_idx"]] > 1 for c in padded)
    weights = [REF[f"{n}/param/weight"] for n, c in cases.items() if c in padded]
    assert {bool(w[c["padding_idx"]].any()) for w, c in zip(weights, padded, strict=True)} == {
        True,
        False,
    }  # the padding row zero (torch's init) and not (set by the user)
