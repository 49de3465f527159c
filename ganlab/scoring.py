"""What scores a dataset's samples: Inception or the dataset's small net, against which real split, and the protocol.

`image_evaluator` reads the run's `eval` config (`features`, `reference`, `inception_weights`, `stats_dir`) and builds
the evaluator training and `ganlab-eval` call as `evaluator(samples, labels)`:

- `eval.features`: `inception` (`ganlab.inception`, torch-fidelity's InceptionV3), `net` (`ganlab.metrics` on the
  dataset's shipped classifier), or `auto`, the dataset's `default_features` (Inception for CIFAR-10 only);
- `eval.reference`: the whole `train` or `test` split (never `dataset.limit`'s subset); `auto` is train for
  Inception, as the field scores CIFAR-10, and test for a net.

Every score carries its protocol (`runfolder.protocol`): the extractor and its checksum, the sample count, and the
reference split and its size.
"""

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from ganlab.config import EvalConfig
from ganlab.data import ImageSource, to_uint8
from ganlab.runfolder import protocol

log = logging.getLogger(__name__)


def image_evaluator(source: ImageSource, device: torch.device, value_range: tuple[float, float], scoring=None):
    """The `ImageScores` of `source`'s samples in `value_range` as `scoring` (an `eval` config; None = its defaults)
    says, or None when the dataset has no such split or, for `net`, no feature net."""
    scoring = scoring or EvalConfig()
    features = source.default_features if scoring.features == "auto" else scoring.features
    split = scoring.reference if scoring.reference != "auto" else ("train" if features == "inception" else "test")
    reference = source.split(split)
    if reference is None or (features == "net" and source.feature_net is None):
        log.info("no sample-quality metrics for dataset %s: it names no feature net or %s split", source.name, split)
        return None
    name = f"{source.name} {split}"
    if features == "inception":
        from ganlab.inception import Inception, InceptionQuality, cached_reference

        inception = Inception.load(scoring.inception_weights, device)
        path = stats_path(reference, scoring.stats_dir, split, inception.name)
        count = len(reference.checked_open(None))
        stats = cached_reference(path, count, reference.decode_uint8, inception)
        return ImageScores(InceptionQuality(inception, stats), value_range, inception.name, name)
    from ganlab.features import load_feature_net, read_manifest
    from ganlab.metrics import SampleQuality  # torchmetrics loads only when metrics are asked for

    # the split's labels go with its images: a class-conditional model's samples are scored on their classes too
    images = reference.decode_uint8().to(device)
    labels = reference.labels(reference.checked_open(None))
    quality = SampleQuality(load_feature_net(source.feature_net), images, reference_labels=labels)
    checksum = read_manifest()[source.feature_net]["sha256"][:8]
    return ImageScores(quality, value_range, f"net:{source.feature_net}/{checksum}", name)


def stats_path(split_source: ImageSource, stats_dir: str | None, split: str, extractor: str) -> Path:
    """Where the Inception statistics of a split are cached (`ganlab.inception`), named by what they depend on.

    stats_dir: eval.stats_dir; None = `fid_stats/` beside the dataset's files, or ganlab's folder in the user's
    cache when that one cannot be written (a read-only shared copy of the data).
    """
    colours = "gray" if split_source.channels == 1 else "rgb"
    name = f"{split_source.stats_name}-{split}-{split_source.image_size}px-{colours}-{extractor.replace('/', '-')}.npz"
    if stats_dir is not None:
        return Path(os.path.expanduser(stats_dir)).absolute() / name
    beside = split_source.stats_home / "fid_stats"
    existing = next(folder for folder in (beside, *beside.parents) if folder.exists())
    if os.access(existing, os.W_OK):
        return beside / name
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganlab" / "fid_stats"
    log.info("%s is read-only: caching reference statistics in %s", existing, cache)
    return cache / f"{hashlib.sha256(str(split_source.root).encode()).hexdigest()[:8]}-{name}"


class ImageScores:
    """Sample-quality metrics of generator output (`ganlab.metrics` or `ganlab.inception`), and their protocol.

    features: the extractor and its checksum (`inception-v3-compat/6726825d`, `net:mnist/1a2b3c4d`); reference: the
    dataset and split compared with (`cifar10 train`).
    """

    def __init__(self, quality, value_range: tuple[float, float], features: str, reference: str):
        self.quality, self.value_range = quality, value_range
        self.features, self.reference = features, reference

    def protocol(self, samples: int) -> dict:
        """What a score of `samples` images depends on besides the images: it is comparable only with the same."""
        return protocol(self.features, samples, self.reference, self.quality.num_reference)

    def __call__(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The scores of `samples`; with `labels`, the classes they were asked for, also accuracy, accuracy_min and
        intra_fid (None, or all -1, for an unconditional model: the scores are then the unconditional ones)."""
        return self.quality.compute(to_uint8(samples, self.value_range), labels)
