"""ganlab.data through the real path: configs composed from conf/, sources built with `instantiate`, files read by
the real torchvision loaders. Both data paths must serve exactly what the torchvision transform gives."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import (
    IMAGE_KINDS,
    TRAIN_COUNTS,
    compose_config,
    dataset_overrides,
    fixture_train_images,
)
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image
from torchvision import transforms

from ganlab.batches import InMemoryBatches, StreamingBatches
from ganlab.data import ImageSource, make_batches, reference_transform
from ganlab.errors import ConfigError, DataError

CPU = torch.device("cpu")
VALUE_RANGES = [(0.0, 1.0), (-1.0, 1.0)]  # sigmoid and tanh generators

# the real datasets, beside the repository (CI clones it with shared/ next to it)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# a file name the missing-dataset error must name, per kind
EXPECTED_NAME = {
    "mnist": "train-images-idx3-ubyte",
    "fashion_mnist": "train-images-idx3-ubyte",
    "cifar10": "data_batch_1",
    "folder": "<class>",
}

# every dataset option at its fixture settings, plus resized and re-channelled variants
SOURCE_CASES = [(kind, ()) for kind in IMAGE_KINDS] + [
    ("mnist", ("dataset.image_size=32",)),
    ("mnist", ("dataset.channels=3",)),
    ("cifar10", ("dataset.image_size=16",)),
    ("cifar10", ("dataset.channels=1",)),
    ("folder", ("dataset.image_size=64",)),
]
# streaming shares the reference transform, so one resized case besides the plain ones is enough
STREAMING_CASES = [(kind, ()) for kind in IMAGE_KINDS] + [("mnist", ("dataset.image_size=32",))]


def case_id(case) -> str:
    kind, extra = case
    return "-".join([kind, *(override.split(".")[-1] for override in extra)])


def build_source(kind: str, root, *extra: str) -> ImageSource:
    """The dataset of `kind` under `root`, built from the composed config as training builds it."""
    return instantiate(compose_config(dataset_overrides(kind, root) + list(extra)).dataset)


def reference_images(source: ImageSource, value_range) -> torch.Tensor:
    """Every image through the torchvision dataset and the transform a user would write."""
    dataset = source.checked_open(reference_transform(source, value_range))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def index_of(image: torch.Tensor, candidates: torch.Tensor) -> int:
    """The index of the candidate bit-identical to `image`; fails when there is none."""
    matches = [i for i in range(len(candidates)) if torch.equal(candidates[i], image)]
    assert matches, "a served image is not one of the dataset's images"
    return matches[0]


def skip_without(path: Path):
    return pytest.mark.skipif(
        not path.exists(), reason=f"real data not found at {path} (clone the repository with shared/ beside it)"
    )


# --- fixture datasets through the real loaders ------------------------------------------------------------------


def test_every_dataset_option_has_test_data(data_root):
    assert {"mnist", "fashion_mnist", "cifar10", "folder"} <= set(IMAGE_KINDS)
    for kind in IMAGE_KINDS:
        assert dataset_overrides(kind, data_root)[0] == f"dataset={kind}"


def test_dataset_overrides_rejects_a_kind_without_test_data(data_root):
    with pytest.raises(KeyError, match="no test data for dataset=imagenet"):
        dataset_overrides("imagenet", data_root)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_loads_through_torchvision(kind, data_root):
    cfg = compose_config(dataset_overrides(kind, data_root))
    source = instantiate(cfg.dataset)
    assert isinstance(source.checked_open(None), torchvision.datasets.VisionDataset)
    images = source.decode_uint8()
    size, channels = cfg.dataset.image_size or source.native_size, cfg.dataset.channels  # null: the native size
    assert images.dtype == torch.uint8
    assert tuple(images.shape) == (TRAIN_COUNTS[kind], channels, size, size)
    assert images.float().std() > 10, "the fixture images should not be constant"


@pytest.mark.parametrize("kind", ["mnist", "fashion_mnist", "cifar10"])
def test_decoded_pixels_are_the_written_pixels(kind, data_root):
    """The fixture's IDX and pickle files decode to the arrays written, so their layout is the real one."""
    images = build_source(kind, data_root).decode_uint8()
    assert torch.equal(images, torch.from_numpy(fixture_train_images(kind)))


def test_folder_decodes_sorted_classes_and_native_size_pixels(data_root):
    source = build_source("folder", data_root)  # at 32x32
    dataset = source.checked_open(None)
    assert dataset.classes == ["a", "b"]
    images = source.decode_uint8()
    # a/002.png is written at 32x32, so resize and crop keep its pixels
    written = np.array(Image.open(data_root / "folder" / "a" / "002.png"))
    assert torch.equal(images[2], torch.from_numpy(written).permute(2, 0, 1))


# --- the in-memory path -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SOURCE_CASES, ids=case_id)
def test_in_memory_serves_exactly_the_decoded_images(case, data_root):
    kind, extra = case
    source = build_source(kind, data_root, "dataset.in_memory=true", *extra)
    batches = make_batches(source, CPU, (0.0, 1.0), 8)
    assert isinstance(batches, InMemoryBatches)
    # the stored images are each image decoded one by one through torchvision (native arrays included)
    dataset = source.checked_open(transforms.Compose(source.pil_transform() + [transforms.PILToTensor()]))
    decoded = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert torch.equal(batches.images, decoded)
    # and the batches drawn from them cover exactly those images
    torch.manual_seed(0)
    everything = {image.numpy().tobytes() for image in batches.scale(batches.images)}
    served = {image.numpy().tobytes() for image in batches.next(4096)[0]}  # misses one of <= 80 with p < 1e-20
    assert served == everything


@pytest.mark.parametrize("value_range", VALUE_RANGES, ids=["0,1", "-1,1"])
@pytest.mark.parametrize("case", SOURCE_CASES, ids=case_id)
def test_in_memory_is_bit_identical_to_the_torchvision_transform(case, value_range, data_root):
    kind, extra = case
    source = build_source(kind, data_root, "dataset.in_memory=true", *extra)
    batches = make_batches(source, CPU, value_range, 8)
    assert isinstance(batches, InMemoryBatches)
    expected = reference_images(source, value_range)
    scaled = batches.scale(batches.images)
    assert scaled.dtype == expected.dtype == torch.float32
    assert torch.equal(scaled, expected)
    low, high = value_range
    assert scaled.min() >= low and scaled.max() <= high
    assert scaled.min() < (low + high) / 2 < scaled.max()
    drawn, _ = batches.next(5)
    assert drawn.shape == (5, *expected.shape[1:])


# --- the streaming path -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_range", VALUE_RANGES, ids=["0,1", "-1,1"])
@pytest.mark.parametrize("case", STREAMING_CASES, ids=case_id)
def test_streaming_serves_every_image_once_per_epoch(case, value_range, data_root):
    kind, extra = case
    source = build_source(kind, data_root, "dataset.in_memory=false", "dataset.workers=0", *extra)
    batch_size = TRAIN_COUNTS[kind] // 4
    batches = make_batches(source, CPU, value_range, batch_size)
    assert isinstance(batches, StreamingBatches)
    assert len(batches) == TRAIN_COUNTS[kind]
    expected = reference_images(source, value_range)
    low, high = value_range
    seen = []
    for _ in range(4):
        batch, _ = batches.next(batch_size)
        assert batch.shape == (batch_size, *expected.shape[1:]) and batch.dtype == torch.float32
        assert batch.min() >= low and batch.max() <= high
        seen += [index_of(image, expected) for image in batch]
    assert sorted(seen) == list(range(TRAIN_COUNTS[kind]))
    next_epoch, _ = batches.next(batch_size)
    assert next_epoch.shape[0] == batch_size


def test_streaming_with_worker_processes(data_root):
    source = build_source("mnist", data_root, "dataset.in_memory=false", "dataset.workers=2")
    batches = make_batches(source, CPU, (-1.0, 1.0), 16)
    expected = reference_images(source, (-1.0, 1.0))
    for _ in range(5):  # past the end of the first epoch
        for image in batches.next(16)[0]:
            index_of(image, expected)


def test_streaming_serves_the_number_of_images_asked_for(data_root):
    # train.py draws log.num_samples real images for the sample grid, which may differ from train.batch_size
    source = build_source("mnist", data_root, "dataset.in_memory=false", "dataset.workers=0")
    batches = make_batches(source, CPU, (0.0, 1.0), 16)
    assert batches.next(5)[0].shape[0] == 5


def test_streaming_a_dataset_smaller_than_a_batch_is_a_data_error(data_root):
    source = build_source("folder", data_root, "dataset.in_memory=false", "dataset.workers=0")
    with pytest.raises(DataError, match="batch"):
        make_batches(source, CPU, (0.0, 1.0), 64).next(64)


# --- choosing the path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_auto_streams_only_when_the_decoded_images_exceed_the_limit(kind, data_root):
    tiny = build_source(kind, data_root, "dataset.in_memory=auto", "dataset.memory_limit_mb=0.0001")
    assert isinstance(make_batches(tiny, CPU, (0.0, 1.0), 4), StreamingBatches)
    default = build_source(kind, data_root, "dataset.in_memory=auto")
    assert isinstance(make_batches(default, CPU, (0.0, 1.0), 4), InMemoryBatches)


def test_auto_keeps_in_memory_exactly_up_to_the_limit(data_root):
    size_mb = TRAIN_COUNTS["mnist"] * 28 * 28 / 2**20
    at_limit = build_source("mnist", data_root, f"dataset.memory_limit_mb={size_mb!r}")
    assert isinstance(make_batches(at_limit, CPU, (0.0, 1.0), 4), InMemoryBatches)
    below = build_source("mnist", data_root, f"dataset.memory_limit_mb={size_mb * 0.99!r}")
    assert isinstance(make_batches(below, CPU, (0.0, 1.0), 4), StreamingBatches)


def test_forced_paths_ignore_the_limit(data_root):
    kept = build_source("mnist", data_root, "dataset.in_memory=true", "dataset.memory_limit_mb=0.0001")
    assert isinstance(make_batches(kept, CPU, (0.0, 1.0), 4), InMemoryBatches)
    streamed = build_source("mnist", data_root, "dataset.in_memory=false", "dataset.workers=0")
    assert isinstance(make_batches(streamed, CPU, (0.0, 1.0), 4), StreamingBatches)


# --- missing and bad data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("root_exists", [True, False], ids=["empty-root", "no-root"])
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_missing_dataset_is_one_sentence_naming_the_files(kind, root_exists, tmp_path):
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
    cfg = compose_config(dataset_overrides(kind, tmp_path))
    cfg.dataset.root = str(root)
    if "download" in cfg.dataset:
        cfg.dataset.download = False
    source = instantiate(cfg.dataset)
    with pytest.raises(DataError) as raised:
        make_batches(source, CPU, (0.0, 1.0), 4)
    message = str(raised.value)
    assert "\n" not in message
    assert f"dataset.root={root}" in message
    assert EXPECTED_NAME[kind] in message
    assert all(str(path) in message for path in source.expected_files())
    assert "set dataset.root to" in message


def test_missing_file_is_named_alone(data_root, tmp_path):
    shutil.copytree(data_root / "MNIST", tmp_path / "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()  # the .gz alone does not do
    with pytest.raises(DataError) as raised:
        make_batches(build_source("mnist", tmp_path), CPU, (0.0, 1.0), 4)
    message = str(raised.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte") in message
    assert "train-images-idx3-ubyte" not in message


def test_unreadable_file_is_a_data_error(data_root, tmp_path):
    shutil.copytree(data_root / "MNIST", tmp_path / "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        make_batches(build_source("mnist", tmp_path), CPU, (0.0, 1.0), 4)


def test_folder_cannot_download(data_root):
    with pytest.raises(InstantiationException) as raised:  # training unwraps it to the ConfigError
        build_source("folder", data_root, "+dataset.download=true")
    assert isinstance(raised.value.__cause__, ConfigError)
    assert "dataset.download=true is not possible for dataset=folder" in str(raised.value.__cause__)


# --- the real datasets in shared/data ---------------------------------------------------------------------------


@skip_without(SHARED_DATA / "MNIST" / "raw")
def test_fixture_idx_files_match_the_real_layout(data_root):
    real, fixture = SHARED_DATA / "MNIST" / "raw", data_root / "MNIST" / "raw"
    assert sorted(path.name for path in fixture.iterdir()) == sorted(path.name for path in real.iterdir())
    for path in real.glob("*-ubyte"):
        # magic (type and rank), then one big-endian int32 per dimension: all equal but the image count
        real_bytes, fixture_bytes = path.read_bytes(), (fixture / path.name).read_bytes()
        rank = real_bytes[3]
        assert real_bytes[:4] == fixture_bytes[:4]
        assert real_bytes[8 : 4 + 4 * rank] == fixture_bytes[8 : 4 + 4 * rank]


@pytest.mark.parametrize(
    ("kind", "mean_low", "mean_high"),
    [
        pytest.param("mnist", 30, 37, marks=skip_without(SHARED_DATA / "MNIST" / "raw")),  # digits: mean ~33.3
        pytest.param("fashion_mnist", 68, 78, marks=skip_without(SHARED_DATA / "FashionMNIST" / "raw")),  # ~72.9
    ],
)
def test_real_mnist_files(kind, mean_low, mean_high):
    source = build_source(kind, SHARED_DATA, "dataset.in_memory=true")
    batches = make_batches(source, CPU, (-1.0, 1.0), 64)
    assert isinstance(batches, InMemoryBatches)
    images = batches.images
    assert images.dtype == torch.uint8 and tuple(images.shape) == (60000, 1, 28, 28)
    assert mean_low < images.float().mean() < mean_high
    dataset = source.checked_open(reference_transform(source, (-1.0, 1.0)))
    index = [0, 1, 12345, 59999]
    assert torch.equal(batches.scale(images[index]), torch.stack([dataset[i][0] for i in index]))


@skip_without(SHARED_DATA / "cifar10-subset" / "train")
def test_real_cifar10_subset_as_a_folder():
    root = SHARED_DATA / "cifar10-subset" / "train"
    source = instantiate(compose_config(["dataset=folder", f"dataset.root={root}", "dataset.image_size=32"]).dataset)
    dataset = source.checked_open(reference_transform(source, (-1.0, 1.0)))
    assert len(dataset) == 3805 and len(dataset.classes) == 10
    images = source.decode_uint8()
    assert tuple(images.shape) == (3805, 3, 32, 32)
    index = [0, 1, 1900, 3804]
    scaled = InMemoryBatches(images, CPU, (-1.0, 1.0)).scale(images[index])
    assert torch.equal(scaled, torch.stack([dataset[i][0] for i in index]))
