"""The source text's worked example of backpropagation, reproduced and audited.

A 2-2-2 network with sigmoid hidden and output units, squared error
``E = Σ ½ (target − out)²``, and gradient descent ``w ← w − η ∂E/∂w`` on the eight weights
(the biases are not updated). Inputs, weights, targets and ``η`` are the walk-through's
(``NETWORK``). In float64 it computes every net input and output, every ``∂E/∂w`` three ways
(the manual reverse loop :func:`jaxnn.backprop.backprop`, ``jax.grad``, and ``jax.grad`` on
the hand-derived rules), the weights after one update, and the error and outputs after one and
after ``NUM_STEPS`` updates (one compiled ``lax.scan``) under each rule of ``RULES``. Each
published figure (``PUBLISHED``) is then matched, to its printed digits, against every rule
that computes it; docs/experiments.md (`backprop_worked_example`) says what that finds.

Run it with ``jaxnn reproduce`` or ``python -m jaxnn_experiments.backprop_worked_example``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxnn import Layer, activation, dense, intermediates, losses, serial
from jaxnn.backprop import backprop, value_and_grad
from jaxnn.initializers import constant, given
from jaxnn.optim import sgd
from jaxnn.train import TrainState, fit_full_batch, make_train_step
from jaxnn_experiments import common

NAME = "backprop_worked_example"
NUM_STEPS = 10_000
NETWORK = {
    "inputs": [0.05, 0.10],  # i1, i2
    "targets": [0.01, 0.99],  # for o1, o2
    # w1, w2 feed h1 from i1, i2; w3, w4 feed h2; w5, w6 feed o1 from h1, h2; w7, w8 feed o2
    "w": {"w1": 0.15, "w2": 0.20, "w3": 0.25, "w4": 0.30,
          "w5": 0.40, "w6": 0.45, "w7": 0.50, "w8": 0.55},
    "b1": 0.35,  # shared by h1 and h2
    "b2": 0.60,  # shared by o1 and o2
    "learning_rate": 0.5,
}  # fmt: skip
# Where each named weight sits: (layer key, row = input index, column = unit index), since a
# dense kernel is [in, out].
WEIGHT_POSITIONS = {
    "w1": ("hidden_0", 0, 0), "w2": ("hidden_0", 1, 0), "w3": ("hidden_0", 0, 1), "w4": ("hidden_0", 1, 1),
    "w5": ("output_2", 0, 0), "w6": ("output_2", 1, 0), "w7": ("output_2", 0, 1), "w8": ("output_2", 1, 1),
}  # fmt: skip
# The figures the walk-through prints, as strings so that their printed digits are known.
PUBLISHED = {
    "e_total": "0.298371109",
    "de_dw5": "0.082167041",
    "w5_after_1": "0.35891648",
    "w1_after_1": "0.149780716",
    "e_total_after_1": "0.291027924",
    "e_total_after_n": "0.0000351085",
    "out_o1_after_n": "0.015912196",
    "out_o2_after_n": "0.984065734",
}
RULES = {
    "stated": "the method as described: every gradient from one forward pass, the hidden "
    "layer's through the output weights from before the update, then all weights updated; the "
    "error is that of a fresh forward pass after the updates",
    "sequential": "the output layer is updated first and the hidden layer's gradient is then "
    "backpropagated through the already-updated output weights",
    "logged": f"the stated method, but the error is the one a training loop computes in the "
    f"forward pass of its {NUM_STEPS:,}th iteration, before that iteration's update (i.e. "
    f"after {NUM_STEPS - 1:,} updates)",
}
LABELS = {
    "net_h1": "net_h1 = w1 i1 + w2 i2 + b1",
    "out_h1": "out_h1 = σ(net_h1)",
    "net_h2": "net_h2 = w3 i1 + w4 i2 + b1",
    "out_h2": "out_h2 = σ(net_h2)",
    "net_o1": "net_o1 = w5 out_h1 + w6 out_h2 + b2",
    "out_o1": "out_o1 = σ(net_o1)",
    "net_o2": "net_o2 = w7 out_h1 + w8 out_h2 + b2",
    "out_o2": "out_o2 = σ(net_o2)",
    "e_o1": "E_o1 = ½ (target_o1 − out_o1)²",
    "e_o2": "E_o2 = ½ (target_o2 − out_o2)²",
    "e_total": "E_total = E_o1 + E_o2",
    "e_total_backprop": "E_total returned by the manual backprop",
    "manual": "manual backprop",
    "autodiff": "jax.grad",
    "autodiff_on_hand_rules": "jax.grad on the hand-derived rules",
    "bias_gradients": "∂E/∂b1, ∂E/∂b2 (not applied: the biases stay fixed)",
    "max_abs_manual_minus_autodiff": "max |manual backprop − jax.grad| over ∂E/∂w1…w8",
    "updated_weights": f"weights after one update (η = {NETWORK['learning_rate']})",
    "de_dw5": "∂E/∂w5",
    "w5_after_1": "w5 after one update",
    "w1_after_1": "w1 after one update",
    "e_total_after_1": "E_total after one update",
    "e_total_after_n": f"E_total after {NUM_STEPS:,} updates",
    "out_o1_after_n": f"out_o1 after {NUM_STEPS:,} updates",
    "out_o2_after_n": f"out_o2 after {NUM_STEPS:,} updates",
    "stated": "stated method",
    "sequential": "sequential update",
    "logged": "loss logged by the last iteration",
    "published": "published",
    "reproduced_by": "reproduced by (to the printed digits)",
    "all_published_reproduced": "every published figure is reproduced by some rule",
}


def build() -> tuple[list[Layer], Layer]:
    """The network's four layers and their composition, with the published weights set."""
    w, n = NETWORK["w"], NETWORK
    hidden = dense(
        2,
        w_init=given([[w["w1"], w["w3"]], [w["w2"], w["w4"]]]),
        b_init=constant(n["b1"]),
        param_dtype=jnp.float64,
        name="hidden",
    )
    output = dense(
        2,
        w_init=given([[w["w5"], w["w7"]], [w["w6"], w["w8"]]]),
        b_init=constant(n["b2"]),
        param_dtype=jnp.float64,
        name="output",
    )
    parts = [hidden, activation("sigmoid"), output, activation("sigmoid")]
    return parts, serial(*parts, name="net")


def weights_only(path: tuple[Any, ...], leaf: jax.Array) -> bool:
    """``sgd``'s ``trainable``: the kernels train, the biases stay fixed."""
    del leaf
    return path[-1].key == "w"


def _weights(params: dict[str, Any]) -> dict[str, float]:
    return {
        name: float(params[layer]["w"][i, j]) for name, (layer, i, j) in WEIGHT_POSITIONS.items()
    }


def _floats(a: jax.Array) -> list[float]:
    return [float(v) for v in a]


def _sequential_step(parts: list[Layer], learning_rate: float):
    """One update under the sequential rule, written with the layers' own hand-derived VJPs."""
    hidden, sig, output, _ = parts

    def step(params: dict[str, Any], x: jax.Array, targets: jax.Array):
        ph, po = params["hidden_0"], params["output_2"]
        net_h, _, back_h = hidden.vjp(ph, {}, x, train=True)
        out_h, _, back_sh = sig.vjp({}, {}, net_h, train=True)
        net_o, _, back_o = output.vjp(po, {}, out_h, train=True)
        out_o, _, back_so = sig.vjp({}, {}, net_o, train=True)
        error = losses.squared_error(out_o, targets)
        _, delta_o = back_so(losses.squared_error_grad(out_o, targets))
        grads_o, _ = back_o(delta_o)
        po_new = {"w": po["w"] - learning_rate * grads_o["w"], "b": po["b"]}
        _, _, back_o_new = output.vjp(po_new, {}, out_h, train=True)  # the updated weights
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

        _, _, out = intermediates(net, params, state, x, train=True)
        net_h, out_h, net_o, out_o = (y[0] for y in out.values())  # the four layers, in order
        e_each = 0.5 * (targets[0] - out_o) ** 2
        forward = {
            "net_h1": net_h[0], "out_h1": out_h[0], "net_h2": net_h[1], "out_h2": out_h[1],
            "net_o1": net_o[0], "out_o1": out_o[0], "net_o2": net_o[1], "out_o2": out_o[1],
            "e_o1": e_each[0], "e_o2": e_each[1], "e_total": jnp.sum(e_each),
        }  # fmt: skip

        e_total, g_manual, _ = backprop(net, "squared_error", params, state, x, targets, train=True)
        grads = {"manual": g_manual}
        for mode, key in (("autodiff", "autodiff"), ("manual", "autodiff_on_hand_rules")):
            vg = value_and_grad(net, "squared_error", grad=mode)
            _, grads[key] = vg(params, state, x, targets, train=True)

        optimizer = sgd(eta, trainable=weights_only)
        step = make_train_step(net, "squared_error", optimizer, grad="manual")
        ts0 = TrainState.create(net, optimizer, jax.random.key(0), params=params, state=state)
        ts_n, logged = fit_full_batch(step, ts0, x, targets, NUM_STEPS)  # ts0 is kept
        ts1, _ = step(ts0, x, targets)  # ts0 is donated

        seq = _sequential_step(parts, eta)
        seq_1, _ = jax.jit(seq)(params, x, targets)
        seq_n, _ = jax.jit(
            lambda p: jax.lax.scan(lambda p, _: seq(p, x, targets), p, None, length=NUM_STEPS)
        )(params)

        def after(params: dict[str, Any], n: str) -> dict[str, float]:
            """A fresh forward pass after ``n`` updates: the error and the two outputs."""
            y, _ = net.apply(params, state, x, train=False)
            values = {
                "e_total": losses.squared_error(y, targets),
                "out_o1": y[0, 0],
                "out_o2": y[0, 1],
            }
            return {f"{k}_after_{n}": float(v) for k, v in values.items()}

        stated = {**after(ts1.params, "1"), **after(ts_n.params, "n")}
        sequential = {**after(seq_1, "1"), **after(seq_n, "n")}

    forward = {k: float(v) for k, v in forward.items()}
    gradients = {name: _weights(g) for name, g in grads.items()}
    updated = _weights(ts1.params)
    stated |= {
        "e_total": forward["e_total"],
        "de_dw5": gradients["manual"]["w5"],
        "w5_after_1": updated["w5"],
        "w1_after_1": updated["w1"],
    }
    by_rule = {
        "stated": stated,
        "sequential": sequential,
        "logged": {"e_total_after_n": float(logged[-1])},
    }
    figures = {
        figure: {
            "published": published,
            **{rule: values[figure] for rule, values in by_rule.items() if figure in values},
            "reproduced_by": [
                rule
                for rule, values in by_rule.items()
                if figure in values and _matches(values[figure], published)
            ],
        }
        for figure, published in PUBLISHED.items()
    }
    return {
        "network": NETWORK,
        "forward": forward,
        "e_total_backprop": float(e_total),
        "gradients": gradients,
        "bias_gradients": {
            mode: {
                "b1": _floats(grads[mode]["hidden_0"]["b"]),
                "b2": _floats(grads[mode]["output_2"]["b"]),
            }
            for mode in ("manual", "autodiff")
        },
        "max_abs_manual_minus_autodiff": max(
            abs(gradients["manual"][w] - gradients["autodiff"][w]) for w in WEIGHT_POSITIONS
        ),
        "updated_weights": updated,
        "figures": figures,
        "all_published_reproduced": all(f["reproduced_by"] for f in figures.values()),
        "rules": RULES,
    }


def report(result: dict[str, Any]) -> str:
    """The printed report: the forward pass, the gradients, and each published figure."""
    g = result["gradients"]
    gradients = [
        (
            f"∂E/∂{w}",
            f"{g['manual'][w]:.12f}",
            f"{g['autodiff'][w]:.12f}",
            f"{g['manual'][w] - g['autodiff'][w]:.1e}",
        )
        for w in WEIGHT_POSITIONS
    ]
    published = [
        (
            LABELS[k],
            f["published"],
            f"{f['stated']:.12f}",
            f"{f['stated'] - float(f['published']):.1e}",
            ", ".join(LABELS[r] for r in f["reproduced_by"]) or "NOTHING",
        )
        for k, f in result["figures"].items()
    ]
    return "\n".join(
        [
            common.table([(LABELS[k], f"{v:.9f}") for k, v in result["forward"].items()]),
            common.table(gradients, ("", LABELS["manual"], LABELS["autodiff"], "difference")),
            LABELS["updated_weights"] + ":",
            common.table([(w, f"{v:.9f}") for w, v in result["updated_weights"].items()]),
            common.table(
                published,
                ("", LABELS["published"], LABELS["stated"], "difference", LABELS["reproduced_by"]),
                align="lrrrl",
            ),
            f"{LABELS['all_published_reproduced']}: {result['all_published_reproduced']}",
            *(f"{LABELS[name]}: {text}." for name, text in result["rules"].items()),
        ]
    )


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The source text's claim for ``report.md``: its published figures, reproduced."""
    f = result["figures"]
    missed = [k for k, v in f.items() if not v["reproduced_by"]]
    return [
        common.claim(
            "Backpropagation is the chain rule: on the 2-2-2 sigmoid network the error "
            "E = Σ ½(target − out)² is differentiated w.r.t. each weight (∂E/∂w5 shown) and "
            "updated w ← w − η·∂E/∂w; repeated, the error falls",
            "every published figure is reproduced to the digits it prints by one of the "
            "readings in RULES, and the hand-derived gradients equal jax.grad",
            bool(result["all_published_reproduced"] and not missed),
            f"∂E/∂w5 = {f['de_dw5']['stated']:.9f} (published {f['de_dw5']['published']}); "
            f"E after 10,000 updates {f['e_total_after_n']['logged']:.10f} (published "
            f"{f['e_total_after_n']['published']}); max |hand − jax.grad| = "
            f"{result['max_abs_manual_minus_autodiff']:.1e}",
            f"{NAME}.json (a table; no figure)",
        )
    ]


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the example; write ``backprop_worked_example.json`` into ``out_dir``; print it.

    ``quick`` changes nothing: the example takes a second.
    """
    result = run()
    result = {**result, "quick": quick, "claims": claims(result)}
    return common.publish(NAME, out_dir, result, LABELS, report(result))


if __name__ == "__main__":
    common.script(main)
