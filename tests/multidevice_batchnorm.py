"""BatchNorm across devices; run by tests/test_batchnorm.py in its own process.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts, so this is a
script, not a test module. It checks:

1. under ``shard_map`` with ``axis_name``, per-device batches of unequal size (4 rows per device,
   of which 4, 1, 3, 2 are real, the rest padding excluded by ``mask``) give exactly the
   statistics, outputs and gradients of one device holding the 10 real rows — for ``jax.grad``
   of the forward and for the hand-derived backward (``manual``);
2. under ``jit`` with the batch sharded over a mesh (no ``axis_name``), results equal the
   single-device results.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn.backprop import manual
from jaxnn.batchnorm import batchnorm

TOL = 1e-12  # float64; the global sums are added in a different order than on one device


def close(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.max(np.abs(x)), np.max(np.abs(y)), 1e-300)
        err = np.max(np.abs(x - y)) / scale
        assert err <= TOL, f"{what}: relative error {err:.3e} > {TOL}"
    print(f"ok  {what}")


def main():
    assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
    # The 4 simulated host devices, whatever the default backend (a GPU machine has 1 GPU).
    devices = jax.devices("cpu")
    assert len(devices) == 4, f"need 4 CPU devices (XLA_FLAGS), got {len(devices)}"
    mesh = Mesh(np.array(devices), ("batch",))
    rows, feats = 4, 3
    x = jax.random.normal(jax.random.key(0), (4 * rows, feats)) * jnp.asarray(
        [1.0, 2.0, 0.5]
    ) + jnp.asarray([3.0, -1.0, 10.0])
    w = jax.random.normal(jax.random.key(1), (4 * rows, feats))
    valid = [4, 1, 3, 2]
    mask = jnp.asarray([r < v for v in valid for r in range(rows)])

    single = batchnorm()
    params, state = single.init(None, x.shape)
    params = {"gamma": jnp.asarray([1.5, 0.5, 2.0]), "beta": jnp.asarray([0.1, -0.2, 0.3])}

    # One device, the real rows only.
    def loss_single(layer):
        def f(params, xv):
            y, _ = layer.apply(params, state, xv, train=True)
            return jnp.sum(y * w[mask])

        return f

    y_ref, state_ref = single.apply(params, state, x[mask], train=True)
    g_ref = jax.grad(loss_single(single), argnums=(0, 1))(params, x[mask])

    # Four devices, statistics combined over the mapped axis, weighted by each device's count.
    synced = batchnorm(axis_name="batch")

    def sharded(layer):
        def body(params, x, w, mask):
            y, new_state = layer.apply(params, state, x, train=True, mask=mask)
            local = jnp.sum(jnp.where(mask[:, None], y * w, 0.0))
            return y, new_state, jax.lax.psum(local, "batch")

        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(), P("batch"), P("batch"), P("batch")),
            out_specs=(P("batch"), P(), P()),
        )

    for name, layer in (("autodiff", synced), ("manual", manual(synced))):
        fn = sharded(layer)
        y, new_state, _ = jax.jit(fn)(params, x, w, mask)
        close(y[mask], y_ref, f"shard_map {name}: outputs of the real rows")
        close(new_state, state_ref, f"shard_map {name}: running statistics")
        g_params, g_x = jax.jit(jax.grad(lambda p, x, fn=fn: fn(p, x, w, mask)[2], argnums=(0, 1)))(
            params, x
        )
        close(g_params, g_ref[0], f"shard_map {name}: d loss / d params")
        close(g_x[mask], g_ref[1], f"shard_map {name}: d loss / d x (real rows)")
        np.testing.assert_array_equal(g_x[~mask], 0.0)  # padding does not enter the loss

    # Eval mode under shard_map: running statistics, no cross-device sums in the forward; the
    # gradient of the replicated params is still the sum over devices.
    trained = state_ref  # running statistics after one step

    def eval_body(layer):
        def body(params, x, w):
            y, _ = layer.apply(params, trained, x, train=False)
            return jax.lax.psum(jnp.sum(y * w), "batch")

        return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("batch"), P("batch")), out_specs=P())

    g_eval_ref = jax.grad(
        lambda p, x: jnp.sum(single.apply(p, trained, x, train=False)[0] * w), argnums=(0, 1)
    )(params, x)
    for name, layer in (("autodiff", synced), ("manual", manual(synced))):
        g = jax.jit(jax.grad(eval_body(layer), argnums=(0, 1)))(params, x, w)
        close(g, g_eval_ref, f"shard_map {name}, eval mode: gradients")

    # What a count-unweighted mean of per-device means (a plain pmean) would have given.
    per_device = [
        np.mean(np.asarray(x[i * rows : i * rows + v]), axis=0) for i, v in enumerate(valid)
    ]
    unweighted = np.mean(per_device, axis=0)
    weighted = np.mean(np.asarray(x[mask]), axis=0)
    print(f"mean of per-device means {unweighted} vs global mean {weighted}")
    assert np.max(np.abs(unweighted - weighted)) > 1e-3

    # jit with the batch sharded over the mesh: no axis_name needed.
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    assert len(xs.sharding.device_set) == 4
    y_full, state_full = single.apply(params, state, x, train=True)
    y_sh, state_sh = jax.jit(lambda p, x: single.apply(p, state, x, train=True))(params, xs)
    close(y_sh, y_full, "jit over a sharded batch: outputs")
    close(state_sh, state_full, "jit over a sharded batch: running statistics")
    for name, layer in (("autodiff", single), ("manual", manual(single))):

        def f(p, x, layer=layer):
            return jnp.sum(layer.apply(p, state, x, train=True)[0] * w)

        g_sh = jax.jit(jax.grad(f, argnums=(0, 1)))(params, xs)
        g_full = jax.grad(f, argnums=(0, 1))(params, x)
        close(g_sh, g_full, f"jit over a sharded batch: gradients ({name})")
    print("ALL CHECKS PASSED")


if __name__ == "__main__":
    main()
