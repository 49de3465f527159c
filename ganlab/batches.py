"""The batches a run trains on, on the training device, in the order the run's seed gives them.

`InMemoryBatches` draws random index batches from images decoded once onto the device; `StreamingBatches` serves
a torchvision DataLoader in an epoch order seeded by the run's seed and the epoch. Both serve `(images, labels)`
and save and restore their position, so a resumed run draws exactly the batches it would have drawn.
`ganlab.data` builds them (`ImageSource.batches`).
"""

import multiprocessing
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ganlab.errors import DataError


class InMemoryBatches:
    """The fast path: uint8 images on the training device, random batches scaled to `value_range` on the fly.

    labels: the class index of each image (long, on the device beside the images), or None for unlabelled data.
    """

    def __init__(
        self, images: Tensor, device: torch.device, value_range: tuple[float, float], labels: Tensor | None = None
    ):
        if labels is not None and len(labels) != len(images):
            raise DataError(f"the dataset has {len(images)} images but {len(labels)} labels: it is damaged.")
        self.images = images.to(device)
        self.labels = None if labels is None else labels.to(device, torch.long)
        self.low, self.high = value_range
        self.device = device

    def __len__(self) -> int:
        return self.images.shape[0]

    def scale(self, images: Tensor) -> Tensor:
        """uint8 -> float in `value_range`, with the same operations as ToTensor (and Normalize(0.5, 0.5))."""
        x = images.float()  # a new tensor, so the steps below run in place without extra allocations
        x.div_(255)
        if (self.low, self.high) == (-1.0, 1.0):
            x.sub_(0.5).div_(0.5)
        return x

    def next(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """`batch_size` images drawn with replacement, and their labels: one index draw serves both."""
        index = torch.randint(len(self), (batch_size,), device=self.device)
        labels = None if self.labels is None else self.labels.index_select(0, index)
        return self.scale(self.images.index_select(0, index)), labels

    def state_dict(self) -> dict:
        """Nothing: the draws come from the global torch RNG, which the checkpoint saves with the others."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see `state_dict`)."""


def worker_context(workers: int):
    """The multiprocessing context of DataLoader workers: Python's default, except inside a joblib (loky) job.

    loky makes its own context the default in the processes it starts, and DataLoader workers cannot start from it
    (AttributeError: 'Process' object has no attribute 'env'); there they use the platform's standard context.
    """
    if workers == 0 or multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver"):
        return None
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")  # fork is unsafe on macOS


def epoch_order(size: int, seed: int, epoch: int) -> Tensor:
    """The streaming path's order of the images in epoch `epoch`: a permutation drawn from a generator of its own,
    seeded by the run's seed and the epoch, so a resumed run draws it again without replaying the epochs before."""
    epoch_seed = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)[0]
    return torch.randperm(size, generator=torch.Generator().manual_seed(int(epoch_seed)))


class EpochOrder(Sampler[int]):
    """The DataLoader's sampler: the indices of `epoch_order(epoch)` from position `start` on.

    The loader reads `epoch` and `start` at each `iter()` (in the main process, also with persistent workers), so
    setting them moves the stream.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.size, self.seed, self.epoch)[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.size - self.start, 0)


class StreamingBatches:
    """The DataLoader path for datasets too big to hold: workers decode and transform every image, every epoch.

    The images form one stream, epoch after epoch, each in its own `epoch_order`: `next(n)` serves the next n of
    it, across an epoch's end when it comes. `state_dict` is the position of the next image, so a resumed run
    sees exactly the images the uninterrupted run would have seen.
    """

    def __init__(
        self, dataset: Dataset, device: torch.device, batch_size: int, workers: int, seed: int, labelled: bool = True
    ):
        self.device = device
        self.labelled = labelled  # whether the dataset's labels are served (False: the batches' labels are None)
        self.order = EpochOrder(len(dataset), seed)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,  # no drop_last: an epoch's short last batch joins the stream like the others
            sampler=self.order,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            multiprocessing_context=worker_context(workers),
            # the loader draws its workers' seeds at every iter(); from the global RNG (its default) that would move
            # the training noise at each epoch and after a resume. The transform draws no random numbers, so the
            # workers' seeds themselves change nothing.
            generator=torch.Generator(),
        )
        self._size = len(dataset)
        self.epoch, self.position = 0, 0  # the next image served: its epoch, and its place in that epoch's order
        self._iterator: Iterator | None = None  # None: (re)start the loader where `order` points
        self._leftover: tuple[Tensor, Tensor] | None = None  # loaded images and labels not served yet, the next ones

    def __len__(self) -> int:
        return self._size

    def _next_loader_batch(self) -> tuple[Tensor, Tensor]:
        """The loader's next images and labels; at an epoch's end the loader starts the next epoch afresh."""
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            images, labels = next(self._iterator)
        except StopIteration:
            self.order.epoch, self.order.start = self.order.epoch + 1, 0
            self._iterator = iter(self.loader)
            images, labels = next(self._iterator)
        return images, torch.as_tensor(labels, dtype=torch.long)

    def next(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """The stream's next `batch_size` images and their labels: usually one loader batch, else pieced together."""
        parts, have = [], 0
        if self._leftover is not None:
            parts, have, self._leftover = [self._leftover], len(self._leftover[0]), None
        while have < batch_size:
            parts.append(self._next_loader_batch())
            have += len(parts[-1][0])
        images, labels = parts[0] if len(parts) == 1 else (torch.cat(part) for part in zip(*parts, strict=True))
        if have > batch_size:
            self._leftover = images[batch_size:], labels[batch_size:]
            images, labels = images[:batch_size], labels[:batch_size]
        self.epoch, self.position = divmod(self.epoch * self._size + self.position + batch_size, self._size)
        labels = labels.to(self.device, non_blocking=True) if self.labelled else None
        return images.to(self.device, non_blocking=True), labels

    def state_dict(self) -> dict:
        """Where the stream is: the epoch of the next image, and how many of that epoch's images were served."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream where `state_dict` was taken: the loader restarts at that epoch and position.

        An empty state comes from the in-memory path (a run may switch paths when it resumes, with
        dataset.in_memory): it has no position, so the stream starts from its beginning.
        """
        self.epoch, self.position = (state["epoch"], state["position"]) if state else (0, 0)
        self.order.epoch, self.order.start = self.epoch, self.position
        self._iterator, self._leftover = None, None
