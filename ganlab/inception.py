"""InceptionV3 metrics through torch-fidelity: the FID, KID and Inception Score that papers quote, and PRDC beside them.

`eval.features=inception` scores samples with torch-fidelity's `inception-v3-compat` extractor, the port of
TensorFlow's FID Inception that matches the reference implementations (pytorch-fid, the TF FID code) to floating-point
precision. ganlab hands it uint8 images at the training resolution and lets it do its own resize to 299 x 299, and
computes every number with torch-fidelity's own functions on the features it returns, with its default settings:

- `fid`: `fid_statistics_to_metric` of the pool3 (2048-d) statistics.
- `kid_mean`, `kid_std`: `kid_features_to_metric`, 100 subsets of 1000 (fewer where a set is smaller), seed 2020.
- `is_mean`, `is_std`: `isc_features_to_metric` of the unbiased logits, 10 splits, seed 2020.
- `precision`, `recall`, `density`, `prdc_coverage`: `ganlab.manifold` on the same pool3 features, against at most
  10,000 reference images drawn once (Naeem et al. 2020 score 10,000 against 10,000).

So a ganlab number equals `torch_fidelity.calculate_metrics` on the same two image sets (a test checks it to 1e-3).
Gray images are repeated to three channels, as torch-fidelity's PNG reader does with `convert("RGB")`.

The reference side is computed once per dataset split and cached as an `.npz`: `mu` and `sigma` in the layout
pytorch-fid writes (`pytorch-fid a.npz b.npz` reads it), plus the pool3 `features` that KID and PRDC need. The file is
named by what changes the numbers: the dataset, the split, the image size and channels, and the extractor with the
first 8 hex digits of its weights' sha256. A cache whose image count no longer matches the split is rebuilt.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ganlab.errors import DataError
from ganlab.manifold import NEAREST_K, ManifoldMetrics

log = logging.getLogger(__name__)

EXTRACTOR = "inception-v3-compat"  # torch-fidelity's name for TensorFlow's FID Inception
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # as torch.hub caches torch-fidelity's download
POOL3, LOGITS = "2048", "logits_unbiased"  # the features FID/KID/PRDC and the Inception Score read
BATCH_SIZE = 64  # torch-fidelity's default batch; features do not depend on it beyond float rounding
PRDC_REFERENCE = 10_000  # reference images PRDC compares with (its k-NN radii are a square matrix of these)
SEED = 2020  # torch-fidelity's rng_seed: KID's subsets and the Inception Score's shuffle


class InceptionError(DataError):
    """Inception weights that are missing, cannot be downloaded, or are not torch-fidelity's InceptionV3."""


def weights_url() -> str:
    """Where torch-fidelity downloads its InceptionV3 weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def weights_file(path: str | None) -> Path:
    """The weights file to load: `path` (eval.inception_weights), or torch.hub's cached copy, downloaded if missing."""
    if path is not None:
        path = Path(os.path.expanduser(path)).absolute()
        if not path.is_file():
            raise InceptionError(
                f"eval.inception_weights={path} does not exist: download {weights_url()} (on a machine with "
                f"internet) and pass the path of that file."
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if not cached.is_file():
        log.info("downloading torch-fidelity's InceptionV3 weights to %s", cached)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights_url(), str(cached), progress=False)
        except Exception as error:  # urllib, ssl, a hash mismatch and a full disk all raise their own kinds
            raise InceptionError(
                f"eval.features=inception could not download its weights from {weights_url()} "
                f"({' '.join(str(error).split()) or type(error).__name__}): download that file where there is "
                f"internet and pass eval.inception_weights=PATH, or use eval.features=net."
            ) from None
    return cached


@dataclass
class Inception:
    """torch-fidelity's InceptionV3 extractor, on a device, and `name`: the extractor and its weights' checksum."""

    extractor: torch.nn.Module
    name: str

    @classmethod
    def load(cls, path: str | None, device: torch.device) -> "Inception":
        """The extractor with the weights `weights_file(path)` finds; a file that is not them is an `InceptionError`."""
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        file = weights_file(path)
        get_them = f"download {weights_url()} and pass its path as eval.inception_weights"
        try:
            data = file.read_bytes()
            torch.load(file, map_location="cpu", weights_only=True)  # refuse pickled code before torch-fidelity loads
            extractor = FeatureExtractorInceptionV3(
                EXTRACTOR, [POOL3, LOGITS], feature_extractor_weights_path=str(file)
            )
        except Exception as error:  # torch raises many kinds for a damaged or foreign file
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise InceptionError(
                f"{file} is not torch-fidelity's InceptionV3 weights ({reason}): {get_them}."
            ) from None
        checksum = hashlib.sha256(data).hexdigest()[:8]
        return cls(extractor.to(device), f"{EXTRACTOR}/{checksum}")

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = BATCH_SIZE) -> tuple[Tensor, Tensor]:
        """The pool3 features (N, 2048) and unbiased logits (N, 1008) of uint8 images (N, 1 or 3, H, W), on the CPU."""
        device = next(self.extractor.parameters()).device
        pool3, logits = [], []
        for batch in images.split(batch_size):
            features, batch_logits = self.extractor(batch.to(device).expand(-1, 3, -1, -1))
            pool3.append(features.cpu())
            logits.append(batch_logits.cpu())
        return torch.cat(pool3), torch.cat(logits)


@dataclass
class Reference:
    """The real side of the metrics: pool3 `features` (N, 2048) float32 and their FID statistics `mu`, `sigma`."""

    features: Tensor
    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features: Tensor) -> "Reference":
        from torch_fidelity.metric_fid import fid_features_to_statistics

        stats = fid_features_to_statistics(features)
        return cls(features, stats["mu"], stats["sigma"])

    def save(self, path: Path) -> None:
        """Write the `.npz` atomically (a sweep's jobs may build the same one at once)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as file:
            np.savez(file, mu=self.mu, sigma=self.sigma, features=self.features.numpy())
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path, count: int) -> "Reference | None":
        """The cached statistics of `count` images at `path`; None when absent, damaged, or of another count."""
        try:
            with np.load(path) as stored:
                features = torch.from_numpy(stored["features"])
                reference = cls(features, stored["mu"], stored["sigma"])
        except (OSError, ValueError, KeyError, EOFError):
            if path.exists():
                log.warning("reference statistics %s are unreadable: computing them again", path)
            return None
        if len(features) != count or reference.mu.shape != (features.shape[1],):
            log.info("reference statistics %s hold %d images, the split has %d: computing them again", path,
                     len(features), count)  # fmt: skip
            return None
        return reference


def cached_reference(path: Path, count: int, images, inception: Inception) -> Reference:
    """The reference statistics cached at `path`, or computed from `images()` (uint8, `count` of them) and saved."""
    reference = Reference.read(path, count)
    if reference is not None:
        log.info("reference statistics: %s", path)
        return reference
    log.info("computing the Inception statistics of %d reference images into %s", count, path)
    reference = Reference.of(inception.features(images())[0])
    try:
        reference.save(path)
    except OSError as error:
        raise InceptionError(
            f"cannot write the reference statistics {path} ({error.strerror or error}): set eval.stats_dir to a "
            f"writable folder."
        ) from None
    return reference


def write_random_weights(path: Path, seed: int = 0) -> None:
    """torch-fidelity's InceptionV3 with seeded He-initialised convolutions, saved as its real weights file is.

    For tests and benchmarks where the real weights cannot be downloaded: every step from loading on is the real
    one, the numbers are those of a random network, and the speed is the real network's.
    """
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    torch.manual_seed(seed)
    no_download = mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None)
    no_load = mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *args: None)
    with no_download, no_load:
        net = fidelity.FeatureExtractorInceptionV3(EXTRACTOR, [POOL3])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)  # activations keep their scale through the 94 layers
    torch.save(net.state_dict(), path)


class InceptionQuality:
    """FID, KID, Inception Score and PRDC of generated images against one cached `Reference`, in Inception's features.

    The interface is `ganlab.metrics.SampleQuality`'s.
    """

    def __init__(self, inception: Inception, reference: Reference, nearest_k: int = NEAREST_K):
        self.inception = inception
        self.reference = reference
        self.num_reference = len(reference.features)
        self.reference_classes: set[int] = set()  # Inception knows ImageNet's classes, not the dataset's
        chosen = torch.randperm(self.num_reference, generator=torch.Generator().manual_seed(0))[:PRDC_REFERENCE]
        device = next(inception.extractor.parameters()).device  # 10,000 x 10,000 distances: on the GPU if there
        self.manifold = ManifoldMetrics(reference.features[chosen.sort().values].to(device), nearest_k)

    def compute(self, generated: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The scores of uint8 images `generated` (N, 1 or 3, H, W), N >= 2; see the module docstring.

        labels: accepted for the interface and not used: Inception cannot tell the dataset's classes (the class
        metrics need the dataset's own net, eval.features=net).
        """
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric

        from ganlab.metrics import check_images

        check_images(generated, "generated")
        features, logits = self.inception.features(generated)
        stats = fid_features_to_statistics(features)
        reference = {"mu": self.reference.mu.astype(stats["mu"].dtype), "sigma": self.reference.sigma}
        subset_size = min(1000, len(features), self.num_reference)
        kid = kid_features_to_metric(features, self.reference.features, kid_subset_size=subset_size,
                                     rng_seed=SEED, verbose=False)  # fmt: skip
        inception_score = isc_features_to_metric(logits, splits=min(10, len(logits)), shuffle=True, rng_seed=SEED)
        return {
            "fid": fid_statistics_to_metric(stats, reference, verbose=False)["frechet_inception_distance"],
            "kid_mean": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"],
            "is_mean": inception_score["inception_score_mean"],
            "is_std": inception_score["inception_score_std"],
            **self.manifold.compute(features),
        }
