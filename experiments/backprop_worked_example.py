"""The source text's worked example of backpropagation, reproduced and audited.

A 2-2-2 network with sigmoid hidden and output units, squared error
``E = Σ ½ (target - out)²``, and gradient descent ``w ← w - η ∂E/∂w``. Inputs, weights,
targets and ``η`` are those of the standard walk-through of this derivation (see
``NETWORK``); biases are not updated, and the hidden layer's gradients use the output weights
from before the update.

The script reports every net input and output, ``E_total``, every ``∂E/∂w`` from the manual
backprop (:func:`jaxnn.backprop.backprop`) and from ``jax.grad``, every updated weight, the
error after the first update, and the error and outputs after 10,000 updates (one compiled
``lax.scan``). Each figure the walk-through publishes is set beside ours; where a figure does
not follow from the method as described, the rule that does produce it is run too and named.
Everything is computed in float64. Run it with ``jaxnn reproduce`` or
``python experiments/backprop_worked_example.py``.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxnn import layers, losses
from jaxnn.backprop import backprop, value_and_grad
from jaxnn.train import TrainState, fit_full_batch, make_train_step, sgd

NUM_STEPS = 10_000
NETWORK = {
    "inputs": [0.05, 0.10],  # i1, i2
    "targets": [0.01, 0.99],  # for o1, o2
    # w1, w2 feed h1 from i1, i2; w3, w4 feed h2; w5, w6 feed o1 from h1, h2; w7, w8 feed o2
    "w": {
        "w1": 0.15,
        "w2": 0.20,
        "w3": 0.25,
        "w4": 0.30,
        "w5": 0.40,
        "w6": 0.45,
        "w7": 0.50,
        "w8": 0.55,
    },
    "b1": 0.35,  # shared by h1 and h2
    "b2": 0.60,  # shared by o1 and o2
    "learning_rate": 0.5,
}
# Where each named weight sits: (layer, row = input index, column = unit index), since a
# dense kernel is [in, out].
WEIGHT_POSITIONS = {
    "w1": ("hidden_0", 0, 0), "w2": ("hidden_0", 1, 0), "w3": ("hidden_0", 0, 1), "w4": ("hidden_0", 1, 1),
    "w5": ("output_2", 0, 0), "w6": ("output_2", 1, 0), "w7": ("output_2", 0, 1), "w8": ("output_2", 1, 1),
}  # fmt: skip
# The figures the published walk-through prints, as strings so that their printed digits
# are known exactly.
PUBLISHED = {
    "E_total": "0.298371109",
    "dE/dw5": "0.082167041",
    "w5 after one update": "0.35891648",
    "w1 after one update": "0.149780716",
    "E_total after one update": "0.291027924",
    "E_total after 10,000 updates": "0.0000351085",
    "out_o1 after 10,000 updates": "0.015912196",
    "out_o2 after 10,000 updates": "0.984065734",
}

STATED = "stated method"
SEQUENTIAL = "sequential update"
LOGGED = "loss logged by the last iteration"
RULES = {
    STATED: "the method as described: every gradient from one forward pass, the hidden layer's "
    "through the output weights from before the update, then all weights updated; the error is "
    "that of a fresh forward pass after the updates",
    SEQUENTIAL: "the output layer is updated first and the hidden layer's gradient is then "
    "backpropagated through the already-updated output weights",
    LOGGED: "the stated method, but the error is the one a training loop computes in the forward "
    "pass of its 10,000th iteration, before that iteration's update (i.e. after 9,999 updates)",
}


def build() -> tuple[list[layers.Layer], layers.Layer]:
    """The network as jaxnn layers, with the published weights set exactly."""
    w, n = NETWORK["w"], NETWORK
    hidden = layers.dense(
        2,
        w_init=layers.given([[w["w1"], w["w3"]], [w["w2"], w["w4"]]]),
        b_init=layers.constant(n["b1"]),
        param_dtype=jnp.float64,
        name="hidden",
    )
    output = layers.dense(
        2,
        w_init=layers.given([[w["w5"], w["w7"]], [w["w6"], w["w8"]]]),
        b_init=layers.constant(n["b2"]),
        param_dtype=jnp.float64,
        name="output",
    )
    parts = [hidden, layers.activation("sigmoid"), output, layers.activation("sigmoid")]
    return parts, layers.serial(*parts, name="net")


def _weights(params: dict[str, Any]) -> dict[str, float]:
    return {
        name: float(params[layer]["w"][i, j]) for name, (layer, i, j) in WEIGHT_POSITIONS.items()
    }


def _trainable(path: tuple[Any, ...], leaf: jax.Array) -> bool:
    del leaf
    return path[-1].key == "w"  # biases are not updated


def _sequential_step(parts: list[layers.Layer], learning_rate: float):
    """One update under the sequential rule, written with the layers' own hand-derived VJPs."""
    hidden, sig, output, _ = parts

    def step(params: dict[str, Any], x: jax.Array, targets: jax.Array):
        ph, po = params["hidden_0"], params["output_2"]
        net_h, _, back_h = hidden.vjp(ph, {}, x)
        out_h, _, back_sh = sig.vjp({}, {}, net_h)
        net_o, _, _ = output.vjp(po, {}, out_h)
        out_o, _, back_so = sig.vjp({}, {}, net_o)
        error = losses.squared_error(out_o, targets)
        _, delta_o = back_so(losses.squared_error_grad(out_o, targets))
        _, _, back_o = output.vjp(po, {}, out_h)
        grads_o, _ = back_o(delta_o)
        po_new = {"w": po["w"] - learning_rate * grads_o["w"], "b": po["b"]}
        _, _, back_o_new = output.vjp(po_new, {}, out_h)  # through the updated weights
        _, d_out_h = back_o_new(delta_o)
        _, delta_h = back_sh(d_out_h)
        grads_h, _ = back_h(delta_h)
        ph_new = {"w": ph["w"] - learning_rate * grads_h["w"], "b": ph["b"]}
        return {**params, "hidden_0": ph_new, "output_2": po_new}, error

    return step


def _matches(value: float, published: str) -> bool:
    """Whether ``value`` rounds to ``published`` at its printed number of decimals."""
    decimals = -Decimal(published).as_tuple().exponent
    return abs(Decimal(repr(value)) - Decimal(published)) <= Decimal(5) * Decimal(10) ** -(
        decimals + 1
    )


def run() -> dict[str, Any]:
    """Compute every figure of the example. Returns a JSON-ready dict."""
    with jax.enable_x64(True):
        parts, net = build()
        x = jnp.asarray([NETWORK["inputs"]], jnp.float64)  # [batch=1, 2]
        targets = jnp.asarray([NETWORK["targets"]], jnp.float64)
        eta = NETWORK["learning_rate"]
        params, state = net.init(jax.random.key(0), x.shape)

        # Forward pass, layer by layer, to show every net input and output.
        hidden, sig, output, _ = parts
        net_h, _ = hidden.apply(params["hidden_0"], {}, x)
        out_h, _ = sig.apply({}, {}, net_h)
        net_o, _ = output.apply(params["output_2"], {}, out_h)
        out_o, _ = sig.apply({}, {}, net_o)
        e_each = 0.5 * (targets - out_o) ** 2
        forward = {
            "net_h1": net_h[0, 0], "out_h1": out_h[0, 0], "net_h2": net_h[0, 1], "out_h2": out_h[0, 1],
            "net_o1": net_o[0, 0], "out_o1": out_o[0, 0], "net_o2": net_o[0, 1], "out_o2": out_o[0, 1],
            "E_o1": e_each[0, 0], "E_o2": e_each[0, 1], "E_total": jnp.sum(e_each),
        }  # fmt: skip
        forward = {k: float(v) for k, v in forward.items()}

        # Gradients: the manual reverse loop, jax.grad, and jax.grad on the hand-derived rules.
        e_total, g_manual, _ = backprop(net, "squared_error", params, state, x, targets)
        (_, _), g_auto = value_and_grad(net, "squared_error", grad="autodiff")(
            params, state, x, targets
        )
        (_, _), g_custom = value_and_grad(net, "squared_error", grad="manual")(
            params, state, x, targets
        )
        gm, ga, gc = _weights(g_manual), _weights(g_auto), _weights(g_custom)
        gradients = {
            f"dE/d{name}": {
                "manual backprop": gm[name],
                "jax.grad": ga[name],
                "jax.grad on hand-derived rules": gc[name],
                "manual - jax.grad": gm[name] - ga[name],
            }
            for name in WEIGHT_POSITIONS
        }
        for layer_name, bias in (("hidden_0", "b1"), ("output_2", "b2")):
            gradients[f"dE/d{bias} (not applied)"] = {
                "manual backprop": [float(v) for v in g_manual[layer_name]["b"]],
                "jax.grad": [float(v) for v in g_auto[layer_name]["b"]],
            }

        # Training: SGD on the kernels only, as one compiled scan.
        optimizer = sgd(eta, trainable=_trainable)
        step = make_train_step(net, "squared_error", optimizer, grad="manual")
        ts0 = TrainState(params, state, optimizer.init(params))
        ts1, _ = step(ts0, x, targets)
        updated = _weights(ts1.params)
        out_1, _ = net.apply(ts1.params, state, x)
        e_after_1 = float(losses.squared_error(out_1, targets))
        ts_n, logged = fit_full_batch(step, ts0, x, targets, NUM_STEPS)
        out_n, _ = net.apply(ts_n.params, state, x)
        e_after_n = float(losses.squared_error(out_n, targets))

        # The sequential rule, also as one compiled scan.
        seq = _sequential_step(parts, eta)

        @jax.jit
        def seq_run(params: dict[str, Any]):
            return jax.lax.scan(lambda p, _: seq(p, x, targets), params, None, length=NUM_STEPS)

        seq_params_1, _ = jax.jit(seq)(params, x, targets)
        seq_e_1 = float(losses.squared_error(net.apply(seq_params_1, state, x)[0], targets))
        seq_params_n, _ = seq_run(params)
        seq_out_n, _ = net.apply(seq_params_n, state, x)
        seq_e_n = float(losses.squared_error(seq_out_n, targets))

    ours = {
        "E_total": {STATED: forward["E_total"]},
        "dE/dw5": {STATED: gm["w5"]},
        "w5 after one update": {STATED: updated["w5"]},
        "w1 after one update": {STATED: updated["w1"]},
        "E_total after one update": {STATED: e_after_1, SEQUENTIAL: seq_e_1},
        "E_total after 10,000 updates": {
            STATED: e_after_n,
            SEQUENTIAL: seq_e_n,
            LOGGED: float(logged[-1]),
        },
        "out_o1 after 10,000 updates": {
            STATED: float(out_n[0, 0]),
            SEQUENTIAL: float(seq_out_n[0, 0]),
        },
        "out_o2 after 10,000 updates": {
            STATED: float(out_n[0, 1]),
            SEQUENTIAL: float(seq_out_n[0, 1]),
        },
    }
    comparison = {}
    for figure, published in PUBLISHED.items():
        candidates = ours[figure]
        comparison[figure] = {
            "published": published,
            "jaxnn": candidates[STATED],
            "jaxnn - published": candidates[STATED] - float(published),
            "follows from the stated method": _matches(candidates[STATED], published),
            "other rules": {r: v for r, v in candidates.items() if r != STATED},
            "reproduced by": [r for r, v in candidates.items() if _matches(v, published)],
        }
    return {
        "network": NETWORK,
        "forward": forward,
        "E_total (manual backprop)": float(e_total),
        "gradients": gradients,
        "max |manual - jax.grad|": max(
            abs(g["manual - jax.grad"]) for k, g in gradients.items() if "not applied" not in k
        ),
        "updated weights": updated,
        "E_total after one update": e_after_1,
        "after 10,000 updates": {
            "E_total": e_after_n,
            "E_total logged by the last iteration (after 9,999 updates)": float(logged[-1]),
            "out_o1": float(out_n[0, 0]),
            "out_o2": float(out_n[0, 1]),
        },
        "sequential rule": {
            "E_total after one update": seq_e_1,
            "E_total after 10,000 updates": seq_e_n,
            "out_o1 after 10,000 updates": float(seq_out_n[0, 0]),
            "out_o2 after 10,000 updates": float(seq_out_n[0, 1]),
        },
        "rules": RULES,
        "published vs jaxnn": comparison,
        "all published figures accounted for": all(c["reproduced by"] for c in comparison.values()),
    }


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    lines = ["Forward pass"]
    lines += [f"  {k:<8} {v:.9f}" for k, v in result["forward"].items()]
    lines.append("Gradients: manual backprop vs jax.grad")
    for k, g in result["gradients"].items():
        if "not applied" in k:
            continue
        lines.append(
            f"  {k:<7} {g['manual backprop']: .12f}  {g['jax.grad']: .12f}  diff {g['manual - jax.grad']: .1e}"
        )
    lines.append("Weights after one update (eta = 0.5, biases fixed)")
    lines += [f"  {k}  {v:.9f}" for k, v in result["updated weights"].items()]
    lines.append(f"E_total after one update  {result['E_total after one update']:.9f}")
    after = result["after 10,000 updates"]
    lines.append(
        f"After 10,000 updates: E_total {after['E_total']:.10f}, out_o1 {after['out_o1']:.9f}, "
        f"out_o2 {after['out_o2']:.9f}"
    )
    lines.append("")
    lines.append("Published figure vs jaxnn (stated method), and which rule reproduces it")
    header = f"  {'figure':<30} {'published':>13} {'jaxnn':>16} {'difference':>11}  reproduced by"
    lines.append(header)
    for figure, c in result["published vs jaxnn"].items():
        by = ", ".join(c["reproduced by"]) or "NOTHING"
        lines.append(
            f"  {figure:<30} {c['published']:>13} {c['jaxnn']:>16.12f} {c['jaxnn - published']:>11.1e}  {by}"
        )
    lines.append("Rules:")
    lines += [f"  {name}: {text}." for name, text in result["rules"].items()]
    return "\n".join(lines)


def main(out_dir: Path | str = "results") -> dict[str, Any]:
    result = run()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "backprop_worked_example.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
