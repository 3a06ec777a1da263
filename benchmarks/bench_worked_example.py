"""Benchmark: the worked example's 10,000 updates, jaxnn against hand-written JAX, interleaved.

* scan (jaxnn autodiff / manual): :func:`jaxnn.train.fit_full_batch`, one compiled
  ``lax.scan`` of jaxnn's train step (``jax.grad`` gradients, or the hand-derived rules); it
  also returns every step's loss;
* scan (plain JAX): the same 10,000 updates as a bare ``lax.scan`` of a hand-written step
  (two 2×2 kernels, biases as constants, ``jax.grad``, ``w ← w − η ∂E/∂w``);
* loop (jaxnn): a Python loop calling jaxnn's jit-compiled step 10,000 times;
* loop (plain JAX): a Python loop calling the hand-written step, ``jax.jit`` with its
  buffers donated, 10,000 times; "dict" carries the params as jaxnn does (``{"w", "b"}`` per
  layer, the biases not updated), takes the batch as arguments and returns the loss.

A jitted call's host cost grows with the number of arrays going in and out (each is checked,
and each output is a new Python object): jaxnn's step carries 4 parameters and the update
count and returns the loss; "plain JAX" carries 2 kernels and returns nothing else.

All run in float64 and end on the same weights (printed). Compilation is excluded (one
warm-up call each). The variants run in rounds, in alternating order, so that machine noise
hits them alike; the ratios are taken per round, then their min, median and max printed.

    python benchmarks/bench_worked_example.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import jaxnn_experiments.backprop_worked_example as example
from jaxnn.optim import sgd
from jaxnn.train import TrainState, fit_full_batch, make_train_step


def _plain(x, t, eta, b1, b2):
    """The hand-written step: ``E = Σ ½(t − σ(σ(x W₁ + b₁) W₂ + b₂))²``, ``W ← W − η ∂E/∂W``."""
    import jax.numpy as jnp

    def error(w):
        h = jax.nn.sigmoid(x @ w[0] + b1)
        out = jax.nn.sigmoid(h @ w[1] + b2)
        return jnp.sum(0.5 * (t - out) ** 2)

    def step(w):
        return jax.tree.map(lambda a, g: a - eta * g, w, jax.grad(error)(w))

    return step


def _plain_params(eta):
    """The hand-written step over a params dict ``{layer: {"w", "b"}}`` as jaxnn carries it (the
    biases in it, not updated), with the batch as arguments and the loss returned."""
    import jax.numpy as jnp

    def error(p, x, t):
        h = jax.nn.sigmoid(x @ p["hidden"]["w"] + p["hidden"]["b"])
        out = jax.nn.sigmoid(h @ p["output"]["w"] + p["output"]["b"])
        return jnp.sum(0.5 * (t - out) ** 2)

    def step(p, x, t):
        loss, g = jax.value_and_grad(error)(p, x, t)
        new = {k: {"w": p[k]["w"] - eta * g[k]["w"], "b": p[k]["b"]} for k in p}
        return new, loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = example.NUM_STEPS
    with jax.enable_x64(True):
        import jax.numpy as jnp

        _, net = example.build()
        x = jnp.asarray([example.NETWORK["inputs"]], jnp.float64)
        t = jnp.asarray([example.NETWORK["targets"]], jnp.float64)
        eta = example.NETWORK["learning_rate"]
        params, state = net.init(jax.random.key(0), x.shape)
        opt = sgd(eta, trainable=example.weights_only)
        ts0 = TrainState.create(net, opt, jax.random.key(0), params=params, state=state)
        steps = {mode: make_train_step(net, "squared_error", opt, grad=mode)
                 for mode in ("autodiff", "manual")}  # fmt: skip
        keys = ("hidden_0", "output_2")
        w0 = tuple(params[k]["w"] for k in keys)
        plain_step = _plain(x, t, eta, params["hidden_0"]["b"], params["output_2"]["b"])

        @jax.jit
        def plain_scan(w):
            return jax.lax.scan(lambda w, _: (plain_step(w), None), w, length=n)[0]

        plain_jit = jax.jit(plain_step, donate_argnums=0)
        plain_params_jit = jax.jit(_plain_params(eta), donate_argnums=0)
        p0 = {"hidden": params["hidden_0"], "output": params["output_2"]}

        def scan(mode):
            final, _ = fit_full_batch(steps[mode], ts0, x, t, n)
            return jax.block_until_ready(tuple(final.params[k]["w"] for k in keys))

        def loop():
            ts = jax.tree.map(jnp.copy, ts0)  # the step donates its input's buffers
            for _ in range(n):
                ts, _ = steps["autodiff"](ts, x, t)
            return jax.block_until_ready(tuple(ts.params[k]["w"] for k in keys))

        def plain_loop():
            w = tuple(jnp.copy(a) for a in w0)
            for _ in range(n):
                w = plain_jit(w)
            return jax.block_until_ready(w)

        def plain_params_loop():
            p = jax.tree.map(jnp.copy, p0)
            for _ in range(n):
                p, _ = plain_params_jit(p, x, t)
            return jax.block_until_ready((p["hidden"]["w"], p["output"]["w"]))

        variants = {
            "scan (jaxnn autodiff)": lambda: scan("autodiff"),
            "scan (jaxnn manual)": lambda: scan("manual"),
            "scan (plain JAX)": lambda: jax.block_until_ready(plain_scan(w0)),
            "loop (jaxnn)": loop,
            "loop (plain JAX)": plain_loop,
            "loop (plain JAX, dict)": plain_params_loop,
        }
        results = {name: fn() for name, fn in variants.items()}  # warm-up: compile
        ref = results["scan (plain JAX)"]
        for name, res in results.items():  # all train the same weights
            diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ref, res, strict=True))
            print(f"{name:<22} max |W - W(scan, plain JAX)| = {diff:.1e}")
        times = {name: [] for name in variants}
        order = list(variants)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)

    print(f"\n{n} updates, {args.rounds} interleaved rounds on {jax.devices()[0].device_kind}:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:<22} {m * 1e3:9.2f} ms   ({m / n * 1e6:.3f} us/step)")

    def ratio(a: str, b: str) -> str:
        rs = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
        return f"{statistics.median(rs):.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"

    print(
        f"\nscan (jaxnn autodiff) / scan (plain JAX) = {ratio('scan (jaxnn autodiff)', 'scan (plain JAX)')}"
    )
    print(
        f"scan (jaxnn manual) / scan (plain JAX)   = {ratio('scan (jaxnn manual)', 'scan (plain JAX)')}"
    )
    print(f"loop (jaxnn) / loop (plain JAX)          = {ratio('loop (jaxnn)', 'loop (plain JAX)')}")
    print(
        f"loop (jaxnn) / loop (plain JAX, dict)    = {ratio('loop (jaxnn)', 'loop (plain JAX, dict)')}"
    )
    print(
        f"loop (jaxnn) / scan (jaxnn autodiff)     = {ratio('loop (jaxnn)', 'scan (jaxnn autodiff)')}"
    )


if __name__ == "__main__":
    main()
