"""Benchmark: ``fit``'s epoch (one compiled ``lax.scan``) against a Python loop over a jitted step.

The same model, data and updates: ``jaxnn train``'s defaults (an MLP 64-128-64-10 with
BatchNorm and ReLU, Adam 1e-3, batches of 32, autodiff) on the digits' training part (1079
examples: 33 updates an epoch). The loop is the fastest a Python loop gets: the data on the
device, one jitted and donated step per minibatch that gathers its own rows
(``x[idx]`` inside the step), the indices from the same permutation. Per round each variant
runs ``--epochs`` epochs; rounds alternate the order; the ratio is per round (min, median,
max). Examples per second count the examples the updates see.

    python benchmarks/bench_fit.py [--rounds 7] [--epochs 10] [--grad autodiff|manual]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import data
from jaxnn.fitting import fit
from jaxnn.run import LOSS, RunConfig, build
from jaxnn.train import TrainState, _stream_key, make_epoch, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--grad", choices=("autodiff", "manual"), default="autodiff")
    args = parser.parse_args()

    config = RunConfig(grad=args.grad)
    splits = data.digits()
    net, opt = build(config, splits)
    x, y = jnp.asarray(splits.train.x), jnp.asarray(splits.train.y)
    bs, n = config.batch_size, x.shape[0]
    updates = n // bs
    fresh = TrainState.create(net, opt, jax.random.key(0), (bs, x.shape[1]))
    epoch = make_epoch(net, LOSS, opt, batch_size=bs, grad=args.grad)
    step = make_train_step(net, LOSS, opt, grad=args.grad, donate=False)

    def gather_step(ts, x, y, idx):  # the loop's step: gathers its minibatch on the device
        return step(ts, x[idx], y[idx])

    gather_step = jax.jit(gather_step, donate_argnums=0)

    def scan_epochs(ts):
        for _ in range(args.epochs):
            ts, _ = epoch(ts, x, y)
        return jax.block_until_ready(ts)

    def loop_epochs(ts):
        for _ in range(args.epochs):
            perm = jax.random.permutation(_stream_key(ts, 1), n)[: updates * bs]
            for idx in perm.reshape(updates, bs):
                ts, _ = gather_step(ts, x, y, idx)
        return jax.block_until_ready(ts)

    def fit_epochs(ts):
        return fit(net, LOSS, opt, ts, (x, y), epochs=args.epochs, batch_size=bs).state

    variants = {"loop": loop_epochs, "epoch scan": scan_epochs, "fit (scan + copy)": fit_epochs}
    for f in variants.values():  # compile, and check the scan and the loop agree
        f(jax.tree.map(jnp.copy, fresh))
    a = scan_epochs(jax.tree.map(jnp.copy, fresh))
    b = loop_epochs(jax.tree.map(jnp.copy, fresh))
    gap = max(
        float(jnp.max(jnp.abs(u - v)))
        for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True)
    )
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order:
            ts = jax.tree.map(jnp.copy, fresh)
            start = time.perf_counter()
            variants[k](ts)
            times[k].append(time.perf_counter() - start)
    examples = args.epochs * updates * bs
    print(f"jax {jax.__version__} on {jax.default_backend()}; digits, {n} examples, batch {bs}, "
          f"{updates} updates/epoch, {args.epochs} epochs/round, {args.rounds} rounds, "
          f"grad={args.grad}; max |scan - loop| parameter difference {gap:.1e}")  # fmt: skip
    print(
        f"{'variant':<20}{'examples/s (median)':>22}{'ratio to loop: min':>21}{'median':>9}{'max':>9}"
    )
    for k, t in times.items():
        ratios = np.asarray(times["loop"]) / np.asarray(t)  # > 1: faster than the loop
        print(
            f"{k:<20}{examples / np.median(t):>22,.0f}{ratios.min():>21.2f}"
            f"{np.median(ratios):>9.2f}{ratios.max():>9.2f}"
        )


if __name__ == "__main__":
    main()
