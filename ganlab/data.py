"""Datasets, decoded once and served as batches on the training device.

A dataset config builds an `ImageSource`: it knows where the files are, how torchvision reads them, and what to
tell the user when they are missing. `make_batches` then picks the data path:

- in memory (the fast path): every image is decoded once to uint8 at the training resolution and kept on the
  training device, with its class label; each batch is a random index draw there, scaled to the generator's range
  on the fly;
- streaming: a torchvision DataLoader with workers, for datasets too big for memory.

Every path serves batches as `(images, labels)`: `labels` is a long tensor of class indices on the training device
(for a folder, the index of the image's subfolder), or None for a dataset without labels.

Both paths produce exactly what the torchvision transform Resize -> CenterCrop -> ToTensor -> Normalize gives.
"""

import copy
import itertools
import logging
import math
import os
import pickle
import re
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.utils import make_grid

from ganlab.batches import InMemoryBatches, StreamingBatches, worker_context
from ganlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ImageSource:
    """A dataset of images on disk, read through torchvision, at `image_size` x `image_size` with `channels` channels.

    root: the folder torchvision reads (relative paths are from the current directory).
    download: let torchvision fetch the files if they are missing.
    in_memory: `auto` keeps the decoded uint8 images on the training device when they fit `memory_limit_mb`;
    true or false force the in-memory or the streaming path. workers: DataLoader workers of the streaming path.
    feature_net: the shipped classifier (ganlab/feature_nets) that scores samples of this dataset; None = no FID.
    limit: train on this many images of the train split, as equal a share of each class as it has (a class short of
    its share gives the rest to the others), chosen by the run's seed; None = all. Evaluation uses the whole test split.
    """

    name = "images"
    default_features = "net"  # what eval.features=auto scores with: the dataset's small net (ganlab.features)
    native_size = 64  # the training resolution when dataset.image_size is null and the model can build it
    is_image = True  # what augmentation can transform (a toy dataset's points are not)
    flip_keeps_class = True  # a mirrored image shows the same class (not for digits: ganlab.augment drops flip)

    def __init__(
        self,
        root: str,
        image_size: int | None,
        channels: int,
        download: bool = False,
        in_memory: str | bool = "auto",
        memory_limit_mb: float = 4096,
        workers: int = 2,
        feature_net: str | None = None,
        limit: int | None = None,
    ):
        image_size = self.native_size if image_size is None else image_size
        if image_size < 1:
            raise ConfigError(f"dataset.image_size={image_size} must be >= 1.")
        if channels not in (1, 3):
            raise ConfigError(f"dataset.channels={channels} is not allowed: use 1 (grayscale) or 3 (RGB).")
        self.root = Path(os.path.expanduser(root)).absolute()
        self.image_size = image_size
        self.channels = channels
        self.download = download
        if in_memory not in ("auto", True, False):
            raise ConfigError(f"dataset.in_memory={in_memory!r} is not allowed: use auto, true or false.")
        if workers < 0:
            raise ConfigError(f"dataset.workers={workers} must be >= 0.")
        self.in_memory = in_memory
        self.memory_limit_mb = memory_limit_mb
        self.workers = workers
        self.feature_net = feature_net
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"dataset.limit={limit} is not allowed: use a number of images >= 1, or null for all.")
        self.limit = limit
        self.train = True  # which split `open` reads; `test_split` makes the evaluation copy

    def open(self, transform) -> Dataset:
        """The torchvision dataset with `transform` applied to each PIL image."""
        raise NotImplementedError

    def expected_files(self) -> list[Path]:
        """The files torchvision looks for, named in the error when they are missing."""
        raise NotImplementedError

    def labels(self, dataset: Dataset) -> Tensor | None:
        """The class index of every image of the opened `dataset`, in its order, as a long tensor; None if unlabelled.

        torchvision's MNIST, CIFAR10 and ImageFolder all list them in `targets` (ImageFolder: the subfolder index).
        """
        targets = getattr(dataset, "targets", None)
        return None if targets is None else torch.as_tensor(targets, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        """How many classes the labels run over (a conditional model's classes); 0 for a dataset without labels."""
        dataset = self.checked_open(None)
        return len(getattr(dataset, "classes", None) or []) if self.labels(dataset) is not None else 0

    def native_uint8(self) -> Tensor | None:
        """All images as uint8 (N, C, H, W) straight from the decoded arrays, or None to decode image by image."""
        return None

    def checked_open(self, transform) -> Dataset:
        """`open`, with a missing or unreadable dataset turned into one clear sentence."""
        try:
            return self.open(transform)
        except READ_ERRORS as error:
            raise self._data_error(error) from None

    def _data_error(self, error: Exception) -> DataError:
        """The one sentence for a dataset that could not be downloaded, found, or read."""
        if self.download:
            return DataError(
                f"dataset {self.name}: could not download it to dataset.root={self.root} ({_short_reason(error)}); "
                f"check the network, or set dataset.root to a folder that already holds the files."
            )
        missing = [str(p) for p in self.expected_files() if not p.exists()]
        if missing or not self.root.exists():
            return DataError(
                f"dataset {self.name} not found under dataset.root={self.root}: looked for "
                f"{', '.join(missing or [str(self.root)])}; set dataset.root to the folder that holds them "
                f"(for example dataset.root=../shared/data) or add dataset.download=true."
            )
        detail = " ".join(str(error).split()) or type(error).__name__
        files = ", ".join(p.name for p in self.expected_files())
        return DataError(
            f"dataset {self.name}: could not read {files} under dataset.root={self.root} ({detail}); "
            f"replace the damaged files (or set dataset.download=true to fetch them again)."
        )

    def pil_transform(self) -> list:
        """The PIL steps shared by both data paths: grayscale/RGB, resize, center crop."""
        steps: list = [transforms.Grayscale(1) if self.channels == 1 else transforms.Lambda(_rgb)]
        return steps + [transforms.Resize(self.image_size), transforms.CenterCrop(self.image_size)]

    def decode_uint8(self) -> Tensor:
        """Every image once, as uint8 (N, C, image_size, image_size); resizing runs in `workers` processes."""
        dataset = self.checked_open(transforms.Compose(self.pil_transform() + [transforms.PILToTensor()]))
        native = self.native_uint8()
        if native is not None and tuple(native.shape[1:]) == (self.channels, self.image_size, self.image_size):
            return native
        loader = DataLoader(
            dataset, batch_size=512, num_workers=self.workers, multiprocessing_context=worker_context(self.workers)
        )
        try:
            return torch.cat([images for images, _ in loader])
        except READ_ERRORS as error:
            raise self._data_error(error) from None

    def batches(
        self, device: torch.device, value_range: tuple[float, float], batch_size: int, seed: int = 0
    ) -> "InMemoryBatches | StreamingBatches":
        """Pick the data path: in memory when `in_memory` is true, or auto and the decoded size fits the limit.

        seed: the run's seed, from which the streaming path draws the order of each epoch.
        """
        dataset = self.checked_open(reference_transform(self, value_range))
        labels = self.labels(dataset)
        chosen = self.chosen(len(dataset), labels, seed)
        if chosen is not None:
            dataset, labels = Subset(dataset, chosen.tolist()), None if labels is None else labels[chosen]
            log.info("dataset.limit=%d: training on %d of the images", self.limit, len(dataset))
        size_mb = len(dataset) * self.channels * self.image_size**2 / 2**20
        keep = self.in_memory is True or (self.in_memory == "auto" and size_mb <= self.memory_limit_mb)
        if not keep:
            if len(dataset) < batch_size:
                raise DataError(
                    f"dataset {self.name} under {self.root} has {len(dataset)} images, fewer than one batch: "
                    f"lower train.batch_size to at most {len(dataset)} or add images."
                )
            log.info(
                "data path: streaming DataLoader (%d images, %.0f MB decoded, %d workers)",
                len(dataset), size_mb, self.workers,
            )  # fmt: skip
            return StreamingBatches(dataset, device, batch_size, self.workers, seed, labels is not None)
        images = self.decode_uint8() if chosen is None else self.decode_uint8()[chosen]
        log.info("data path: in memory on %s (%d images, %.0f MB as uint8)", device, len(images), size_mb)
        return InMemoryBatches(images, device, value_range, labels)

    def chosen(self, size: int, labels: Tensor | None, seed: int) -> Tensor | None:
        """The indices of the `limit` images to train on, sorted, or None for all: per class an equal share (the
        remainder to classes drawn at random, a short class's unused share to the others), drawn with `seed`."""
        if self.limit is None:
            return None
        if self.limit > size:
            raise ConfigError(
                f"dataset.limit={self.limit} is more than the {size} images of dataset {self.name} under "
                f"{self.root}: use at most {size}, or null for all."
            )
        generator = torch.Generator().manual_seed(seed)
        if labels is None:
            return torch.randperm(size, generator=generator)[: self.limit].sort().values
        classes = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
        classes = [members[torch.randperm(len(members), generator=generator)] for members in classes]
        shares = [0] * len(classes)
        left = self.limit
        while left:  # deal one image at a time to the classes that still have some, in a seeded order
            open_classes = [c for c in range(len(classes)) if shares[c] < len(classes[c])]
            order = torch.randperm(len(open_classes), generator=generator).tolist()
            for c in [open_classes[i] for i in order][:left]:
                shares[c] += 1
                left -= 1
        return torch.cat([members[:share] for members, share in zip(classes, shares, strict=True)]).sort().values

    def test_split(self) -> "ImageSource | None":
        """The same dataset's held-out split, which metrics compare samples with; None if it has none."""
        test = copy.copy(self)
        test.train = False
        return test

    def split(self, name: str) -> "ImageSource | None":
        """The whole split `name` (train or test) that metrics compare samples with, without `limit`; None if absent."""
        if name == "test":
            return self.test_split()
        whole = copy.copy(self)
        whole.train, whole.limit = True, None
        return whole

    @property
    def stats_name(self) -> str:
        """The dataset in the name of its cached Inception statistics (`ganlab.scoring.stats_path`)."""
        return self.name

    @property
    def stats_home(self) -> Path:
        """The folder beside whose files the statistics are cached: the dataset's root."""
        return self.root

    def evaluator(self, device: torch.device, value_range: tuple[float, float], scoring=None):
        """Scores samples against a real split with Inception or this dataset's small net (`ganlab.scoring`), or None
        when it has neither. scoring: the run's `eval` config; None = its defaults."""
        from ganlab.scoring import image_evaluator

        return image_evaluator(self, device, value_range, scoring)

    def picture(self, images: Tensor, value_range: tuple[float, float], labels: Tensor | None = None) -> Tensor:
        """A (3, H, W) grid of `images` for TensorBoard and PNG files, about square (64 images: 8 x 8); with the
        `labels` of a conditional model's grid (`GANModel.grid_latent`, class-major), one row per class."""
        columns = math.ceil(math.sqrt(len(images))) if labels is None else int((labels == labels[0]).sum())
        return make_grid(images.detach().float().cpu(), nrow=columns, normalize=True, value_range=tuple(value_range))


def to_uint8(samples: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Generator output in `value_range` -> uint8 images, the inverse of the data scaling (rounded, clamped)."""
    low, high = value_range
    return ((samples.float() - low) / (high - low) * 255).round().clamp(0, 255).to(torch.uint8)


# what torchvision and PIL raise for missing, truncated or corrupt files
READ_ERRORS = (RuntimeError, OSError, ValueError, AssertionError, TypeError, EOFError, pickle.UnpicklingError)


def _short_reason(error: Exception) -> str:
    """What went wrong with a download, in a few words: torchvision's MNIST lists every mirror it tried, over lines
    of the form `Tried <mirror>, got:` / `<urlopen error [Errno -3] Temporary failure in name resolution>`."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    answers = [after for line, after in itertools.pairwise(lines) if line.endswith("got:")]
    reason = (answers or lines or [type(error).__name__])[0]
    return re.sub(r"^<urlopen error (.*)>$", r"\1", reason)


def _rgb(image):
    return image.convert("RGB")


class TorchvisionSource(ImageSource):
    """A dataset class from `torchvision.datasets`: trained on its train split, evaluated on its test split."""

    dataset_class: type

    def open(self, transform):
        self._dataset = self.dataset_class(
            str(self.root), train=self.train, transform=transform, download=self.download
        )
        return self._dataset


class MNIST(TorchvisionSource):
    """MNIST digits, 28x28 grayscale, from `<root>/MNIST/raw/` (the IDX files)."""

    name = "mnist"
    native_size = 28
    num_classes = 10
    flip_keeps_class = False  # a mirrored 2, 3, 7 or 9 is no digit
    dataset_class = torchvision.datasets.MNIST

    def __init__(self, root: str, image_size: int | None = None, channels: int = 1, **options):
        super().__init__(root, image_size, channels, **options)

    def expected_files(self):
        raw = self.root / self.dataset_class.__name__ / "raw"
        return [raw / Path(url).name.removesuffix(".gz") for url, _ in self.dataset_class.resources]

    def native_uint8(self):
        if self.channels != 1:
            return None
        return self._dataset.data.unsqueeze(1).contiguous()


class FashionMNIST(MNIST):
    """Fashion-MNIST, 28x28 grayscale, from `<root>/FashionMNIST/raw/`."""

    name = "fashion_mnist"
    flip_keeps_class = True  # a mirrored shoe is a shoe
    dataset_class = torchvision.datasets.FashionMNIST


class CIFAR10(TorchvisionSource):
    """CIFAR-10, 32x32 RGB, from the python pickle batches in `<root>/cifar-10-batches-py/`."""

    name = "cifar10"
    default_features = "inception"  # what CIFAR-10 papers report: InceptionV3 FID against the train split
    native_size = 32
    num_classes = 10
    dataset_class = torchvision.datasets.CIFAR10

    def __init__(self, root: str, image_size: int | None = None, channels: int = 3, **options):
        super().__init__(root, image_size, channels, **options)

    def expected_files(self):
        folder = self.root / self.dataset_class.base_folder
        names = [name for name, _ in self.dataset_class.train_list + self.dataset_class.test_list]
        return [folder / name for name in names] + [folder / self.dataset_class.meta["filename"]]

    def native_uint8(self):
        if self.channels != 3:
            return None
        return torch.from_numpy(self._dataset.data).permute(0, 3, 1, 2).contiguous()


class ImageFolder(ImageSource):
    """Any folder of images in class subfolders (`<root>/<class>/*.png`), resized and center-cropped."""

    name = "folder"

    def __init__(
        self, root: str, image_size: int | None = None, channels: int = 3, test_root: str | None = None, **options
    ):
        if options.get("download"):
            raise ConfigError("dataset.download=true is not possible for dataset=folder: the images must be on disk.")
        super().__init__(root, image_size, channels, **options)
        self.test_root = test_root

    def open(self, transform):
        return torchvision.datasets.ImageFolder(str(self.root), transform=transform)

    @property
    def num_classes(self) -> int:
        """The class subfolders of `root`, found without reading an image."""
        try:
            return len(torchvision.datasets.folder.find_classes(str(self.root))[0])
        except READ_ERRORS as error:
            raise self._data_error(error) from None

    def test_split(self):
        """The folder `test_root` names (same layout), or None."""
        if self.test_root is None:
            return None
        test = copy.copy(self)
        test.root = Path(os.path.expanduser(self.test_root)).absolute()
        return test

    def expected_files(self):
        return [self.root / "<class>" / "<image>.png"]

    @property
    def stats_name(self) -> str:
        """`folder-<name of root>`: the statistics sit beside the folder, not in it (a subfolder would be a class)."""
        return f"folder-{self.root.name}"

    @property
    def stats_home(self) -> Path:
        return self.root.parent


def reference_transform(source: ImageSource, value_range: tuple[float, float]) -> transforms.Compose:
    """The torchvision transform a user would write: PIL resize/crop, ToTensor, Normalize(0.5, 0.5) for tanh."""
    steps = source.pil_transform() + [transforms.ToTensor()]
    if tuple(value_range) == (-1.0, 1.0):
        steps.append(transforms.Normalize((0.5,) * source.channels, (0.5,) * source.channels))
    return transforms.Compose(steps)


def make_batches(source, device: torch.device, value_range: tuple[float, float], batch_size: int, seed: int = 0):
    """The batches of any dataset source (images or toy points), scaled to the generator's `value_range`.

    seed: the run's seed; the streaming path draws its epoch orders from it (the other paths use the global RNG).
    """
    return source.batches(device, value_range, batch_size, seed)
