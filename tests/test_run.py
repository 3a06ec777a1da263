"""``jaxnn train`` and :mod:`jaxnn.run`: the acceptance run on digits, exact resume, bad data."""

import gzip
import json
import struct

import jax
import numpy as np
import pytest

from jaxnn import checkpoint, cli
from jaxnn.run import RunConfig, run


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_jaxnn_train_with_its_defaults_reaches_97_percent_on_digits(tmp_path, capsys):
    """The issue's acceptance run: defaults (MLP 64-128-64-10 with BatchNorm, Adam), digits."""
    code = cli.main(["train", "--out", str(tmp_path), "-q"])
    out = capsys.readouterr().out
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"] == RunConfig().to_json()
    assert metrics["test"]["accuracy"] >= 0.97
    assert len(metrics["history"]) == RunConfig().epochs
    assert "test accuracy" in out and "epoch  20" in out
    confusion = np.asarray(metrics["test"]["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == metrics["data"]["test"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["test"]["accuracy"])
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, grad):
    config = RunConfig(hidden=(32,), dropout=0.2, epochs=4, grad=grad)
    whole = run(config, checkpoint_dir=tmp_path / "whole")
    # Interrupted after epoch 2 (as a crash would leave it), then resumed to 4.
    run(RunConfig(**{**config.__dict__, "epochs": 2}), checkpoint_dir=tmp_path / "cut")
    resumed = run(config, checkpoint_dir=tmp_path / "cut", resume=True)
    assert _strip(resumed["history"]) == _strip(whole["history"])
    assert resumed["test"] == whole["test"]
    a = checkpoint.restore(tmp_path / "whole", _like(config))
    b = checkpoint.restore(tmp_path / "cut", _like(config))
    assert a.step == b.step == 4
    for x, y in zip(jax.tree.leaves(a.train_state), jax.tree.leaves(b.train_state), strict=True):
        if jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _like(config):
    import jaxnn.data
    from jaxnn.run import build
    from jaxnn.train import TrainState

    splits = jaxnn.data.load(config.data, seed=config.seed)
    net, opt = build(config, splits)
    return TrainState.create(net, opt, jax.random.key(config.seed), (8, splits.train.x.shape[1]))


def test_resuming_another_runs_checkpoint_is_refused(tmp_path):
    run(RunConfig(hidden=(16,), epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"is of another run .*lr: saved 0.001, now 0.01"):
        run(RunConfig(hidden=(16,), epochs=2, lr=1e-2), checkpoint_dir=tmp_path, resume=True)


def _idx(path, array, code=0x08):
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(">u1").tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def test_a_corrupt_mnist_file_is_one_line_naming_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _idx(bad, np.arange(20) % 10)
    bad.write_bytes(bad.read_bytes()[:-7])  # a truncated download
    argv = ["train", "--data", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    code = cli.main([*argv, "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "t10k-labels-idx1-ubyte.gz" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
