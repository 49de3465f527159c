"""Checkpoints through real runs: they load without running code, a file that smuggles code is refused and never
run, the older format gets one sentence and converts with ganlab/convert_checkpoint.py, and a run resumes bit for
bit on the streaming data path too. Also the one-line error of a download that cannot reach the network."""

import pathlib
import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, dataset_overrides
from omegaconf import OmegaConf

from ganlab.batches import StreamingBatches
from ganlab.checkpoint import CHECKPOINT, FORMAT_VERSION, PREVIOUS
from ganlab.cli import sample_command
from ganlab.config import build
from ganlab.data import make_batches
from ganlab.device import set_rng_state
from ganlab.errors import CheckpointError, DataError
from ganlab.train import train

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
QUICK = ["train.batch_size=4", "log.every=1", "log.sample_every=0", "log.num_samples=4", "log.progress=false",
         "eval.enabled=false", "device=cpu", "device.threads=1", "model.hidden=16"]  # fmt: skip
# d_steps and EMA, so the resumed state covers both optimisers and the EMA copy
RESUMABLE = ["loss=lsgan", "train.d_steps=2", "train.checkpoint_every=2", "train.ema_decay=0.9"]


def run(tmp_path: Path, data_root: Path, overrides: list[str], name: str = "run") -> dict:
    return train(compose_config(QUICK + dataset_overrides("mnist", data_root) + overrides), tmp_path / name)


def safe_load(run_dir: Path, name: str = CHECKPOINT) -> dict:
    return torch.load(run_dir / name, weights_only=True)


def assert_same_training_state(a: Path, b: Path) -> None:
    """The final checkpoints of two runs hold bit-identical weights, EMA, optimiser states and data positions."""
    left, right = safe_load(a), safe_load(b)
    assert left["step"] == right["step"]
    for key in ("model", "ema"):
        for name, tensor in left[key].items():
            assert torch.equal(tensor, right[key][name]), f"{key}.{name}"
    for key in ("g_opt", "d_opt"):
        for index, state in left[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(right[key]["state"][index][name])), key
    assert left["batches"] == right["batches"]


def convert(target: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganlab.convert_checkpoint", str(target)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


class Smuggler:
    """Pickles as the call `Path(marker).touch()`: loading it with weights_only=False creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def smuggle(path: Path, marker: Path) -> None:
    """Add a `Smuggler` to the checkpoint `path`, as someone sharing a run folder could."""
    state = torch.load(path, weights_only=True)
    torch.save(state | {"smuggled": Smuggler(marker)}, path)


def write_format_1(path: Path) -> None:
    """Rewrite the checkpoint `path` as ganlab wrote them before format 2: the RNG states as python, numpy and torch
    return them (numpy's as a pickled array), the config as a dict, and no format version or data position."""
    state = torch.load(path, weights_only=True)
    set_rng_state(state["rng"])
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    config = OmegaConf.to_container(OmegaConf.create(state["config"]))
    old = {key: value for key, value in state.items() if key not in ("format_version", "batches")}
    torch.save(old | {"rng": rng, "config": config}, path)


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


# --- safe checkpoints ------------------------------------------------------------------------------------------


def test_a_checkpoint_loads_with_weights_only(tmp_path, data_root):
    run(tmp_path, data_root, ["train.steps=2"])
    state = safe_load(tmp_path / "run")
    assert state["format_version"] == FORMAT_VERSION and state["step"] == 2
    assert OmegaConf.create(state["config"]).train.steps == 2  # the config as YAML text
    assert isinstance(state["rng"]["numpy"]["key"], torch.Tensor)
    assert state["batches"] == {}  # the in-memory path draws from the global RNG, saved in "rng"


def test_a_smuggled_callable_is_refused_and_never_runs(tmp_path, data_root):
    run(tmp_path, data_root, RESUMABLE + ["train.steps=4"])
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    assert (run_dir / PREVIOUS).exists()  # a readable previous checkpoint must not be used instead
    smuggle(run_dir / CHECKPOINT, marker)

    with pytest.raises(CheckpointError) as resumed:
        run(tmp_path, data_root, RESUMABLE + ["train.steps=6"])
    with pytest.raises(CheckpointError) as sampled:
        sample_command([str(run_dir), "n=4", f"out={tmp_path / 'samples.npz'}"])
    command = subprocess.run([sys.executable, "-c", "from ganlab.entry import sample; sample()", str(run_dir),
                              "n=4", f"out={tmp_path / 'samples.npz'}"], capture_output=True, text=True)  # fmt: skip
    converter = convert(run_dir)
    for message in (str(resumed.value), str(sampled.value)):
        assert one_line(message) and str(run_dir / CHECKPOINT) in message
        assert "refused and nothing in it was run" in message and "getattr" in message
    assert command.returncode == 2 and command.stderr.startswith("ganlab: error:") and one_line(command.stderr)
    assert converter.returncode == 2 and "refused" in converter.stderr and one_line(converter.stderr)
    assert not marker.exists() and not (tmp_path / "samples.npz").exists()
    assert safe_load(run_dir, PREVIOUS)["step"] == 2  # left as it was

    torch.load(run_dir / CHECKPOINT, weights_only=False)  # the smuggler works: an unsafe load runs it
    assert marker.exists()


def test_an_old_checkpoint_is_converted_and_the_run_resumes_bit_identically(tmp_path, data_root):
    run(tmp_path, data_root, RESUMABLE + ["train.steps=6"], name="straight")
    run(tmp_path, data_root, RESUMABLE + ["train.steps=3"], name="old")
    run_dir = tmp_path / "old"
    for name in (CHECKPOINT, PREVIOUS):
        write_format_1(run_dir / name)
        with pytest.raises(Exception, match="Weights only load failed"):
            safe_load(run_dir, name)

    with pytest.raises(CheckpointError) as refused:
        run(tmp_path, data_root, RESUMABLE + ["train.steps=6"], name="old")
    message = str(refused.value)
    assert one_line(message) and "written by an older ganlab" in message
    assert f"python -m ganlab.convert_checkpoint {run_dir}" in message

    converted = convert(run_dir)
    assert converted.returncode == 0, converted.stderr
    assert "trusting" in converted.stderr
    for name in (CHECKPOINT, PREVIOUS):
        assert safe_load(run_dir, name)["format_version"] == FORMAT_VERSION
        assert (run_dir / f"{name}.v1.bak").exists()
    assert "already in format" in convert(run_dir / CHECKPOINT).stdout

    summary = run(tmp_path, data_root, RESUMABLE + ["train.steps=6"], name="old")
    assert summary["step"] == 6
    assert_same_training_state(tmp_path / "straight", run_dir)
    sample_command([str(run_dir), "n=10", f"out={tmp_path / 'samples.npz'}"])  # ganlab-sample reads it too
    with np.load(tmp_path / "samples.npz") as samples:
        assert samples["images"].shape == (10, 1, 28, 28)


def test_a_damaged_checkpoint_still_falls_back_to_the_previous_one(tmp_path, data_root):
    run(tmp_path, data_root, RESUMABLE + ["train.steps=4"])
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert run(tmp_path, data_root, RESUMABLE + ["train.steps=6"])["step"] == 6


# --- exact resume on the streaming data path --------------------------------------------------------------------


def streaming_source(data_root: Path, workers: int):
    overrides = dataset_overrides("mnist", data_root) + ["dataset.in_memory=false", f"dataset.workers={workers}"]
    return build(compose_config(overrides).dataset, "dataset")


@pytest.mark.parametrize("workers", [0, 1])
def test_the_stream_continues_exactly_after_load_state_dict(data_root, workers):
    first = make_batches(streaming_source(data_root, workers), CPU, (0.0, 1.0), 16, seed=3)
    assert isinstance(first, StreamingBatches)
    before = torch.get_rng_state()
    first.next(5)
    first.next(40)  # mid-epoch, part of a loader batch left over
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 45}
    expected = torch.cat([first.next(16)[0] for _ in range(4)])  # across the end of the 64-image epoch
    assert first.state_dict() == {"epoch": 1, "position": 45}
    assert torch.equal(torch.get_rng_state(), before)  # the stream leaves the training's RNG alone

    second = make_batches(streaming_source(data_root, workers), CPU, (0.0, 1.0), 16, seed=3)
    second.load_state_dict(state)
    assert torch.equal(torch.cat([second.next(16)[0] for _ in range(4)]), expected)


def test_each_epoch_is_its_own_order_of_every_image(data_root):
    batches = make_batches(streaming_source(data_root, 0), CPU, (0.0, 1.0), 16, seed=0)
    epochs = batches.next(64)[0], batches.next(64)[0]
    assert not torch.equal(*epochs)
    assert sorted(image.numpy().tobytes() for image in epochs[0]) == sorted(i.numpy().tobytes() for i in epochs[1])
    other_seed = make_batches(streaming_source(data_root, 0), CPU, (0.0, 1.0), 16, seed=1)
    assert not torch.equal(other_seed.next(64)[0], epochs[0])


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_on_the_streaming_path_is_bit_identical(tmp_path, data_root, workers):
    # 8 images per D step, 2 D steps: 4 for the real grid + 16 a step pass the 64-image epoch in step 4
    common = RESUMABLE + ["train.batch_size=8", "dataset.in_memory=false", f"dataset.workers={workers}"]
    run(tmp_path, data_root, common + ["train.steps=6"], name="straight")
    run(tmp_path, data_root, common + ["train.steps=3"], name="split")
    assert safe_load(tmp_path / "split")["batches"] == {"epoch": 0, "position": 4 + 3 * 16}
    assert run(tmp_path, data_root, common + ["train.steps=6"], name="split")["step"] == 6
    assert safe_load(tmp_path / "straight")["batches"] == {"epoch": 1, "position": 4 + 6 * 16 - 64}
    assert_same_training_state(tmp_path / "straight", tmp_path / "split")


# --- the download error ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mnist", "cifar10"])
def test_a_download_without_network_is_one_sentence(kind, tmp_path, monkeypatch):
    def offline(*args, **kwargs):  # what urllib raises when the name of the server cannot be resolved
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    overrides = [f"dataset={kind}", f"dataset.root={tmp_path}", "dataset.download=true"]
    source = build(compose_config(overrides).dataset, "dataset")
    with pytest.raises(DataError) as error:
        make_batches(source, CPU, (0.0, 1.0), 4)
    message = str(error.value)
    assert one_line(message) and "Tried" not in message and "urlopen" not in message
    assert message.startswith(f"dataset {kind}: could not download it to dataset.root={tmp_path} ")
    assert "([Errno -3] Temporary failure in name resolution)" in message
    assert message.endswith("check the network, or set dataset.root to a folder that already holds the files.")
