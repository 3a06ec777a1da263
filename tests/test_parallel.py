"""Data parallelism (jaxnn.parallel, ``fit(..., devices=...)``, ``jaxnn train --devices``).

Several devices need ``XLA_FLAGS`` set before JAX starts, so the checks on 4 simulated CPU
devices, and on 2 processes of 2 devices each, run tests/multidevice_fit.py in child
processes; this process (one device) checks the choice of devices and its errors.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import jaxnn
from jaxnn.fitting import fit
from jaxnn.parallel import BATCH_AXIS, data_mesh
from jaxnn.train import TrainState

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).parent / "multidevice_fit.py"
CE = "softmax_cross_entropy_with_integer_labels"


def _env(devices):
    # JAX_PLATFORMS=cpu: the simulated devices are the host's, on a GPU machine too;
    # PYTHONPATH: jaxnn imports whether installed or not.
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_ENABLE_X64": "1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


def _child(*args, devices=4):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=_env(devices),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL CHECKS PASSED" in result.stdout, result.stdout


@pytest.mark.slow  # processes of 4 simulated devices
def test_four_devices_train_as_one_and_split_the_minibatch():
    _child("fit")


@pytest.mark.slow  # processes of 4 simulated devices
def test_jaxnn_train_on_four_devices_resumes_on_two_and_refuses_eight(tmp_path):
    _child("cli", str(tmp_path))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # processes of 4 simulated devices
def test_two_processes_of_two_devices_train_as_one_device():
    """jax.distributed.initialize on localhost, gloo collectives: a mesh over 2 processes."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "process", str(port), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(2),
        )
        for i in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out}"
        assert "ALL CHECKS PASSED" in out, f"process {i}:\n{out}"


# ----------------------------------------------------------------------------- this process


def test_devices_name_a_mesh_with_a_batch_axis():
    assert data_mesh(None) is None
    one = data_mesh(1)
    assert one.axis_names == (BATCH_AXIS,) and list(one.devices.flat) == jax.local_devices()[:1]
    assert data_mesh(jax.local_devices()[:1]) == one
    mesh = Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("model", BATCH_AXIS))
    assert data_mesh(mesh) is mesh  # a user's mesh, other axes replicated


@pytest.mark.parametrize(
    ("devices", "exc", "fragment"),
    [
        (0, ValueError, "fit: devices must be >= 1, got 0"),
        (4096, ValueError, "fit: devices=4096, but this process has"),
        ("4", TypeError, "devices must be None, a number of devices, a sequence of jax devices"),
        (True, TypeError, "got bool True"),
        ([], TypeError, "a non-empty sequence of jax devices"),
        ("twice", ValueError, "lists a device twice"),
        ("no-batch-axis", ValueError, "the mesh must have a 'batch' axis"),
    ],
)
def test_bad_devices_are_refused_with_the_fix(devices, exc, fragment):
    d = jax.local_devices()[0]
    made = {"twice": lambda: [d, d], "no-batch-axis": lambda: Mesh(np.array([d]), ("data",))}
    if isinstance(devices, str) and devices in made:
        devices = made[devices]()
    net = jaxnn.dense(2)
    opt = optax.sgd(0.1)
    ts = TrainState.create(net, opt, jax.random.key(0), (4, 3))
    with pytest.raises(exc, match=fragment):
        fit(
            net,
            "squared_error",
            opt,
            ts,
            (np.ones((8, 3)), np.ones((8, 2))),
            epochs=1,
            batch_size=4,
            devices=devices,
        )


def test_more_cpu_devices_than_there_are_says_how_to_simulate_them():
    if jax.local_devices()[0].platform != "cpu":
        pytest.skip("the XLA_FLAGS advice is for the CPU")
    n = jax.local_device_count() + 1
    with pytest.raises(ValueError, match=f"xla_force_host_platform_device_count={n}"):
        data_mesh(n)


def test_a_one_device_mesh_trains_exactly_as_no_mesh():
    """``jaxnn train`` runs ``devices=1``: the same computation as plain jit, bit for bit."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((21, 4)), rng.integers(0, 3, 21).astype(np.int32)
    net = jaxnn.mlp([6, 3], "relu", batchnorm=True)
    opt = optax.adam(1e-2)
    ts = TrainState.create(net, opt, jax.random.key(0), (8, 4))
    runs = []
    for devices in (None, 1):
        runs.append(
            fit(
                net,
                CE,
                opt,
                ts,
                (x, y),
                epochs=2,
                batch_size=8,
                remainder="pad",
                validation=(x, y),
                devices=devices,
            )
        )
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in run.history] for run in runs]
    assert strip[0] == strip[1]
    params = [jax.tree.leaves(run.state.params) for run in runs]
    for a, b in zip(*params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
