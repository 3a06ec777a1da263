"""Data-parallel training on 4 simulated CPU devices; run by tests/test_parallel.py in its own
process (XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts).

``python multidevice_fit.py fit`` checks, in float64:

1. ``fit(..., devices=4)`` gives the per-epoch losses, validation scores and final params and
   BatchNorm state of ``devices=1``, for ``grad="autodiff"`` (with dropout) and ``"manual"``,
   with BatchNorm and a ragged last minibatch (70 examples, batches of 16, ``remainder="pad"``);
2. the minibatch really is split: the compiled 4-device epoch holds all-reduces and computes
   the first layer on 4 rows per device, where the one-device epoch computes it on all 16;
3. ``predict`` with its batches split over 4 devices equals one device's; a batch size that
   4 devices do not divide is refused;
4. a run may change its number of devices between epochs (as a resumed run does): 2 epochs
   on 4 devices then 1 on 1 equal 3 epochs on 1.

``python multidevice_fit.py cli DIR`` runs ``jaxnn train --devices 4`` (metrics.json written),
resumes its checkpoint with ``--devices 2``, and checks that ``--devices 8`` and a batch size
that 4 devices do not divide are one-line usage errors.

``python multidevice_fit.py process PORT ID`` is process ``ID`` of 2 (2 simulated devices
each, ``jax.distributed.initialize`` on localhost:PORT, gloo collectives): ``fit(...,
devices=2)`` trains on the global mesh of 4 devices and equals this process's one-device
``fit``; and data that differ between the processes are refused.
"""

import contextlib
import io
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnn
from jaxnn.batchnorm import population_statistics
from jaxnn.evaluation import predict
from jaxnn.fitting import fit
from jaxnn.parallel import BATCH_AXIS, data_mesh, replicate
from jaxnn.train import TrainState, make_epoch

# Tolerance. The 4-device run adds the same terms as the 1-device run in another order: the
# gradient's sums over the batch (and BatchNorm's statistics) become per-device partial sums
# and an all-reduce. Two orders of a sum of m terms differ by at most 2(m - 1)·u·Σ|terms|
# (u = 2^-53, float64), so an update differs relatively by about 2B·u·κ, B = 16 the batch,
# κ = Σ|terms| / |Σ terms| the condition of the sums; the difference is carried on through
# the S = 3 epochs × 5 updates, so TOL = S·2B·u·κ ≈ 5e-12 relative to each leaf's largest
# value, with κ = 100 for both the condition and the growth of a difference over S updates
# (a small tanh network whose activations are O(1), SGD with momentum at 0.1). SGD, not Adam:
# Adam's g/√v turns an O(u) difference of a near-zero gradient into an O(1) difference of its
# update. A real error (per-device statistics, one shard's gradient, a padded row counted) is
# of order 1e-2; the measured differences are O(u).
B, EPOCHS, UPDATES_PER_EPOCH, KAPPA = 16, 3, 5, 100
TOL = EPOCHS * UPDATES_PER_EPOCH * 2 * B * 2.0**-53 * KAPPA
CE = "softmax_cross_entropy_with_integer_labels"


def close(a, b, what):
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.max(np.abs(x)), np.max(np.abs(y)), 1e-300)
        err = np.max(np.abs(x - y)) / scale
        assert err <= TOL, f"{what}: relative error {err:.3e} > {TOL:.1e}"
        worst = max(worst, err)
    print(f"ok  {what} (relative error {worst:.1e})")


def records(result):
    """The history's numbers (losses, validation scores), not its wall times."""
    keys = [k for k in result.history[0] if k not in ("epoch", "seconds")]
    return np.asarray([[r[k] for k in keys] for r in result.history])


def problem():
    """70 examples (4 batches of 16 and 6 left over, padded), 30 for validation (padded to 32
    for 4 devices), SGD with momentum; the same on every process (a fixed seed)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 5)) * [1.0, 2.0, 0.5, 1.0, 3.0] + [3.0, -1.0, 0.0, 1.0, 2.0]
    y = rng.integers(0, 3, 70).astype(np.int32)
    val = (rng.standard_normal((30, 5)), rng.integers(0, 3, 30).astype(np.int32))
    assert -(-70 // B) == UPDATES_PER_EPOCH
    return x, y, optax.sgd(0.1, momentum=0.9), dict(batch_size=B, remainder="pad", validation=val)


def check_fit():
    assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
    assert jax.device_count() == 4, f"need 4 devices (XLA_FLAGS), got {jax.devices()}"
    x, y, opt, options = problem()

    # Dropout on one gradient path only (its masks do not depend on the path): each network
    # compiles two epochs, and compiling is most of this script's time.
    runs = {}
    for grad, dropout in (("autodiff", 0.2), ("manual", 0.0)):
        net = jaxnn.mlp([8, 3], "tanh", batchnorm=True, dropout=dropout)
        ts = TrainState.create(net, opt, jax.random.key(0), (B, 5))
        one = fit(net, CE, opt, ts, (x, y), epochs=EPOCHS, grad=grad, devices=1, **options)
        four = fit(net, CE, opt, ts, (x, y), epochs=EPOCHS, grad=grad, devices=4, **options)
        leaf = jax.tree.leaves(four.state.params)[0]
        assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
        close(records(four), records(one), f"{grad}: per-epoch loss, val_loss, val_accuracy")
        close(four.state.params, one.state.params, f"{grad}: final params")
        close(four.state.state, one.state.state, f"{grad}: final BatchNorm running statistics")
        close(four.state.opt_state, one.state.opt_state, f"{grad}: final momentum")
        runs[grad] = (net, ts, one, four)

    # The minibatch is split: 4 rows of the 16 per device, and all-reduces that sum the
    # gradient and BatchNorm's statistics; the same checks fail for the one-device epoch.
    # (fit compiled these epochs for arguments placed so: lowering them compiles nothing new.)
    net, ts, reference, _ = runs["autodiff"]
    for devices, rows, reduces in ((4, 4, True), (1, 16, False)):
        epoch = make_epoch(net, CE, opt, batch_size=B, remainder="pad", devices=devices)
        placed = replicate((ts, jnp.asarray(x), jnp.asarray(y)), data_mesh(devices))
        hlo = epoch.lower(*placed).compile().as_text()
        assert ("all-reduce" in hlo) == reduces, f"devices={devices}: all-reduce {not reduces}"
        assert f"f64[{rows},8]" in hlo, f"devices={devices}: no [{rows}, 8] first-layer output"
        other = 16 if rows == 4 else 4
        assert f"f64[{other},8]" not in hlo, f"devices={devices}: a [{other}, 8] array"
    print("ok  the 4-device epoch computes on 4 rows per device and all-reduces")

    # Eval batches split over the devices too: 30 examples in chunks of 7 rounded up to 8.
    y_four = predict(net, reference.state.params, reference.state.state, x[:30], batch_size=7,
                     devices=4)  # fmt: skip
    assert y_four.sharding.is_fully_replicated and len(y_four.sharding.device_set) == 4
    close(y_four, predict(net, reference.state.params, reference.state.state, x[:30]),
          "predict on 4 devices, batches of 7 (padded to 8)")  # fmt: skip
    # Algorithm 2's statistics of the 4-device runs' replicated states, each batch split over
    # the devices, equal those of the 1-device runs (the same sums in another order).
    split = NamedSharding(data_mesh(4), P(BATCH_AXIS))
    batches = [x[i : i + B] for i in range(0, 64, B)]
    for grad, (pnet, _, one, four) in runs.items():
        key = jax.random.key(3) if pnet.stochastic else None
        pop_one = population_statistics(pnet, one.state.params, one.state.state, batches, key=key)
        pop_four = population_statistics(
            pnet, four.state.params, four.state.state,
            [jax.device_put(b, split) for b in batches], key=key,
        )  # fmt: skip
        leaf = jax.tree.leaves(pop_four)[0]
        assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
        close(pop_four, pop_one, f"{grad}: population statistics on 4 devices")
    try:
        fit(net, CE, opt, ts, (x, y), epochs=1, batch_size=18, devices=4)
    except ValueError as e:
        assert "batch_size=18 must be divisible by the 4 devices" in str(e), e
        assert "Use batch_size 16 or 20" in str(e), e
    else:
        raise AssertionError("batch_size=18 on 4 devices was not refused")

    # Another device count between epochs: the math is the same.
    first = fit(net, CE, opt, ts, (x, y), epochs=2, devices=4, **options)
    rest = fit(net, CE, opt, first.state, (x, y), epochs=1, devices=1, history=first.history,
               **options)  # fmt: skip
    close(records(rest), records(reference), "2 epochs on 4 devices, then 1 on 1: history")
    close(rest.state.params, reference.state.params, "2 epochs on 4 devices, then 1 on 1: params")


def cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = jaxnn.cli.main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, err.getvalue()


def check_cli(folder):
    from jaxnn import cli as _cli  # noqa: F401  (jaxnn.cli, for cli() above)

    folder = Path(folder)
    base = [
        "train",
        "--data",
        "moons",
        "--hidden",
        "16",
        "-q",
        "--checkpoint",
        str(folder / "ckpt"),
    ]
    code, err = cli([*base, "--devices", "4", "--epochs", "1", "--out", str(folder / "a")])
    assert code == 0, err
    metrics = json.loads((folder / "a" / "metrics.json").read_text())
    assert metrics["config"]["devices"] == 4 and len(metrics["history"]) == 1
    print("ok  jaxnn train --devices 4 wrote metrics.json")

    code, err = cli([*base, "--devices", "2", "--epochs", "2", "--resume", "--out",
                     str(folder / "b")])  # fmt: skip
    assert code == 0, err
    metrics = json.loads((folder / "b" / "metrics.json").read_text())
    assert metrics["config"]["devices"] == 2 and len(metrics["history"]) == 2
    print("ok  a checkpoint of 4 devices resumed on 2")

    code, err = cli(["train", "--devices", "8", "-q", "--out", str(folder / "c")])
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    assert "this process has 4 cpu device(s)" in err, err
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in err, err
    code, err = cli(["train", "--devices", "4", "--batch-size", "30", "-q", "--out",
                     str(folder / "c")])  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    assert "batch_size=30 must be divisible by the 4 devices" in err, err
    print("ok  --devices 8 on 4 devices, --batch-size 30 on 4: one-line usage errors")


def check_processes(port, process_id):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default since 0.4.36
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
        initialization_timeout=60,
    )  # fmt: skip
    assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
    assert (jax.process_count(), jax.local_device_count(), jax.device_count()) == (2, 2, 4)
    mesh = data_mesh(2)  # 2 devices of each process
    assert {d.process_index for d in mesh.devices.flat} == {0, 1} and mesh.devices.size == 4
    x, y, opt, options = problem()
    del options["validation"]  # compiles less; the 4-device script checks evaluation
    net = jaxnn.mlp([8, 3], "tanh", batchnorm=True)
    ts = TrainState.create(net, opt, jax.random.key(0), (B, 5))
    alone = fit(net, CE, opt, ts, (x, y), epochs=EPOCHS, **options)  # this process's device
    both = fit(net, CE, opt, ts, (x, y), epochs=EPOCHS, devices=2, **options)
    leaf = jax.tree.leaves(both.state.params)[0]
    assert not leaf.is_fully_addressable and leaf.sharding.is_fully_replicated
    close(records(both), records(alone), f"process {process_id}: 4 devices of 2 processes")
    close(both.state.params, alone.state.params, f"process {process_id}: final params")
    close(both.state.state, alone.state.state, f"process {process_id}: final BatchNorm state")
    try:
        replicate(np.full(3, float(process_id)), mesh)
    except ValueError as e:
        assert "processes hold different values" in str(e), e
    else:
        raise AssertionError("data that differ between the processes were not refused")
    print("ok  data that differ between processes are refused")


if __name__ == "__main__":
    if sys.argv[1] == "fit":
        check_fit()
    elif sys.argv[1] == "cli":
        check_cli(sys.argv[2])
    else:
        check_processes(int(sys.argv[2]), int(sys.argv[3]))
    print("ALL CHECKS PASSED")
