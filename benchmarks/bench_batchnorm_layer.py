"""Benchmark: one BatchNorm layer in train mode, forward and backward, against the textbook.

jaxnn's layer computes its statistics on ``x / scale`` so that float32 input of any spread
stays finite; the textbook formula (``mean``, ``var = mean((x - mean)²)``,
``(x - mean) / √(var + eps)``, written here in plain JAX and differentiated by ``jax.grad``)
overflows past a spread of 1.8e19. This prints what the scaling costs: per-round ratios to
the textbook, rounds in alternating order, in one process (min, median, max).

    python benchmarks/bench_batchnorm_layer.py [--rounds 7] [--calls 300]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.batchnorm import batchnorm


def textbook(params, x, eps=1e-5):
    mean = jnp.mean(x, axis=0)
    var = jnp.mean((x - mean) ** 2, axis=0)
    return params["gamma"] * (x - mean) * jax.lax.rsqrt(var + eps) + params["beta"]


def variants(shape):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    dy = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    layer = batchnorm(param_dtype=jnp.float32)
    params, state = layer.init(None, shape)

    def jaxnn_loss(p, x):
        return jnp.vdot(layer.apply(p, state, x, train=True)[0], dy)

    def hand(p, x):
        _, _, backward = layer.vjp(p, state, x, train=True)
        return backward(dy)

    fns = {
        "textbook, jax.grad": jax.jit(jax.grad(lambda p, x: jnp.vdot(textbook(p, x), dy), (0, 1))),
        "jaxnn, jax.grad": jax.jit(jax.grad(jaxnn_loss, (0, 1))),
        "jaxnn, hand rules": jax.jit(hand),
    }
    return fns, params, x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    for shape in ((128, 256), (1024, 256)):
        fns, params, x = variants(shape)
        for f in fns.values():
            jax.block_until_ready(f(params, x))  # compile
        times = {k: [] for k in fns}
        for r in range(args.rounds):
            for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                start = time.perf_counter()
                for _ in range(args.calls):
                    out = fns[k](params, x)
                jax.block_until_ready(out)
                times[k].append((time.perf_counter() - start) / args.calls)
        base = np.asarray(times["textbook, jax.grad"])
        print(f"x {list(shape)} float32 on {jax.devices()[0].platform}, {args.rounds} rounds:")
        for k, t in times.items():
            ratio = np.asarray(t) / base
            print(
                f"  {k:<20} median {np.median(t) * 1e6:8.1f} us   / textbook: "
                f"min {ratio.min():.2f}  median {np.median(ratio):.2f}  max {ratio.max():.2f}"
            )


if __name__ == "__main__":
    main()
