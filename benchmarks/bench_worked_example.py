"""Benchmark: the worked example's 10,000 updates, three ways, timed in one interleaved run.

* scan (autodiff):  one compiled ``lax.scan`` of the train step, ``jax.grad`` gradients;
* scan (manual):    the same scan, gradients from the hand-derived rules (``grad="manual"``);
* loop (autodiff):  a Python loop calling the jit-compiled step 10,000 times.

Compilation is excluded (one warm-up call each). The variants run in rotation, ``--repeats``
times, so that machine noise hits them alike; the script prints medians and ratios.

    python benchmarks/bench_worked_example.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import jaxnn_experiments.backprop_worked_example as example
from jaxnn.train import TrainState, fit_full_batch, make_train_step, sgd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = example.NUM_STEPS
    with jax.enable_x64(True):
        import jax.numpy as jnp

        _, net = example.build()
        x = jnp.asarray([example.NETWORK["inputs"]], jnp.float64)
        t = jnp.asarray([example.NETWORK["targets"]], jnp.float64)
        params, state = net.init(jax.random.key(0), x.shape)
        opt = sgd(example.NETWORK["learning_rate"], trainable=example.weights_only)
        ts0 = TrainState.create(net, opt, jax.random.key(0), params=params, state=state)
        steps = {
            mode: make_train_step(net, "squared_error", opt, grad=mode)
            for mode in ("autodiff", "manual")
        }

        def scan(mode):
            final, _ = fit_full_batch(steps[mode], ts0, x, t, n)
            return jax.block_until_ready(final.params)

        def loop():
            ts = ts0
            for _ in range(n):
                ts, _ = steps["autodiff"](ts, x, t)
            return jax.block_until_ready(ts.params)

        variants = {
            "scan (autodiff)": lambda: scan("autodiff"),
            "scan (manual)": lambda: scan("manual"),
            "loop (autodiff)": loop,
        }
        results = {name: fn() for name, fn in variants.items()}  # warm-up: compile
        ref = jax.tree.leaves(results["scan (autodiff)"])
        for name, res in results.items():  # all three train the same weights
            diff = max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(ref, jax.tree.leaves(res), strict=True)
            )
            print(f"{name:<16} max |params - scan (autodiff) params| = {diff:.1e}")
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"\n{n} updates, median of {args.repeats} interleaved runs on {jax.devices()[0].platform}:"
    )
    for name, m in med.items():
        print(f"  {name:<16} {m * 1e3:9.2f} ms   ({m / n * 1e6:.2f} us/step)")
    print(
        f"\nloop / scan (autodiff)           = {med['loop (autodiff)'] / med['scan (autodiff)']:.1f}x"
    )
    print(
        f"scan (manual) / scan (autodiff)  = {med['scan (manual)'] / med['scan (autodiff)']:.2f}x"
    )


if __name__ == "__main__":
    main()
