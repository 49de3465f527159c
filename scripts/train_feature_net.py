"""Train one of the small feature networks ganlab measures FID and KID with, and record it in the manifest.

    python scripts/train_feature_net.py --dataset mnist --data-root ../shared/data
    python scripts/train_feature_net.py --dataset cifar10 --data-root ../shared/data --cifar10-source subset
    python scripts/train_feature_net.py --dataset mnist --data-root ../shared/data --floor   # print the floor only
    python scripts/train_feature_net.py --dataset mnist --data-root ../shared/data --calibrate  # store the table only

Trains `ganlab.features.FeatureNet` on the real train split (decoded once into memory), with a fixed seed and
deterministic algorithms on the CPU, measures its accuracy on the test split, writes the state dict to
`ganlab/feature_nets/<dataset>.pt` and its entry in `ganlab/feature_nets/manifest.json`: sha256, test accuracy,
this exact command, the data it saw, seed, torch version, and the real-vs-real floor (`ganlab.metrics.real_floor`:
FID/KID between 10,000 train images and the test split, the best score a generator can expect), and the calibration
table (`ganlab.calibration`: every metric on 5,000 train images under controlled damage, against the test split).
`--calibrate` computes and stores that table for the net already there, without training or touching its file.

CIFAR-10: `--cifar10-source full` reads the pickle batches in `<data-root>/cifar-10-batches-py/`; `subset` reads
the PNG class folders in `<data-root>/cifar10-subset/{train,test}/` (real CIFAR-10 images, but only a few thousand);
`auto` (default) uses the full set when it is there and the subset otherwise. The manifest says which
(`train_set`: full or subset).
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganlab.calibration import CALIBRATION_IMAGES, calibrate, markdown_table  # noqa: E402
from ganlab.errors import GanlabError  # noqa: E402
from ganlab.features import (  # noqa: E402
    ARCHITECTURE_VERSION,
    FEATURE_NETS_DIR,
    MANIFEST,
    FeatureNet,
    load_feature_net,
    sha256_of,
)
from ganlab.manifold import NEAREST_K  # noqa: E402
from ganlab.metrics import SampleQuality, real_floor  # noqa: E402

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# per dataset: the torchvision class or folder it reads, the native input shape, default epochs, and whether random
# flips and shifts help (they do for photos of a few thousand images; digits must not be mirrored)
DATASETS = {
    "mnist": {"input_shape": (1, 28, 28), "epochs": 3, "augment": False},
    "fashion_mnist": {"input_shape": (1, 28, 28), "epochs": 4, "augment": False},
    "cifar10": {"input_shape": (3, 32, 32), "epochs": 30, "augment": True},
}
SEED = 0  # the torch seed of every training run; the manifest records it
WIDTH = 32  # FeatureNet width: convs of 32 and 64 channels, a 128-value embedding (about 150k parameters, 0.6 MB)
BATCH_SIZE = 128
LEARNING_RATE = 2e-3  # Adam, decayed to 0 along a cosine over the whole run
THREADS = 2  # torch CPU threads: the result is reproducible bit for bit at a fixed thread count


class ScriptError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


def load_split(dataset: str, root: Path, train: bool, cifar10_source: str) -> tuple[Tensor, Tensor, str]:
    """All images of one split as uint8 (N, C, H, W), their int64 labels, and a sentence saying what they are."""
    split = "train" if train else "test"
    try:
        if dataset in ("mnist", "fashion_mnist"):
            cls = torchvision.datasets.MNIST if dataset == "mnist" else torchvision.datasets.FashionMNIST
            data = cls(str(root), train=train, download=False)
            what = f"{cls.__name__} {split} split via torchvision.datasets.{cls.__name__}"
            return data.data.unsqueeze(1).contiguous(), data.targets.long(), f"{what} ({len(data)} images)"
        if cifar10_source == "full":
            data = torchvision.datasets.CIFAR10(str(root), train=train, download=False)
            images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
            what = f"full CIFAR-10 {split} split via torchvision.datasets.CIFAR10 ({len(data)} images)"
            return images, torch.tensor(data.targets), what
        return _cifar10_subset(root / "cifar10-subset" / split)
    except (RuntimeError, OSError, ValueError) as error:
        raise ScriptError(
            f"could not read the {dataset} {split} split under --data-root {root} ({' '.join(str(error).split())}); "
            f"point --data-root at the folder that holds it (for example ../shared/data)."
        ) from None


def _cifar10_subset(folder: Path) -> tuple[Tensor, Tensor, str]:
    """The PNG class folders of cifar10-subset, decoded once through torchvision.datasets.ImageFolder."""
    data = torchvision.datasets.ImageFolder(str(folder), loader=torchvision.io.decode_image)
    if data.classes != CIFAR10_CLASSES:
        raise ScriptError(f"{folder} holds the classes {data.classes}; expected the CIFAR-10 ones {CIFAR10_CLASSES}.")
    images = torch.stack([image for image, _ in data])
    what = f"cifar10-subset/{folder.name} PNGs via torchvision.datasets.ImageFolder ({len(data)} real CIFAR-10 images)"
    return images, torch.tensor(data.targets), what


def resolve_cifar10_source(root: Path, choice: str) -> str:
    """`full` or `subset`: `auto` is the full CIFAR-10 when its pickle batches are under `root`, else the subset."""
    if choice != "auto":
        return choice
    return "full" if (root / torchvision.datasets.CIFAR10.base_folder).is_dir() else "subset"


def random_flip_and_shift(x: Tensor, generator: torch.Generator, shift: int = 4) -> Tensor:
    """Each image mirrored left-right with probability 1/2 and moved by up to `shift` pixels (reflected borders)."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]


def train(net: FeatureNet, images: Tensor, labels: Tensor, epochs: int, augment: bool) -> None:
    """Adam on cross-entropy, `epochs` passes over the uint8 `images` in a seeded random order."""
    generator = torch.Generator().manual_seed(SEED)
    x = images.float().div_(255)  # the same scaling as ganlab.features.prepare_images
    steps = epochs * -(-len(x) // BATCH_SIZE)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    net.train()
    for epoch in range(epochs):
        start, total, count = time.perf_counter(), 0.0, 0
        for index in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
            batch = random_flip_and_shift(x[index], generator) if augment else x[index]
            loss = F.cross_entropy(net(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(index), count + len(index)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / count:.4f}, {time.perf_counter() - start:.0f} s", flush=True)


@torch.no_grad()
def accuracy(net: FeatureNet, images: Tensor, labels: Tensor) -> float:
    """The share of uint8 `images` whose argmax class is their label, in eval mode."""
    net.eval()
    correct = sum(
        (net(batch.float().div_(255)).argmax(1) == target).sum().item()
        for batch, target in zip(images.split(1000), labels.split(1000), strict=True)
    )
    return correct / len(images)


def calibration_record(
    net: FeatureNet, train: tuple[Tensor, Tensor, str], test_images: Tensor, test_what: str, command: str
) -> dict:
    """The manifest's `calibration`: every metric on damaged train images against the test split, and how.

    train: the train split's uint8 images, their labels, and the sentence saying what they are.
    """
    images, labels, train_what = train
    rows = calibrate(SampleQuality(net, test_images), images, labels, CALIBRATION_IMAGES, SEED)
    print(markdown_table(rows), flush=True)
    return {
        "command": command,
        "images_per_set": CALIBRATION_IMAGES,
        "seed": SEED,
        "nearest_k": NEAREST_K,
        "damaged": train_what,
        "reference": test_what,
        "sets": rows,
    }


def write_manifest(manifest: dict, out_dir: Path) -> None:
    """Write manifest.json atomically, so a reader never sees half a file."""
    path = out_dir / MANIFEST
    path.with_suffix(".tmp").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(path.with_suffix(".tmp"), path)


def read_manifest_file(out_dir: Path) -> dict:
    return json.loads((out_dir / MANIFEST).read_text()) if (out_dir / MANIFEST).exists() else {}


def write_net(name: str, net: FeatureNet, entry: dict, out_dir: Path) -> dict:
    """Save the state dict as `<out_dir>/<name>.pt` and its manifest entry (with the file's sha256), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pt"
    torch.save(net.state_dict(), path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    manifest = read_manifest_file(out_dir)
    manifest[name] = entry | {"file": path.name, "sha256": sha256_of(path.read_bytes())}
    write_manifest(manifest, out_dir)
    return manifest[name]


def main(argv: list[str] | None = None) -> int:
    """Train and record one feature net (or only print its floor, or only store its calibration); the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--data-root", required=True, type=Path, help="the folder that holds MNIST/raw, ...")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the train split (default per dataset)")
    parser.add_argument("--cifar10-source", choices=["auto", "full", "subset"], default="auto")
    parser.add_argument("--out-dir", type=Path, default=FEATURE_NETS_DIR, help="where to write (default: the shipped)")
    parser.add_argument("--floor", action="store_true", help="print the shipped net's real-vs-real floor; no training")
    parser.add_argument(
        "--calibrate", action="store_true", help="compute and store the net's calibration table; no training"
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (recorded when training)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "scripts/train_feature_net.py", *(sys.argv[1:] if argv is None else argv)])
    root = args.data_root.expanduser().absolute()
    source = resolve_cifar10_source(root, args.cifar10_source)
    train_set = source if args.dataset == "cifar10" else "full"  # MNIST and Fashion-MNIST: always the whole split
    spec = DATASETS[args.dataset]
    epochs = args.epochs or spec["epochs"]
    try:
        train_images, train_labels, train_what = load_split(args.dataset, root, True, source)
        test_images, test_labels, test_what = load_split(args.dataset, root, False, source)
        if args.floor:
            net = load_feature_net(args.dataset, args.out_dir)
            print(json.dumps(real_floor(net, train_images, test_images), indent=2))
            return 0
        if args.calibrate:  # the net's file and checksum stay as they are: only its entry gains the table
            net = load_feature_net(args.dataset, args.out_dir)
            manifest = read_manifest_file(args.out_dir)
            calibration = calibration_record(
                net, (train_images, train_labels, train_what), test_images, test_what, command
            )
            manifest[args.dataset]["calibration"] = calibration
            write_manifest(manifest, args.out_dir)
            return 0
    except (ScriptError, GanlabError) as error:
        print(f"train_feature_net: error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    net = FeatureNet(spec["input_shape"], WIDTH)
    start = time.perf_counter()
    train(net, train_images, train_labels, epochs, spec["augment"])
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(net, test_images, test_labels)
    print(f"{args.dataset}: test accuracy {test_accuracy:.4f} ({len(test_images)} images), trained in {seconds:.0f} s")
    net.requires_grad_(False)
    entry = {
        "version": ARCHITECTURE_VERSION,
        "command": command,
        "input_shape": list(spec["input_shape"]),
        "width": WIDTH,
        "num_classes": 10,
        "num_features": net.num_features,
        "parameters": sum(p.numel() for p in net.parameters()),
        "test_accuracy": round(test_accuracy, 4),
        "train_set": train_set,
        "train_data": train_what,
        "test_data": test_what,
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "augment": spec["augment"],
        "seed": SEED,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "train_seconds": round(seconds),
        "real_floor": real_floor(net, train_images, test_images),
        "calibration": calibration_record(
            net, (train_images, train_labels, train_what), test_images, test_what, command
        ),
    }
    entry = write_net(args.dataset, net, entry, args.out_dir)
    print(json.dumps(entry, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
