"""Sample-quality metrics that work offline: FID, KID, precision and recall in a small frozen net's embedding.

`SampleQuality` is built once from a `FeatureNet` (see `ganlab.features`) and the real reference images, the
dataset's test split; the reference statistics are computed then and reused by every `compute(generated)`:

- `fid`: Fréchet distance between Gaussians fitted to the real and generated embeddings (torchmetrics'
  FrechetInceptionDistance, fed the net's embeddings). Only comparable between runs scored with the same net, the
  same reference set and the same number of generated images: FID is biased upwards for small sets.
- `kid_mean`, `kid_std`: kernel inception distance (squared MMD with a cubic polynomial kernel, unbiased), mean and
  spread over random subsets; less biased than FID for small sets.
- `precision`, `recall`, `density`, `prdc_coverage`: fidelity and diversity apart, from k-nearest-neighbour
  manifolds of the same embeddings (`ganlab.manifold`); they depend on the set sizes too, so compare like with like.
- `coverage`: how many of the 10 classes hold at least 1% of the generated images (the net's argmax): mode collapse
  shows as a low count.
- `kl_uniform`: KL(p || uniform) of the histogram of predicted classes, 0 when balanced, log 10 = 2.30 for one class.
- `confidence`: the mean max softmax probability: low when the images look like no class at all.

A class-conditional generator is asked for a class per image; `compute(generated, labels)` then also measures
whether it gives the class asked for, in the same embedding pass (the reference images' labels must be known):

- `accuracy`: for each class asked for, the share of its images the net classifies as that class, averaged over
  the classes (so every class weighs the same, however many images asked for it). A generator that ignores its
  label scores about 1/10; real images with their true labels score about the net's own accuracy (99% on MNIST).
- `accuracy_min`: the lowest of those per-class shares: the class the generator renders worst.
- `intra_fid`: the FID of each class's generated images against the same class's reference images, averaged over
  the classes asked for (Miyato & Koyama 2018). It sees a generator that draws good images of the wrong class,
  which the overall FID cannot. Each class has only its share of the images (1/10 of the set), and FID is biased
  upwards for small sets, so intra-FID sits well above the overall FID of the same images; compare it only between
  runs with the same number of images per class. Classes with fewer than 2 generated or 2 reference images are
  left out (nan when none is left).

Inception-V3 FID, the number papers report, is `ganlab.inception` (eval.features=inception). `real_floor` gives the
real-vs-real score.
"""

import logging
import math
import warnings

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ganlab.features import Embeddings, FeatureNet, prepare_images
from ganlab.manifold import NEAREST_K, ManifoldMetrics

log = logging.getLogger(__name__)

COVERAGE_SHARE = 0.01  # a class counts as covered when it holds at least this share of the generated images
# every score is computed in one process (rank 0 of a run across processes): torchmetrics must not wait for the
# other ranks to gather their (absent) samples, which it would do whenever a process group exists
IN_THIS_PROCESS = {"sync_on_compute": False}


class SampleQuality:
    """FID, KID, precision/recall and class-balance metrics of generated images against one fixed set of real images.

    net: the frozen FeatureNet of the dataset (`ganlab.features.load_feature_net`); it is moved to the device of
    `reference`. reference: the real images, uint8 (N, C, H, W), N >= 2, usually the dataset's test split.
    batch_size: images per forward pass of the net. kid_subsets, kid_subset_size: KID averages the MMD over
    `kid_subsets` random subsets of `kid_subset_size` images of each side (clamped to the smaller side's size).
    seed: seeds KID's subset draws, in a forked RNG: the scores are repeatable and the caller's RNG is untouched.
    nearest_k: the k of precision, recall, density and prdc_coverage (`ganlab.manifold`).
    reference_labels: the class of each reference image (long, one per image), or None when they are unknown;
    with them, `compute` measures class-conditional samples too (accuracy, accuracy_min, intra_fid).
    """

    def __init__(
        self,
        net: FeatureNet,
        reference: Tensor,
        batch_size: int = 500,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
        nearest_k: int = NEAREST_K,
        reference_labels: Tensor | None = None,
    ):
        check_images(reference, "reference")
        if reference_labels is not None and tuple(reference_labels.shape) != (len(reference),):
            raise ValueError(
                f"reference_labels must hold one class per reference image ({len(reference)}), got the shape "
                f"{tuple(reference_labels.shape)}."
            )
        # FID keeps float64 sums, which Apple's MPS cannot hold: score there on the CPU
        self.device = torch.device("cpu") if reference.device.type == "mps" else reference.device
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        extractor = Embeddings(self.net.num_features)  # the net runs once per batch, in embed(); see update()
        # reset_real_features=False: reset() clears only the generated side; the reference statistics stay
        self.fid = FrechetInceptionDistance(feature=extractor, reset_real_features=False, **IN_THIS_PROCESS)
        self.fid = self.fid.to(self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save all extracted features")
            self.kid = KernelInceptionDistance(
                feature=extractor,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                reset_real_features=False,
                **IN_THIS_PROCESS,
            ).to(self.device)
        self.num_reference = len(reference)
        # one FID per class for intra_fid, its real side filled below from the same embeddings, once
        self.class_fid: dict[int, FrechetInceptionDistance] = {}
        if reference_labels is not None:
            reference_labels = reference_labels.to(self.device, torch.long)
            self.class_fid = {
                k: FrechetInceptionDistance(feature=extractor, reset_real_features=False, **IN_THIS_PROCESS).to(
                    self.device
                )
                for k in reference_labels.unique().tolist()
            }
        self.reference_classes = set(self.class_fid)
        with torch.no_grad():
            embeddings = torch.cat([self.embed(batch.to(self.device)) for batch in reference.split(batch_size)])
            for batch in embeddings.split(batch_size):
                self.update(batch, real=True)
            # the real k-NN radii are computed here, once: every compute() measures only the generated side
            self.manifold = ManifoldMetrics(embeddings, nearest_k)
            for k, fid in self.class_fid.items():
                fid.update(embeddings[reference_labels == k], real=True)

    def embed(self, images: Tensor) -> Tensor:
        """The net's embedding (N, num_features) of uint8 images (N, 1 or 3, H, W), in eval mode."""
        return self.net.features(prepare_images(images, self.net.input_shape))

    def update(self, embeddings: Tensor, real: bool) -> None:
        """Add one batch of embeddings to FID and KID, on the real or the generated side."""
        self.fid.update(embeddings, real=real)
        self.kid.update(embeddings, real=real)

    @torch.no_grad()
    def compute(self, generated: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The scores of `generated`, uint8 (N, C, H, W) with N >= 2, any size and channel count.

        Returns fid, kid_mean, kid_std, precision, recall, density, prdc_coverage, coverage (an int), kl_uniform
        and confidence; see the module docstring. The net embeds each image once, for all of them.
        labels: the class each image was asked for (integers, one per image; -1 = none asked), or None. When some
        class was asked for and the reference labels are known, accuracy, accuracy_min and intra_fid are added;
        images asked for no class count only in the other scores.
        """
        check_images(generated, "generated")
        labels = self._checked_labels(labels, len(generated))
        self.fid.reset()
        self.kid.reset()
        counts = torch.zeros(self.net.classifier.out_features, dtype=torch.long, device=self.device)
        confidence = torch.zeros((), device=self.device)
        all_embeddings, all_predicted = [], []
        for batch in generated.split(self.batch_size):
            embeddings = self.embed(batch.to(self.device))
            all_embeddings.append(embeddings)
            self.update(embeddings, real=False)
            probabilities = self.net.classifier(embeddings).softmax(dim=1)
            top, predicted = probabilities.max(dim=1)
            all_predicted.append(predicted)
            counts += torch.bincount(predicted, minlength=len(counts))
            confidence += top.sum()
        self.kid.subset_size = min(self.kid_subset_size, self.num_reference, len(generated))
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch.randperm on the CPU generator
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        share = counts.cpu().double() / len(generated)
        embeddings = torch.cat(all_embeddings)
        scores = {
            "fid": float(self.fid.compute()),
            "kid_mean": float(kid_mean),
            "kid_std": float(kid_std),
            **self.manifold.compute(embeddings),
            "coverage": int((share >= COVERAGE_SHARE).sum()),
            "kl_uniform": kl_from_uniform(share),
            "confidence": float(confidence) / len(generated),
        }
        if labels is not None:
            scores |= self.class_scores(embeddings, torch.cat(all_predicted), labels)
        return scores

    def _checked_labels(self, labels: Tensor | None, count: int) -> Tensor | None:
        """`labels` as a long tensor on the device, or None when there are none to measure (see `compute`)."""
        if labels is None or not self.reference_classes:
            return None
        if labels.is_floating_point() or labels.is_complex() or tuple(labels.shape) != (count,):
            raise ValueError(
                f"labels must be one integer class per generated image ({count}), got {labels.dtype} values shaped "
                f"{tuple(labels.shape)}."
            )
        labels = labels.to(self.device, torch.long)
        asked = labels[labels != -1]
        if len(asked) == 0:
            return None
        unknown = sorted(set(asked.unique().tolist()) - self.reference_classes)
        if unknown:
            raise ValueError(
                f"labels hold the classes {unknown}, which no reference image has: the reference classes are "
                f"{sorted(self.reference_classes)} (and -1 for an image asked for no class)."
            )
        return labels

    def class_scores(self, embeddings: Tensor, predicted: Tensor, labels: Tensor) -> dict[str, float]:
        """accuracy, accuracy_min and intra_fid (see the module docstring) of the generated images' `embeddings`,
        the net's `predicted` classes and the `labels` they were asked for (-1: none, left out)."""
        hits, fids = [], []
        for k in labels[labels != -1].unique().tolist():
            asked = labels == k
            hits.append(float((predicted[asked] == k).double().mean()))
            fid = self.class_fid[k]
            # a class needs 2 images on each side for a covariance; the real side was filled in __init__
            if int(asked.sum()) >= 2 and int(fid.real_features_num_samples) >= 2:
                fid.reset()
                fid.update(embeddings[asked], real=False)
                fids.append(float(fid.compute()))
        return {
            "accuracy": sum(hits) / len(hits),
            "accuracy_min": min(hits),
            "intra_fid": sum(fids) / len(fids) if fids else math.nan,
        }


def check_images(images: Tensor, name: str) -> None:
    """Refuse, in one sentence, `images` that are not uint8 (N, 1 or 3, H, W) with N >= 2."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) < 2:
        raise ValueError(
            f"{name} images must be uint8 (N, 1 or 3, H, W) with N >= 2, got {images.dtype} {tuple(images.shape)}."
        )


def kl_from_uniform(share: Tensor) -> float:
    """KL(p || uniform) in nats of a histogram p over K classes: 0 when flat, log K when all is in one class."""
    share = share.double()
    share = share / share.sum()
    present = share[share > 0]
    return max(0.0, float((present * present.log()).sum()) + math.log(len(share)))  # >= 0 but for rounding


def real_floor(
    net: FeatureNet, train_images: Tensor, test_images: Tensor, num_train: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """The scores of real data: `num_train` random train images (all, if fewer) scored against the test split.

    This is the floor a generator is compared with: a perfect generator scores about this, not 0. Use the same
    number of generated images (10,000) when comparing a run's FID with it, since FID grows as the set shrinks.
    """
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    return SampleQuality(net, test_images, seed=seed).compute(train_images[order[:num_train]])
