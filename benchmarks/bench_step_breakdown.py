"""Where a training step's time goes beyond its matmuls: jaxnn's step with parts taken out.

The model of ``bench_step.py`` (MLP 784-512-512-10, dense → BatchNorm → ReLU, softmax
cross-entropy, Adam, float32), and the same step

* without BatchNorm (dense with bias → ReLU),
* with plain SGD instead of Adam (no moment updates),
* without both,

against the bare matmuls of the step (``bench_step.py``'s ``matmuls``). The variants run
in rounds, the order alternating; each reports the median ms/step and, per round, the fraction
``t_matmuls / t_variant`` (min, median, max). The differences between the variants attribute
the step's time to BatchNorm's and the optimizer's elementwise passes.

    python benchmarks/bench_step_breakdown.py [--batch 1024] [--rounds 7] [--grad autodiff]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnn
from jaxnn.train import TrainState, make_train_step

LOSS = "softmax_cross_entropy_with_integer_labels"


def _matmuls(batch: int):
    k = jax.random.split(jax.random.key(0), 3)
    w = [jax.random.normal(k[0], (784, 512)) / 28, jax.random.normal(k[1], (512, 512)) / 23,
         jax.random.normal(k[2], (512, 10)) / 23]  # fmt: skip

    @jax.jit
    def step(w, x):  # forward x@W (3), backward hᵀδ (3) and δWᵀ (2)
        h1 = x @ w[0]
        h2 = h1 @ w[1]
        d = h2 @ w[2]
        d2 = d @ w[2].T
        d1 = d2 @ w[1].T
        return x.T @ d1, h1.T @ d2, h2.T @ d

    return lambda x, y: step(w, x)


def _jaxnn(batch: int, batchnorm: bool, optimizer: optax.GradientTransformation, grad: str):
    net = jaxnn.mlp([512, 512, 10], "relu", batchnorm=batchnorm)
    step = make_train_step(net, LOSS, optimizer, grad=grad)
    box = [TrainState.create(net, optimizer, jax.random.key(0), (batch, 784))]

    def run(x, y):
        box[0], loss = step(box[0], x, y)
        return loss

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--grad", default="autodiff", choices=("autodiff", "manual"))
    args = parser.parse_args()
    b = args.batch
    x = jax.random.normal(jax.random.key(1), (b, 784))
    y = jnp.arange(b, dtype=jnp.int32) % 10
    adam, sgd = optax.adam(1e-3), optax.sgd(1e-2)
    variants = {
        "matmuls": _matmuls(b),
        "step (BN, Adam)": _jaxnn(b, True, adam, args.grad),
        "no BN (Adam)": _jaxnn(b, False, adam, args.grad),
        "BN, SGD": _jaxnn(b, True, sgd, args.grad),
        "no BN, SGD": _jaxnn(b, False, sgd, args.grad),
    }
    for fn in variants.values():  # compile and warm up
        jax.block_until_ready(fn(x, y))
    start = time.perf_counter()
    jax.block_until_ready(variants["step (BN, Adam)"](x, y))
    k = max(1, int(0.3 / (time.perf_counter() - start)))
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(k):
                out = variants[name](x, y)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / k)
    print(f"batch {b}, grad={args.grad}, {args.rounds} rounds of {k} steps, "
          f"{jax.devices()[0].device_kind}")  # fmt: skip
    print(f"{'variant':<18} {'ms/step':>8}   of matmuls: min   med   max")
    for name, ts in times.items():
        fr = sorted(m / t for m, t in zip(times["matmuls"], ts, strict=True))
        print(f"{name:<18} {statistics.median(ts) * 1e3:8.2f}   {fr[0]:15.2f} "
              f"{statistics.median(fr):5.2f} {fr[-1]:5.2f}")  # fmt: skip
    print(
        f"(matmul GFLOP/s: {2 * b * (3 * 784 * 512 + 3 * 512 * 512 + 3 * 512 * 10 - 784 * 512) / np.median(times['matmuls']) / 1e9:.1f})"
    )


if __name__ == "__main__":
    main()
