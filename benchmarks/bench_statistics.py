"""Benchmark: the normalisation family's statistics, jaxnn's against the textbook and the
one-pass formulas, forward and gradient, interleaved.

::

    python benchmarks/bench_statistics.py [--shapes 128x512,1024x512] [--rounds 15] [--quick]

Per shape ``[batch, features]`` (float32, standard normal times 3 plus 1), the mean and the
biased variance over the batch axis followed by the normalisation ``(x - mean) / √(var +
eps)``, as BatchNorm computes them in training, by:

* ``jaxnn`` — :func:`jaxnn.statistics.moments` and :func:`~jaxnn.statistics.normalize`: the
  two-pass variance, and the scaled path (a third pass) only where a sum overflowed;
* ``scaled`` — the scaled path always (a pass for the power-of-two scale, then the two
  passes on ``x / scale``): what jaxnn's BatchNorm computed before the shared routine;
* ``textbook`` — ``jnp.mean``, then ``jnp.mean((x - mean)²)`` (no overflow guarantee);
* ``one_pass`` — ``E[x²] - E[x]²`` clipped at 0 (Flax's ``use_fast_variance``; no guarantee,
  and it loses ``log2(1 + mean²/var)`` bits to cancellation).

Each is timed as ``forward`` (the normalised output) and ``grad`` (``jax.grad`` of
``Σ w ⊙ x̂`` w.r.t. ``x``), jitted. Every round runs every variant ``K`` times in a rotating
order; the table gives the median ms and the median, min and max over rounds of the ratio
to ``textbook`` within the round (a ratio from one round shares that round's machine state).
"""

from __future__ import annotations

import argparse
import statistics as stats
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxnn.statistics import _two_pass, moments, normalize

EPS = 1e-5


def _jaxnn(x: jax.Array) -> jax.Array:
    return normalize(x, moments(x, (0,)), 1.0, 0.0, EPS)[1]


def _scaled(x: jax.Array) -> jax.Array:
    return normalize(x, _two_pass(x, (0,), None, None, True), 1.0, 0.0, EPS)[1]


def _textbook(x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, 0, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), 0, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS)


def _one_pass(x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, 0, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(x), 0, keepdims=True) - mean * mean, 0)
    return (x - mean) * jax.lax.rsqrt(var + EPS)


VARIANTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "jaxnn": _jaxnn,
    "scaled": _scaled,
    "textbook": _textbook,
    "one_pass": _one_pass,
}
REFERENCE = "textbook"


def _compiled(fn: Callable[[jax.Array], jax.Array], w: jax.Array) -> dict[str, Callable]:
    return {
        "forward": jax.jit(fn),
        "grad": jax.jit(jax.grad(lambda x: jnp.sum(w * fn(x)))),
    }


def _time(fn: Callable, x: jax.Array, k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
        out = fn(x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / k


def run(shapes: Sequence[tuple[int, int]], rounds: int, k: int) -> list[dict]:
    """One row per (shape, mode, variant): median ms and the ratios to ``textbook``."""
    rows = []
    for shape in shapes:
        x = 1.0 + 3.0 * jax.random.normal(jax.random.key(0), shape, jnp.float32)
        w = jax.random.normal(jax.random.key(1), shape, jnp.float32)
        fns = {name: _compiled(fn, w) for name, fn in VARIANTS.items()}
        for mode in ("forward", "grad"):
            for f in fns.values():
                jax.block_until_ready(f[mode](x))  # compile
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            names = list(VARIANTS)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    times[name].append(_time(fns[name][mode], x, k))
            for name in names:
                ratios = [a / b for a, b in zip(times[name], times[REFERENCE], strict=True)]
                rows.append({
                    "shape": "x".join(map(str, shape)), "mode": mode, "variant": name,
                    "ms": 1e3 * stats.median(times[name]), "ratio_median": stats.median(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios),
                })  # fmt: skip
    return rows


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        shapes = tuple(tuple(int(d) for d in s.split("x")) for s in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 2 or min(s) < 2 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes like 128x512,1024x512, got {text!r}")
    return shapes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_statistics.py", description=__doc__)
    p.add_argument("--shapes", type=_shapes, default=((128, 512), (1024, 512)))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=50, help="calls per variant per round")
    p.add_argument("--quick", action="store_true", help="one small shape, 2 rounds of 3 calls")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be >= 1")
    shapes, rounds, k = args.shapes, args.rounds, args.steps
    if args.quick:
        shapes, rounds, k = ((16, 8),), 2, 3
    rows = run(shapes, rounds, k)
    print(f"bench_statistics: jax {jax.__version__} on {jax.default_backend()}, float32, "
          f"{rounds} rounds of {k} calls; ratio = t / t_{REFERENCE} per round")  # fmt: skip
    print(f"{'shape':>9} {'mode':>7} {'variant':>9} {'ms':>8} {'median':>7} {'min':>6} {'max':>6}")
    for r in rows:
        print(f"{r['shape']:>9} {r['mode']:>7} {r['variant']:>9} {r['ms']:8.3f} "
              f"{r['ratio_median']:7.2f} {r['ratio_min']:6.2f} {r['ratio_max']:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
