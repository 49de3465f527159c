"""Small frozen feature networks: what FID and KID measure with on ganlab's datasets instead of Inception.

Inception-V3 FID needs weights that cannot be downloaded offline and was trained on photos, not digits. ganlab
ships one small CNN classifier per dataset instead (`ganlab/feature_nets/<name>.pt`), trained by
`scripts/train_feature_net.py` on the real train split. Its penultimate layer is the embedding FID and KID compare;
its softmax tells which classes the generated images fall in.

`feature_nets/manifest.json` records, for every net, the sha256 of its file, its test accuracy, the exact command
that trained it, the data (`train_set`: the full train split, or the CIFAR-10 subset), seed and torch version, and
its calibration table (`ganlab.calibration`: every metric on real images under controlled damage);
`load_feature_net` refuses a file whose checksum differs.
"""

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.transforms import functional as TF

from ganlab.errors import DataError

FEATURE_NETS_DIR = Path(__file__).resolve().parent / "feature_nets"
MANIFEST = "manifest.json"
# the FeatureNet layout the code builds; a manifest entry written for another layout must be retrained
ARCHITECTURE_VERSION = 1
# ITU-R 601-2 luma, the weights PIL's convert("L") (and so torchvision's Grayscale) uses
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class FeatureNetError(DataError):
    """A shipped feature net that is missing, unreadable, or does not match its manifest."""


class FeatureNet(nn.Module):
    """A small CNN classifier; `features` is its penultimate embedding, `forward` its logits.

    input_shape: (channels, height, width) of the images it takes, float in [0, 1] (its dataset's native size).
    width: channels of the first conv (the second has twice as many). num_features: size of the embedding.
    Two conv -> BatchNorm -> ReLU -> max-pool blocks, an average pool to 4x4, then a fully connected layer with
    BatchNorm and ReLU: the embedding (torchmetrics reads `num_features`). No dropout: eval mode is deterministic.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        width: int = 32,
        num_features: int = 128,
        num_classes: int = 10,
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_features = num_features
        self.body = nn.Sequential(
            _conv_block(self.input_shape[0], width),
            _conv_block(width, 2 * width),
            nn.AdaptiveAvgPool2d(4),  # 7x7 (MNIST) or 8x8 (CIFAR-10) maps -> 4x4, so the layer below fits both
            nn.Flatten(),
            nn.Linear(2 * width * 16, num_features, bias=False),
            nn.BatchNorm1d(num_features),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The embedding (N, num_features) of images x, float in [0, 1], shaped (N, *input_shape)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"FeatureNet takes images shaped (N, {', '.join(map(str, self.input_shape))}), got "
                f"{tuple(x.shape)}: convert them with ganlab.features.prepare_images first."
            )
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """The class logits (N, num_classes)."""
        return self.classifier(self.features(x))


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def prepare_images(images: Tensor, input_shape: tuple[int, int, int]) -> Tensor:
    """uint8 images (N, C, H, W) of any size, gray or RGB, as float in [0, 1] at `input_shape` (C', H', W').

    Resizing is the dataset pipeline's: the shorter side to the target size (bilinear, antialiased), then a center
    crop. RGB becomes gray with PIL's luma weights; gray becomes RGB by repeating the channel.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images shaped (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}: "
            f"convert generator outputs with (x * 255).round().clamp(0, 255).to(torch.uint8) (from [0, 1])."
        )
    channels, height, width = input_shape
    x = images.float().div_(255)
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    if tuple(x.shape[2:]) != (height, width):
        x = TF.resize(x, [min(height, width)], antialias=True)
        x = TF.center_crop(x, [height, width]).clamp_(0, 1)  # bilinear weights sum to 1 only up to rounding
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x


class Embeddings(nn.Module):
    """The `feature` module SampleQuality gives torchmetrics' FID and KID: it passes through embeddings made already.

    SampleQuality runs the FeatureNet once per batch and hands the same embedding to FID, KID and the class counts,
    instead of letting each metric run the net again.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # torchmetrics reads the embedding size from here

    def forward(self, embeddings: Tensor) -> Tensor:
        """`embeddings` (N, num_features), unchanged."""
        return embeddings


def read_manifest(directory: Path | str | None = None) -> dict:
    """The manifest of the feature nets in `directory` (default: the ones shipped with ganlab)."""
    path = Path(directory or FEATURE_NETS_DIR) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FeatureNetError(
            f"the feature-net manifest {path} is unreadable ({type(error).__name__}): reinstall ganlab."
        ) from None


def sha256_of(data: bytes) -> str:
    """The hex sha256 of `data`, as the manifest records it."""
    return hashlib.sha256(data).hexdigest()


def load_feature_net(name: str, directory: Path | str | None = None) -> FeatureNet:
    """The frozen FeatureNet `name` (mnist, fashion_mnist, cifar10) in eval mode, on the CPU, checksum verified.

    directory: where `<name>.pt` and manifest.json are; None = the nets shipped with ganlab.
    """
    directory = Path(directory or FEATURE_NETS_DIR)
    manifest = read_manifest(directory)
    if name not in manifest:
        raise FeatureNetError(
            f"there is no feature net named {name!r} in {directory}: the available ones are {sorted(manifest)}."
        )
    entry = manifest[name]
    path = directory / entry["file"]
    retrain = f"reinstall ganlab, or retrain it with `{entry['command']}` (from the repository root)"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FeatureNetError(f"feature net {path} is unreadable ({type(error).__name__}): {retrain}.") from None
    if sha256_of(data) != entry["sha256"]:
        raise FeatureNetError(
            f"feature net {path} does not match its checksum in {directory / MANIFEST} "
            f"(sha256 {sha256_of(data)[:12]}..., expected {entry['sha256'][:12]}...): {retrain}."
        )
    if entry["version"] != ARCHITECTURE_VERSION:
        raise FeatureNetError(
            f"feature net {path} was trained for feature-net version {entry['version']}, but this ganlab builds "
            f"version {ARCHITECTURE_VERSION}: {retrain}."
        )
    net = FeatureNet(tuple(entry["input_shape"]), entry["width"], entry["num_features"], entry["num_classes"])
    try:
        net.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as error:  # torch raises many kinds for a damaged or mismatched file
        raise FeatureNetError(f"feature net {path} is unreadable ({type(error).__name__}): {retrain}.") from None
    return net.eval().requires_grad_(False)
