"""Benchmark: train-step time of an MLP with BatchNorm, hand-derived vs autodiff gradients.

A 784-256-256-10 sigmoid MLP with BatchNorm after each hidden dense layer, softmax
cross-entropy, SGD, batch 128, float32. Each variant runs ``--steps`` steps as one compiled
``lax.scan`` (compilation excluded by a warm-up); the variants run in rotation, ``--repeats``
times, in one process, and the script prints medians and the ratio.

    python benchmarks/bench_batchnorm.py [--steps 200] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxnn
from jaxnn.optim import sgd
from jaxnn.train import TrainState, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    net = jaxnn.mlp([256, 256, 10], "sigmoid", batchnorm=True, param_dtype=jnp.float32)
    params, state = net.init(jax.random.key(0), (args.batch, 784))
    xs = jax.random.normal(jax.random.key(1), (args.steps, args.batch, 784), jnp.float32)
    ys = jax.random.randint(jax.random.key(2), (args.steps, args.batch), 0, 10)
    opt = sgd(0.1)
    ts0 = TrainState.create(net, opt, jax.random.key(0), params=params, state=state)
    loss = "softmax_cross_entropy_with_integer_labels"

    def runner(mode):
        step = make_train_step(net, loss, opt, grad=mode)

        @jax.jit
        def run(ts):
            return jax.lax.scan(lambda ts, batch: step(ts, *batch), ts, (xs, ys))

        return run

    runs = {mode: runner(mode) for mode in ("autodiff", "manual")}
    finals = {mode: jax.block_until_ready(run(ts0)) for mode, run in runs.items()}  # compile
    a, m = finals["autodiff"][1], finals["manual"][1]
    print(
        f"max |loss manual - loss autodiff| over {args.steps} steps: {float(jnp.max(jnp.abs(a - m))):.2e}"
    )
    times = {mode: [] for mode in runs}
    for _ in range(args.repeats):
        for mode, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run(ts0))
            times[mode].append((time.perf_counter() - start) / args.steps)
    med = {mode: statistics.median(t) for mode, t in times.items()}
    print(
        f"\nper step, median of {args.repeats} interleaved runs of {args.steps} steps on {jax.devices()[0].platform}:"
    )
    for mode, t in med.items():
        print(f"  {mode:<9} {t * 1e3:8.3f} ms")
    print(f"\nmanual / autodiff = {med['manual'] / med['autodiff']:.2f}x")


if __name__ == "__main__":
    main()
