"""Checkpoints (jaxnn.checkpoint): exact round trips into the caller's tree structure, the
checks of restore, keeping the last N, and a save killed midway leaving the previous one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checkpoint_crash_child import small_state

import jaxnn
from jaxnn import checkpoint
from jaxnn.batchnorm import BatchNormState
from jaxnn.train import TrainState

ROOT = Path(__file__).resolve().parent.parent
CRASH_CHILD = Path(__file__).resolve().parent / "checkpoint_crash_child.py"


def make_state(
    hidden: int = 16,
    optimizer: optax.GradientTransformation | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    key_impl: str | None = None,
) -> TrainState:
    net = jaxnn.mlp([hidden, 10], "relu", batchnorm=True, param_dtype=dtype)
    opt = optax.adam(1e-3) if optimizer is None else optimizer

    params, state = net.init(jax.random.key(0), (8, 4))
    key = jax.random.key(seed, impl=key_impl)
    return TrainState(params, state, opt.init(params), jnp.int32(0), key)


def trained(ts: TrainState, steps: int = 3) -> TrainState:
    """``ts`` with every leaf changed (params, BatchNorm statistics and count, Adam moments and
    count, step, key), so that a restore that loses anything shows."""
    net = jaxnn.mlp([16, 10], "relu", batchnorm=True, param_dtype=jnp.float32)
    opt = optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(1), (8, 4), jnp.float32)

    @jax.jit
    def step(ts: TrainState) -> TrainState:
        def loss(params):
            y, new_state = net.apply(params, ts.state, x, train=True)
            return jnp.mean(y**2), new_state

        (_, new_state), grads = jax.value_and_grad(loss, has_aux=True)(ts.params)
        updates, opt_state = opt.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, new_state, opt_state, ts.step + 1, jax.random.split(ts.key)[0])

    for _ in range(steps):
        ts = step(ts)
    return ts


def assert_identical(restored: Any, expected: Any) -> None:
    """Same tree structure (NamedTuple types, empty nodes), dtypes, shapes and bits."""
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(restored)[0],
        jax.tree_util.tree_leaves(expected),
        strict=True,
    ):
        where = jax.tree_util.keystr(path)
        assert isinstance(a, jax.Array), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(a) == jax.random.key_impl(b), where
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "optimizer",
    [
        optax.adam(1e-3),
        optax.sgd(0.1),  # (EmptyState(), EmptyState()): a state without arrays
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)),
        optax.masked(optax.adamw(1e-3), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    ],
    ids=["adam", "sgd", "clip+momentum", "masked-adamw"],
)
def test_train_state_round_trip_is_exact_with_the_same_tree_structure(tmp_path, optimizer):
    ts = make_state(optimizer=optimizer)
    ts = ts._replace(step=jnp.int32(7), key=jax.random.split(ts.key)[0])  # not `like`'s
    path = checkpoint.save(tmp_path, ts, step=7)
    assert path == tmp_path / "7" and path.is_dir()
    restored = checkpoint.restore(tmp_path, like=make_state(optimizer=optimizer, seed=1))
    assert restored.step == 7
    assert_identical(restored.train_state, ts)


def test_trained_state_round_trip_is_exact(tmp_path):
    ts = trained(make_state())
    assert ts.step.dtype == jnp.int32 and ts.state["batchnorm_1"].count.dtype == jnp.int32
    checkpoint.save(tmp_path, ts, step=3)
    restored = checkpoint.restore(tmp_path, like=make_state()).train_state
    assert_identical(restored, ts)
    assert isinstance(restored.state["batchnorm_1"], BatchNormState)
    assert "dense_0" not in restored.state and "relu_2" not in restored.params  # lean trees
    assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
    assert isinstance(restored.opt_state[1], optax.EmptyState)
    assert int(restored.state["batchnorm_1"].count) == 3
    # Onto the default device, as a like built there.
    assert restored.params["dense_0"]["w"].devices() == {jax.devices()[0]}


def test_restore_into_an_abstract_like(tmp_path):
    ts = trained(make_state(), steps=1)
    checkpoint.save(tmp_path, ts, step=1)
    abstract = jax.eval_shape(make_state)
    assert_identical(checkpoint.restore(tmp_path, like=abstract).train_state, ts)


def test_typed_keys_of_any_impl_and_numpy_leaves(tmp_path):
    ts = make_state(key_impl="rbg")
    tree = {"ts": ts, "keys": jax.random.split(jax.random.key(3), 4), "np": np.arange(5.0)}
    checkpoint.save(tmp_path, tree, step=0)
    restored = checkpoint.restore(tmp_path, like=tree).train_state
    assert restored["ts"].key.dtype == ts.key.dtype  # key<rbg>
    assert_identical(restored, jax.tree.map(jnp.asarray, tree))


def test_config_and_extra_round_trip(tmp_path):
    config = {"network": {"hidden": [16, 10], "batchnorm": True}, "lr": 1e-3, "seed": 0}
    extra = {"history": {"loss": [2.5, 1.25, float("nan")], "epoch": [1, 2, 3]}, "note": None}
    checkpoint.save(tmp_path, make_state(), step=1, config=config, extra=extra)
    restored = checkpoint.restore(tmp_path, like=make_state())
    assert restored.config == config
    assert restored.extra["history"]["epoch"] == [1, 2, 3] and restored.extra["note"] is None
    assert restored.extra["history"]["loss"][:2] == [2.5, 1.25]
    assert np.isnan(restored.extra["history"]["loss"][2])
    checkpoint.save(tmp_path, make_state(), step=2)  # no config, no extra
    restored = checkpoint.restore(tmp_path, like=make_state())
    assert (restored.config, restored.extra) == ({}, {})


def test_config_must_be_json(tmp_path):
    with pytest.raises(ValueError, match=r"config must be JSON-serialisable.*\.tolist\(\)"):
        checkpoint.save(tmp_path, make_state(), step=1, config={"w": np.ones(2)})
    assert checkpoint.all_steps(tmp_path) == []


# -------------------------------------------------------------------------- steps and keep


def test_steps_listing_and_keep_the_last_n(tmp_path):
    assert checkpoint.all_steps(tmp_path / "none") == []
    assert checkpoint.latest_step(tmp_path / "none") is None
    assert not (tmp_path / "none").exists()  # listing creates nothing
    ts = make_state()
    for step in (1, 2, 5, 10, 20):
        checkpoint.save(tmp_path, ts._replace(step=jnp.int32(step)), step=step, keep=3)
    assert checkpoint.all_steps(tmp_path) == [5, 10, 20]
    assert checkpoint.latest_step(tmp_path) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10", "20", "5"]
    assert int(checkpoint.restore(tmp_path, like=ts).train_state.step) == 20
    assert int(checkpoint.restore(tmp_path, like=ts, step=5).train_state.step) == 5
    checkpoint.save(tmp_path, ts, step=21, keep=None)
    checkpoint.save(tmp_path, ts, step=22, keep=None)
    assert checkpoint.all_steps(tmp_path) == [5, 10, 20, 21, 22]


def test_save_refuses_a_step_not_after_the_latest(tmp_path):
    ts = make_state()
    checkpoint.save(tmp_path, ts, step=5)
    for step in (5, 3):
        with pytest.raises(ValueError, match=rf"Cannot save step {step} .* up to step 5 .*restore"):
            checkpoint.save(tmp_path, ts, step=step)
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        checkpoint.save(tmp_path, ts, step=6, keep=0)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        checkpoint.save(tmp_path, ts, step=-1)
    assert checkpoint.all_steps(tmp_path) == [5]


def test_save_and_restore_refuse_trees_they_cannot_store(tmp_path):
    with pytest.raises(TypeError, match=r"train_state/step is a int, not an array.*jnp.asarray"):
        checkpoint.save(tmp_path, make_state()._replace(step=3), step=1)
    with pytest.raises(ValueError, match=r"train_state\['a/b'\] and train_state\['a'\]\['b'\]"):
        checkpoint.save(tmp_path, {"a": {"b": np.zeros(1)}, "a/b": np.ones(1)}, step=1)
    with pytest.raises(TypeError, match="train_state is a single ndarray"):
        checkpoint.save(tmp_path, np.zeros(1), step=1)
    assert checkpoint.all_steps(tmp_path) == []
    checkpoint.save(tmp_path, make_state(), step=1)
    with pytest.raises(TypeError, match=r"like/step is a int, not an array or a jax\.ShapeDtype"):
        checkpoint.restore(tmp_path, like=make_state()._replace(step=0))


# --------------------------------------------------------------------------- restore errors


def test_restore_from_a_missing_or_empty_directory(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match=rf"{missing} does not exist"):
        checkpoint.restore(missing, like=make_state())
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} holds no committed checkpoint"):
        checkpoint.restore(tmp_path, like=make_state())


def test_restore_an_absent_step_lists_the_steps(tmp_path):
    for step in (2, 4):
        checkpoint.save(tmp_path, make_state(), step=step)
    with pytest.raises(FileNotFoundError, match=r"step 3 .* its steps are \[2, 4\]"):
        checkpoint.restore(tmp_path, like=make_state(), step=3)


def test_restore_refuses_a_checkpoint_not_saved_by_jaxnn(tmp_path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path, options=options) as mngr:
        mngr.save(1, args=ocp.args.Composite(a=ocp.args.StandardSave({"w": np.ones(2)})))
    with pytest.raises(ValueError, match=r"/1 is an orbax checkpoint but not one of jaxnn's"):
        checkpoint.restore(tmp_path, like={"w": np.ones(2)})


def _mismatch(tmp_path: Path, saved: TrainState, like: TrainState) -> str:
    checkpoint.save(tmp_path, saved, step=1, config={"hidden": 16, "optimizer": "adam"})
    with pytest.raises(ValueError) as info:
        checkpoint.restore(tmp_path, like=like)
    message = str(info.value)
    assert "does not match the expected train state" in message
    assert "same network and optimizer configuration" in message
    assert '{"hidden": 16, "optimizer": "adam"}' in message  # the saved run's config
    return message


def test_restore_names_every_shape_difference(tmp_path):
    saved, like = make_state(hidden=16), make_state(hidden=32)
    message = _mismatch(tmp_path, saved, like)
    assert "params/dense_0/w: shape (4, 16) saved, (4, 32) expected" in message
    assert "params/dense_3/w: shape (16, 10) saved, (32, 10) expected" in message
    assert "state/batchnorm_1/mean: shape (16,) saved, (32,) expected" in message
    assert "opt_state/0/mu/dense_0/w: shape (4, 16) saved, (4, 32) expected" in message
    assert "params/dense_3/b" not in message  # (10,) either way
    differ = [
        a.shape != b.shape
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(like), strict=True)
    ]
    assert f"{sum(differ)} difference(s)" in message and message.count(" saved, ") == sum(differ)


def test_restore_names_the_structure_difference_of_another_optimizer(tmp_path):
    message = _mismatch(tmp_path, make_state(), make_state(optimizer=optax.sgd(0.1)))
    assert "opt_state/0/count: int32[] in the checkpoint, not expected" in message
    assert "opt_state/0/mu/dense_0/w: float32[4, 16] in the checkpoint, not expected" in message
    assert "opt_state/0/nu/batchnorm_1/gamma" in message
    message = _mismatch(tmp_path / "b", make_state(optimizer=optax.sgd(0.1)), make_state())
    assert "opt_state/0/count: expected int32[], not in the checkpoint" in message


def test_restore_names_the_dtype_difference(tmp_path):
    message = _mismatch(tmp_path, make_state(dtype=jnp.float64), make_state(dtype=jnp.float32))
    assert "params/dense_0/w: dtype float64 saved, float32 expected" in message
    assert "opt_state/0/nu/dense_3/b: dtype float64 saved, float32 expected" in message
    message = _mismatch(tmp_path / "b", make_state(), make_state(key_impl="rbg"))
    assert "key: shape () saved" not in message  # same shape, another impl
    assert "key: dtype key<fry> saved, key<rbg> expected" in message


# ------------------------------------------------------------------------- crash mid-save


MEGABYTES = 256  # of random float32 in the save that is killed: about a second to write


def _bytes_of(directory: Path, prefix: str) -> int:
    """Bytes in the files under ``directory``'s entries named ``prefix*``."""
    total = 0
    for entry in directory.iterdir():
        if entry.name.startswith(prefix):
            try:
                total += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            except FileNotFoundError:  # renamed or removed while we walked it
                pass
    return total


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    run, log = tmp_path / "run", tmp_path / "child.stderr"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    # stderr to a file: a pipe nobody reads would stall the child once full.
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, str(CRASH_CHILD), str(run), str(MEGABYTES)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        ) as child,
    ):
        try:
            line = child.stdout.readline()
            assert line == "saving step 2\n", line + log.read_text()
            # Kill once an eighth of step 2's arrays is in its temporary directory: orbax is
            # writing them, and commits (renames the directory to "2") only when all are.
            deadline = time.monotonic() + 60
            while _bytes_of(run, "2.") < MEGABYTES * 2**20 // 8:
                assert child.poll() is None, (
                    f"the child ended before the kill (exit {child.returncode}): the save of "
                    f"step 2 was too quick to be killed midway, save more than {MEGABYTES} MB"
                )
                assert time.monotonic() < deadline, "step 2's arrays were never written"
                time.sleep(0.002)
            alive = child.poll() is None
            child.send_signal(signal.SIGKILL)
            out = child.communicate(timeout=30)[0]
        finally:
            if child.poll() is None:
                child.kill()
    # The test tests something only if the kill landed during the save: make the save bigger
    # should this fail, never accept it.
    assert alive, "the save of step 2 finished before the kill: save more megabytes"
    assert child.returncode == -signal.SIGKILL, log.read_text()
    assert "saved step 2" not in out
    left = sorted(p.name for p in run.iterdir())
    assert "2" not in left and any(name.startswith("2.") for name in left), left  # uncommitted

    assert checkpoint.all_steps(run) == [1] and checkpoint.latest_step(run) == 1
    restored = checkpoint.restore(run, like=small_state())
    assert restored.step == 1 and restored.config == {"run": "crash"}
    assert_identical(restored.train_state, jax.tree.map(jnp.asarray, small_state()))

    again = {"w": np.full((3, 4), 2.0, np.float32), "step": np.array(2, np.int32)}
    checkpoint.save(run, again, step=2)
    assert checkpoint.all_steps(run) == [1, 2]
    assert sorted(p.name for p in run.iterdir()) == ["1", "2"]  # the unfinished one is gone
    restored = checkpoint.restore(run, like=again).train_state
    assert_identical(restored, jax.tree.map(jnp.asarray, again))
