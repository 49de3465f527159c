"""Shared test fixtures: tiny datasets in the real on-disk formats, and the real config composed with Hydra.

`data_root` writes small MNIST, Fashion-MNIST, CIFAR-10 and image-folder datasets exactly as the real files are laid
out, so every test goes through the real torchvision loaders. `dataset_overrides` points a config at them, and
`compose_config` composes `conf/` the way the command line does.
"""

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import ganlab.train  # noqa: F401  (registers the typed schema `schema` in Hydra's ConfigStore)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# the dataset options of conf/dataset/, so a new dataset is tested (or fails loudly) without editing this file
DATASET_KINDS = sorted(path.stem for path in CONF_DIR.glob("dataset/*.yaml"))
# the toy 2-D mixtures (ganlab.toy) need no files; the image datasets (ganlab.data) are written by `data_root`
TOY_KINDS = [k for k in DATASET_KINDS if "ganlab.toy." in (CONF_DIR / "dataset" / f"{k}.yaml").read_text()]
IMAGE_KINDS = [k for k in DATASET_KINDS if k not in TOY_KINDS]

MNIST_TRAIN_IMAGES = 64  # images in each fixture's MNIST / Fashion-MNIST train split
MNIST_TEST_IMAGES = 16  # ... and in its t10k split
CIFAR_BATCH_IMAGES = 16  # images in each of the fixture's six CIFAR-10 batches (5 train, 1 test)
FOLDER_SIZES = [(40, 36), (36, 40), (32, 32), (48, 30), (24, 28), (64, 64)]  # (width, height) per class
FOLDER_CLASSES = ("a", "b")

# images each kind's train split holds in the fixture
TRAIN_COUNTS = {
    "mnist": MNIST_TRAIN_IMAGES,
    "fashion_mnist": MNIST_TRAIN_IMAGES,
    "cifar10": 5 * CIFAR_BATCH_IMAGES,
    "folder": len(FOLDER_CLASSES) * len(FOLDER_SIZES),
}

# the fixture's folder (or, for folder, the images' folder) for each kind, as the Hydra overrides that train on it
_OVERRIDES = {
    "mnist": lambda root: ["dataset=mnist", f"dataset.root={root}"],
    "fashion_mnist": lambda root: ["dataset=fashion_mnist", f"dataset.root={root}"],
    # scored by the shipped CIFAR-10 net: CIFAR-10's default, Inception, needs weights that cannot be downloaded here
    # (tests/test_inception.py covers that default with weights the tests write)
    "cifar10": lambda root: ["dataset=cifar10", f"dataset.root={root}", "eval.features=net"],
    "folder": lambda root: ["dataset=folder", f"dataset.root={Path(root) / 'folder'}", "dataset.image_size=32"],
} | {kind: (lambda root, kind=kind: [f"dataset={kind}"]) for kind in TOY_KINDS}

_SEEDS = {"mnist": 1, "fashion_mnist": 2, "cifar10": 3, "folder": 4}


def dataset_overrides(kind: str, root) -> list[str]:
    """The Hydra overrides that train on the fixture dataset `kind` written under `root` (the `data_root` path)."""
    if kind not in _OVERRIDES:
        raise KeyError(
            f"no test data for dataset={kind}: add a writer for it to tests/conftest.py (data_root) and an entry "
            f"in _OVERRIDES; the kinds with test data are {sorted(_OVERRIDES)}"
        )
    return _OVERRIDES[kind](root)


def compose_config(overrides: list[str]):
    """The real `conf/config.yaml` composed with `overrides`, as the command line would compose it (a DictConfig)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def critic_step(critic, real, fake, real_labels=None, fake_labels=None, index: int = 0):
    """The `DiscriminatorStep` a penalty reads, for a stand-alone critic `critic(x, y) -> logits`."""
    from ganlab.distributed import Runtime
    from ganlab.regularizers import DiscriminatorStep

    return DiscriminatorStep(real, fake, real_labels, fake_labels, critic(real, real_labels), critic(fake, fake_labels),
                             critic, index, Runtime(torch.device("cpu")))  # fmt: skip


def fixture_train_images(kind: str) -> np.ndarray:
    """The uint8 (N, C, H, W) train images the fixture writes for `kind` (mnist, fashion_mnist or cifar10)."""
    rng = np.random.default_rng(_SEEDS[kind])
    if kind in ("mnist", "fashion_mnist"):
        return rng.integers(0, 256, (MNIST_TRAIN_IMAGES, 1, 28, 28), dtype=np.uint8)
    if kind == "cifar10":
        return rng.integers(0, 256, (5 * CIFAR_BATCH_IMAGES, 3, 32, 32), dtype=np.uint8)
    raise KeyError(f"fixture_train_images has no fixed-size images for dataset={kind}")


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX (the MNIST format): magic 0x08 0x<ndim> (unsigned bytes), each size as a big-endian int32, the data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_mnist(raw: Path, kind: str) -> None:
    """The four IDX files, unpacked (what torchvision reads) and gzipped (what it downloads), as in the real raw/."""
    raw.mkdir(parents=True)
    test_images = np.random.default_rng(_SEEDS[kind] + 100).integers(
        0, 256, (MNIST_TEST_IMAGES, 28, 28), dtype=np.uint8
    )
    files = {
        "train-images-idx3-ubyte": fixture_train_images(kind)[:, 0],
        "train-labels-idx1-ubyte": np.arange(MNIST_TRAIN_IMAGES, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": test_images,
        "t10k-labels-idx1-ubyte": np.arange(MNIST_TEST_IMAGES, dtype=np.uint8) % 10,
    }
    for name, array in files.items():
        data = _idx_bytes(array)
        (raw / name).write_bytes(data)
        (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))


def _write_cifar10(folder: Path) -> dict[str, str]:
    """The CIFAR-10 python batches (pickles of data (N, 3072) uint8 R, G, B planes, labels, ...); returns their md5s.

    The real files are Python 2 pickles whose str keys torchvision reads back, with encoding="latin1", as str
    ("data", "labels"); so the keys are written as str here too (b"data" would be read back as bytes and fail).
    """
    folder.mkdir(parents=True)
    train = fixture_train_images("cifar10")
    test = np.random.default_rng(_SEEDS["cifar10"] + 100).integers(
        0, 256, (CIFAR_BATCH_IMAGES, 3, 32, 32), dtype=np.uint8
    )
    n = CIFAR_BATCH_IMAGES
    batches = {f"data_batch_{b + 1}": train[b * n : (b + 1) * n] for b in range(5)} | {"test_batch": test}
    for name, images in batches.items():
        entry = {
            "batch_label": f"{name} of the ganlab test fixture",
            "labels": [i % 10 for i in range(len(images))],
            "data": images.reshape(len(images), 3 * 32 * 32),  # each row: 1024 red, 1024 green, 1024 blue
            "filenames": [f"image_{i:04d}.png" for i in range(len(images))],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {
        "num_cases_per_batch": n,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}


def _write_folder(folder: Path) -> None:
    """Class subfolders of RGB PNGs of differing sizes, as torchvision.datasets.ImageFolder reads them."""
    rng = np.random.default_rng(_SEEDS["folder"])
    for name in FOLDER_CLASSES:
        (folder / name).mkdir(parents=True)
        for i, (width, height) in enumerate(FOLDER_SIZES):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode="RGB").save(folder / name / f"{i:03d}.png")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A folder with tiny mnist, fashion_mnist, cifar10 and folder datasets in the real on-disk formats.

    torchvision.datasets.CIFAR10 checks each batch file against the md5 of the real file, so while this fixture
    is active (the whole session, once any test asked for it) CIFAR10's md5 attributes are those of the files
    written here. That patch lives in this process only: tests that run the command line in a subprocess
    cannot load this cifar10 data and must use another dataset kind.
    """
    root = tmp_path_factory.mktemp("data")
    _write_mnist(root / "MNIST" / "raw", "mnist")
    _write_mnist(root / "FashionMNIST" / "raw", "fashion_mnist")
    cifar = torchvision.datasets.CIFAR10
    md5 = _write_cifar10(root / cifar.base_folder)
    _write_folder(root / "folder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cifar, "train_list", [[name, md5[name]] for name, _ in cifar.train_list])
        patch.setattr(cifar, "test_list", [[name, md5[name]] for name, _ in cifar.test_list])
        patch.setattr(cifar, "meta", cifar.meta | {"md5": md5[cifar.meta["filename"]]})
        yield root


@pytest.fixture
def one_thread():
    """One torch thread for the test (`pytestmark = pytest.mark.usefixtures("one_thread")`): the machine is shared,
    and scores must not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ganlab_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ganlab.train *args` run for real in `cwd`, on one OpenMP thread (the machine is shared)."""
    return subprocess.run(
        [sys.executable, "-m", "ganlab.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll `condition` until it holds, or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# the real datasets, beside the repository (CI clones it with shared/ next to it)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_net():
    """The shipped MNIST feature net (ganlab/feature_nets), loaded once."""
    from ganlab.features import load_feature_net

    return load_feature_net("mnist")


@pytest.fixture(scope="session")
def real_mnist_test():
    """The real MNIST test split, uint8 (10000, 1, 28, 28), and its labels; skips when ../shared/data is absent."""
    if not (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"the real MNIST is not in {SHARED_DATA} (MNIST/raw/t10k-images-idx3-ubyte)")
    data = torchvision.datasets.MNIST(str(SHARED_DATA), train=False, download=False)
    return data.data.unsqueeze(1), data.targets
