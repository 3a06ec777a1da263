"""``jaxnn train`` and :mod:`jaxnn.run`: the acceptance run on digits, exact resume, bad data."""

import gzip
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxnn import checkpoint, cli
from jaxnn.run import Interrupted, RunConfig, load_metrics, run


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.slow  # whole trainings on digits
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


@pytest.mark.slow  # two whole trainings on digits
def test_jaxnn_train_model_cnn_reaches_98_5_percent_on_digits_on_both_gradient_paths(tmp_path):
    """The convolutional network with its defaults (channels 32,64, one block per stage,
    BatchNorm, Adam 1e-3, batches of 32, 20 epochs) on digits: at least 98.5 % test accuracy on
    each gradient path, and the two within 0.3 points (one test example is 0.28 points)."""
    accuracy = {}
    for grad in ("autodiff", "manual"):
        out = tmp_path / grad
        assert cli.main(["train", "--model", "cnn", "--grad", grad, "--out", str(out), "-q"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["model"] == "cnn" and metrics["config"]["channels"] == [32, 64]
        accuracy[grad] = metrics["test"]["accuracy"]
    assert min(accuracy.values()) >= 0.985, accuracy
    assert abs(accuracy["autodiff"] - accuracy["manual"]) <= 0.003, accuracy


def test_the_cnn_model_is_refused_where_it_cannot_run(tmp_path, capsys):
    with pytest.raises(ValueError, match="'cnn' needs images; 'moons' is not an image data set"):
        RunConfig(model="cnn", data="moons")
    with pytest.raises(ValueError, match=r"dropout: 0\.1 is an option of the MLP"):
        RunConfig(model="cnn", dropout=0.1)
    with pytest.raises(ValueError, match="one of cnn, mlp"):
        RunConfig(model="resnet")
    with pytest.raises(ValueError, match=r"channels\[1\]"):
        RunConfig(model="cnn", channels=(8, 0))
    out = tmp_path / "out"
    assert cli.main(["train", "--model", "cnn", "--data", "xor", "--out", str(out), "-q"]) == 2
    assert "needs images" in capsys.readouterr().err
    assert not out.exists()  # a refused configuration creates nothing


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
@pytest.mark.slow  # whole trainings on digits
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


# ----------------------------------------------------------------------------- trust at the edges

REPO = Path(__file__).resolve().parent.parent


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_diverged_run_exits_1_and_keeps_its_record_and_its_last_finite_state(tmp_path, capsys):
    argv = ["train", "--data", "xor", "--hidden", "8", "--optimizer", "sgd", "--lr", "100",
            "--epochs", "20", "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck"),
            "-q"]  # fmt: skip
    with jax.enable_x64(False):  # float32, as the command runs
        code = cli.main(argv)
    err = _one_line(capsys.readouterr().err)
    assert code == 1
    # Which non-finite value the loss reaches (inf or NaN) is the arithmetic's: the record
    # names the epoch and what to do either way.
    assert re.search(r"the run diverged at epoch 2 \(loss (inf|nan)", err) and "Lower --lr" in err
    text = (tmp_path / "out" / "metrics.json").read_text()
    raw = json.loads(text)  # strict JSON: no bare NaN or Infinity tokens
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text.replace(
        '"Infinity"', ""
    )
    assert raw["status"] == "diverged" and raw["diverged"]["epoch"] == 2
    assert raw["history"][1]["val_loss"] == "NaN"
    metrics = load_metrics(tmp_path / "out" / "metrics.json")
    assert math.isnan(metrics["history"][1]["val_loss"]) and metrics["test_epoch"] == 1
    assert math.isfinite(metrics["test"]["loss"])
    assert (tmp_path / "out" / "learning_curve.png").is_file()
    # The diverged state is not checkpointed: the latest checkpoint is epoch 1, finite.
    assert checkpoint.all_steps(tmp_path / "ck") == [1]
    with jax.enable_x64(False):
        config = RunConfig(data="xor", hidden=(8,), optimizer="sgd", lr=100.0, epochs=20)
        restored = checkpoint.restore(tmp_path / "ck", _like(config))
    for leaf in jax.tree.leaves(restored.train_state.params):
        assert np.isfinite(np.asarray(leaf)).all()


def test_a_user_file_in_a_checkpoint_folder_is_never_deleted(tmp_path, capsys):
    """The report: `--checkpoint proj` with proj/0/results.txt deleted proj/0 and exited 0."""
    proj = tmp_path / "proj"
    (proj / "0").mkdir(parents=True)
    (proj / "0" / "results.txt").write_text("a week of work")
    code = cli.main(["train", "--checkpoint", str(proj), "--epochs", "4", "--out",
                     str(tmp_path / "out"), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and "0/ (a folder without jaxnn's manifest" in _one_line(err)
    assert (proj / "0" / "results.txt").read_text() == "a week of work"
    assert out == ""  # refused before any epoch


def _checkpoint_folder(kind, tmp_path):
    folder = tmp_path / "ck"
    if kind == "a file":
        folder.write_text("not a folder")
    elif kind == "a user's folder":
        (folder / "notes").mkdir(parents=True)
    elif kind == "another run's checkpoints":
        checkpoint.save(folder, {"a": np.ones(2, np.float32)}, step=1)
    elif kind == "a folder under a file":
        folder.write_text("not a folder")
        folder = folder / "sub"
    return folder


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("a file", "is a file, not a folder"),
        ("a user's folder", "notes/"),
        ("another run's checkpoints", "holds the checkpoints of a run (epochs [1])"),
        ("a folder under a file", "on its path is a file"),
    ],
)
def test_every_checkpoint_folder_problem_is_found_before_training(tmp_path, capsys, kind, fragment):
    folder = _checkpoint_folder(kind, tmp_path)
    code = cli.main(["train", "--hidden", "8", "--checkpoint", str(folder), "--out",
                     str(tmp_path / "out"), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and fragment in _one_line(err)
    assert out == ""  # no epoch ran, nothing was loaded


@pytest.mark.slow  # whole trainings on digits
def test_a_damaged_checkpoint_says_which_and_fallback_resumes_from_the_intact_one(tmp_path, capsys):
    with jax.enable_x64(False):
        first = run(RunConfig(hidden=(8,), epochs=3), checkpoint_dir=tmp_path / "ck")
    (tmp_path / "ck" / "3" / "jaxnn" / "metadata").write_text("{garbage")
    argv = ["train", "--hidden", "8", "--epochs", "4", "--checkpoint", str(tmp_path / "ck"),
            "--resume", "--out", str(tmp_path / "out"), "-q"]  # fmt: skip
    with jax.enable_x64(False):
        code = cli.main(argv)
    err = _one_line(capsys.readouterr().err)
    assert code == 2 and "/3 is damaged" in err and "--fallback resumes from epoch 2" in err
    with jax.enable_x64(False):
        code = cli.main([*argv, "--fallback"])
    assert code == 0
    out = capsys.readouterr().out
    assert "checkpoint 3 is damaged" in out and "3.damaged" in out
    assert (tmp_path / "ck" / "3.damaged" / "jaxnn" / "metadata").read_text() == "{garbage"
    resumed = load_metrics(tmp_path / "out" / "metrics.json")["history"]
    # Resumed from epoch 2, epoch 3 is trained again exactly as the first time.
    assert _strip(resumed[:3]) == _strip(first["history"]) and len(resumed) == 4
    assert checkpoint.all_steps(tmp_path / "ck") == [2, 3, 4]


def test_ctrl_c_while_saving_finishes_the_checkpoint_then_stops(tmp_path, monkeypatch):
    """SIGINT arriving inside a save is held until the checkpoint is committed."""
    real_save = checkpoint.save

    def save_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered now, held by the run
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_interrupted)
    with jax.enable_x64(False), pytest.raises(Interrupted) as caught:
        run(RunConfig(hidden=(8,), epochs=5), checkpoint_dir=tmp_path / "ck", out=tmp_path / "o")
    assert caught.value.saved == caught.value.epochs == 1
    assert checkpoint.all_steps(tmp_path / "ck") == [1]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["history"]) == 1
    assert metrics["test"] is None


@pytest.mark.slow  # whole trainings on digits
def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes_exactly(tmp_path):
    """The command in its own process, interrupted (SIGINT) after its third epoch's line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    ck = tmp_path / "ck"
    argv = [sys.executable, "-m", "jaxnn.cli", "train", "--hidden", "8", "--epochs", "500",
            "--checkpoint", str(ck), "--out", str(tmp_path / "o"), "-q"]  # fmt: skip
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=tmp_path)  # fmt: skip
    for line in child.stdout:
        if line.startswith("epoch   3"):
            child.send_signal(signal.SIGINT)
            break
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    line = _one_line(err)
    saved = checkpoint.latest_step(ck)
    assert 3 <= saved < 500
    assert f"interrupted after {saved} epoch(s); {ck} holds epochs up to {saved}" in line
    assert "--resume" in line
    assert load_metrics(tmp_path / "o" / "metrics.json")["status"] == "interrupted"
    config = RunConfig(hidden=(8,), epochs=saved + 2)
    with jax.enable_x64(False):
        resumed = run(config, checkpoint_dir=ck, resume=True)
        whole = run(config)
    assert _strip(resumed["history"]) == _strip(whole["history"])
    assert resumed["test"] == whole["test"]


def test_metrics_round_trip_non_finite_numbers(tmp_path):
    from jaxnn.run import _write

    record = {"config": RunConfig().to_json(), "status": "diverged", "history": [
        {"epoch": 1, "loss": math.nan, "val_loss": math.inf, "val_accuracy": -math.inf}],
        "test": None, "test_epoch": 0, "diverged": {"epoch": 1, "values": {"loss": math.nan}}}  # fmt: skip
    _write(tmp_path, record, lambda line: None)
    back = load_metrics(tmp_path / "metrics.json")
    h = back["history"][0]
    assert math.isnan(h["loss"]) and h["val_loss"] == math.inf and h["val_accuracy"] == -math.inf
    assert math.isnan(back["diverged"]["values"]["loss"])
