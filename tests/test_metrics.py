"""Sample-quality metrics: the shipped feature nets, their checksums, and FID / KID / class balance through them.

Every score here goes through the real code: the shipped weights loaded by `load_feature_net`, torchmetrics' FID
and KID with the net as feature extractor. The tests on real MNIST read `../shared/data` and skip when it is
absent; the synthetic versions beside them need nothing but the package.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ganlab.errors import DataError
from ganlab.features import (
    ARCHITECTURE_VERSION,
    FEATURE_NETS_DIR,
    MANIFEST,
    load_feature_net,
    prepare_images,
    sha256_of,
)
from ganlab.metrics import SampleQuality, kl_from_uniform

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("mnist", "fashion_mnist", "cifar10")
FAST = {"kid_subsets": 10}  # KID subsets per compute: 10 instead of 100 keeps each compute well under a second


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: scores must not depend on the thread count


def digit_like_shapes(n: int, seed: int) -> torch.Tensor:
    """n uint8 (n, 1, 28, 28) images of antialiased white strokes on black: rings (a 0) and slanted bars (a 1).

    Sizes, positions, slants and stroke widths are random, so two draws are two samples of one distribution, as
    two halves of a dataset are; nothing in them is copied from the data the net was trained on.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, 1, 1, generator=g)

    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    cx, cy, width = uniform(11, 17), uniform(11, 17), uniform(1.2, 2.2)
    rx, ry = uniform(4, 7), uniform(7, 10)
    ring = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2).sqrt().sub(1).abs() * torch.minimum(rx, ry)
    slant = uniform(-0.35, 0.35)
    bar = ((x - cx - slant * (y - cy)).abs() / (1 + slant**2).sqrt()).where((y - cy).abs() < ry, torch.tensor(99.0))
    is_ring = torch.rand(n, 1, 1, generator=g) < 0.5
    distance = torch.where(is_ring, ring, bar)
    return ((1 - (distance - width / 2).clamp(0, 1)) * 255).round().to(torch.uint8).unsqueeze(1)


def uniform_noise(n: int, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- the shipped nets and their manifest ---


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_net_is_small_matches_its_checksum_and_loads_frozen(name):
    entry = json.loads((FEATURE_NETS_DIR / MANIFEST).read_text())[name]
    path = FEATURE_NETS_DIR / entry["file"]
    assert path.stat().st_size <= 2 * 2**20
    assert sha256_of(path.read_bytes()) == entry["sha256"]
    assert entry["version"] == ARCHITECTURE_VERSION
    assert entry["command"].startswith(f"python scripts/train_feature_net.py --dataset {name} ")
    for key in ("test_accuracy", "input_shape", "seed", "torch_version", "train_data", "test_data", "real_floor",
                "train_set", "calibration"):  # fmt: skip
        assert key in entry, key
    assert entry["train_set"] == ("subset" if name == "cifar10" else "full")
    assert entry["calibration"]["images_per_set"] == 5000 and len(entry["calibration"]["sets"]) == 9
    net = load_feature_net(name)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.num_features == entry["num_features"]
    images = uniform_noise(3, tuple(entry["input_shape"]))
    assert net.features(prepare_images(images, net.input_shape)).shape == (3, net.num_features)


def test_mnist_net_recorded_accuracy_is_at_least_99_percent():
    assert json.loads((FEATURE_NETS_DIR / MANIFEST).read_text())["mnist"]["test_accuracy"] >= 0.99


def test_mnist_net_accuracy_on_real_test_split(mnist_net, real_mnist_test):
    """The recorded accuracy is what the shipped weights really score (first 2000 test images, >= 98.5%)."""
    images, labels = real_mnist_test
    with torch.no_grad():
        predicted = mnist_net(prepare_images(images[:2000], mnist_net.input_shape)).argmax(1)
    assert (predicted == labels[:2000]).float().mean() >= 0.985


def _copy_shipped(directory: Path) -> Path:
    for path in FEATURE_NETS_DIR.iterdir():
        shutil.copy(path, directory / path.name)
    return directory


def test_corrupted_weights_are_rejected_with_one_sentence(tmp_path):
    directory = _copy_shipped(tmp_path)
    load_feature_net("mnist", directory)  # the intact copy loads
    data = bytearray((directory / "mnist.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "mnist.pt").write_bytes(bytes(data))
    with pytest.raises(DataError) as caught:
        load_feature_net("mnist", directory)
    message = str(caught.value)
    assert "\n" not in message and message.endswith(".")
    assert str(directory / "mnist.pt") in message and "does not match its checksum" in message
    assert "reinstall ganlab" in message and "python scripts/train_feature_net.py --dataset mnist" in message


def test_unreadable_weights_with_a_matching_checksum_are_reported_as_unreadable(tmp_path):
    directory = _copy_shipped(tmp_path)
    (directory / "mnist.pt").write_bytes(b"not a torch file")
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["mnist"]["sha256"] = sha256_of(b"not a torch file")
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"feature net .*mnist\.pt is unreadable \(.*\): reinstall ganlab"):
        load_feature_net("mnist", directory)


def test_missing_weights_and_unknown_names_are_one_sentence(tmp_path):
    directory = _copy_shipped(tmp_path)
    (directory / "cifar10.pt").unlink()
    with pytest.raises(DataError, match=r"cifar10\.pt is unreadable \(FileNotFoundError\): reinstall ganlab"):
        load_feature_net("cifar10", directory)
    with pytest.raises(DataError, match=r"no feature net named 'svhn' .*: the available ones are \['cifar10', "):
        load_feature_net("svhn")


def test_training_script_writes_a_net_that_loads(data_root, tmp_path):
    """The real command line, on the tiny fixture MNIST: one epoch, written to tmp_path, read back by the loader."""
    out = tmp_path / "nets"
    command = [sys.executable, "scripts/train_feature_net.py", "--dataset", "mnist", "--data-root", str(data_root)]
    result = subprocess.run(
        [*command, "--epochs", "1", "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    entry = json.loads((out / MANIFEST).read_text())["mnist"]
    assert entry["epochs"] == 1 and "--out-dir" in entry["command"] and "(64 images)" in entry["train_data"]
    assert entry["train_set"] == "full" and len(entry["calibration"]["sets"]) == 9  # the table of ganlab.calibration
    assert load_feature_net("mnist", out).num_features == entry["num_features"]
    missing = subprocess.run([*command[:-1], str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("train_feature_net: error: could not read the mnist train split")


# --- preparing images for a net ---


def test_prepare_images_converts_size_and_channels():
    gray = digit_like_shapes(4, seed=0)
    rgb = gray.expand(-1, 3, -1, -1)
    # the luma weights sum to 1, so gray repeated to RGB comes back (to float32 rounding)
    torch.testing.assert_close(prepare_images(rgb, (1, 28, 28)), prepare_images(gray, (1, 28, 28)))
    as_rgb = prepare_images(gray, (3, 28, 28))
    assert as_rgb.shape == (4, 3, 28, 28) and all(torch.equal(as_rgb[:, c], gray[:, 0] / 255) for c in range(3))
    red = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 255
    assert prepare_images(red, (1, 8, 8)).unique().tolist() == pytest.approx([0.299])  # PIL's luma for pure red
    assert prepare_images(gray, (3, 32, 32)).shape == (4, 3, 32, 32)
    big = prepare_images(torch.nn.functional.interpolate(gray, size=64), (1, 28, 28))
    assert big.shape == (4, 1, 28, 28) and 0 <= big.min() and big.max() <= 1
    with pytest.raises(ValueError, match="expected uint8 images"):
        prepare_images(gray.float(), (1, 28, 28))


def test_the_feature_net_runs_once_per_batch_in_eval_mode(mnist_net):
    """FID, KID and the class counts share one embedding: the net's body runs once per batch, not three times."""
    quality = SampleQuality(mnist_net, digit_like_shapes(60, seed=3), batch_size=20, **FAST)
    quality.fid.train()  # what a parent module's train() would do: the net must not follow
    quality.kid.train()
    calls = []
    hook = mnist_net.body.register_forward_hook(lambda module, args, output: calls.append(module.training))
    try:
        quality.compute(digit_like_shapes(50, seed=4))
    finally:
        hook.remove()
    assert calls == [False, False, False]  # 50 images in batches of 20


# --- the scores ---


def test_fid_of_a_set_against_itself_is_zero(mnist_net):
    """FID(X, X) is 0 in exact arithmetic; the only error is float64 rounding in an eigen-decomposition.

    The bound, 1e-6 of the noise FID, is far above that rounding (about 1e-12 relative) and far below any real
    difference: two draws of the same shapes already score about 1e-3 of the noise FID.
    """
    images = digit_like_shapes(400, seed=1)
    quality = SampleQuality(mnist_net, images, **FAST)
    assert abs(quality.compute(images)["fid"]) < 1e-6 * quality.compute(uniform_noise(400))["fid"]


def test_noise_scores_far_worse_than_a_second_draw_of_the_same_shapes(mnist_net):
    """Without shared data: half A of a synthetic digit-like set against half B, and uniform noise against half B."""
    quality = SampleQuality(mnist_net, digit_like_shapes(300, seed=2), **FAST)
    same = quality.compute(digit_like_shapes(300, seed=3))
    noise = quality.compute(uniform_noise(300))
    assert same["fid"] * 20 < noise["fid"]
    assert same["kid_mean"] * 20 < noise["kid_mean"]


def test_noise_scores_far_worse_than_real_mnist(mnist_net, real_mnist_test):
    """Real test images 0-999 against 1000-1999 (close to the floor), and noise against the same 1000."""
    images, _ = real_mnist_test
    quality = SampleQuality(mnist_net, images[:1000], **FAST)
    real = quality.compute(images[1000:2000])
    noise = quality.compute(uniform_noise(1000))
    assert real["fid"] * 100 < noise["fid"] and real["kid_mean"] * 100 < noise["kid_mean"]
    assert real["coverage"] == 10 and real["kl_uniform"] < 0.02 and real["confidence"] > 0.95


def test_a_one_class_set_is_flagged_by_coverage(mnist_net):
    """Copies of one image: a single class, so coverage 1 and KL to uniform exactly log 10."""
    one = digit_like_shapes(1, seed=4).expand(200, -1, -1, -1)
    scores = SampleQuality(mnist_net, digit_like_shapes(200, seed=5), **FAST).compute(one)
    assert scores["coverage"] == 1 and scores["kl_uniform"] == pytest.approx(math.log(10))


def test_one_real_digit_class_is_flagged_by_coverage(mnist_net, real_mnist_test):
    """All the real 7s: the net puts (almost) all in one class, so coverage 1 and KL to uniform near log 10 (2.30).

    With coverage 1 every other class holds < 1%, so KL is at least 1.8; the real 7s score about 2.2.
    """
    images, labels = real_mnist_test
    quality = SampleQuality(mnist_net, images[:1000], **FAST)
    sevens = quality.compute(images[labels == 7])
    assert sevens["coverage"] == 1 and 2.0 < sevens["kl_uniform"] <= math.log(10)
    balanced = quality.compute(images[1000:3000])
    assert balanced["coverage"] == 10 and sevens["fid"] > 20 * balanced["fid"]


def test_kl_from_uniform():
    assert kl_from_uniform(torch.full((10,), 0.1)) == pytest.approx(0, abs=1e-12)
    assert kl_from_uniform(torch.eye(10)[3]) == pytest.approx(math.log(10))
    assert kl_from_uniform(torch.tensor([0.5, 0.5, 0, 0])) == pytest.approx(math.log(2))


def test_reference_statistics_are_kept_and_scores_repeat_without_touching_the_rng(mnist_net):
    """compute() resets only the generated side, draws KID subsets from its own seed, and leaves torch's RNG alone."""
    reference = digit_like_shapes(300, seed=6)
    quality = SampleQuality(mnist_net, reference, kid_subset_size=100, **FAST)
    generated = digit_like_shapes(50, seed=7)  # fewer than kid_subset_size: KID uses subsets of 50
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = quality.compute(generated)
    assert torch.equal(torch.rand(3), expected)
    quality.compute(uniform_noise(80))
    assert quality.compute(generated) == first
    assert int(quality.fid.real_features_num_samples) == len(reference)
    assert int(quality.fid.fake_features_num_samples) == len(generated)


def test_gray_generated_images_at_another_size_and_in_rgb_score_like_native_ones(mnist_net):
    """The metric prepares any uint8 layout: the same images as RGB score as gray ones (to float32 rounding)."""
    quality = SampleQuality(mnist_net, digit_like_shapes(200, seed=8), **FAST)
    gray = digit_like_shapes(200, seed=9)
    # abs: KID averages cubic kernels of 200 x 200 pairs, so float32 rounding reaches ~1e-7 in kid_mean and kid_std
    assert quality.compute(gray.expand(-1, 3, -1, -1)) == pytest.approx(quality.compute(gray), rel=1e-5, abs=1e-6)
    upscaled = quality.compute(torch.nn.functional.interpolate(gray, size=56, mode="nearest"))
    assert upscaled["fid"] < quality.compute(uniform_noise(200))["fid"] / 10


def test_bad_images_are_refused(mnist_net):
    quality = SampleQuality(mnist_net, digit_like_shapes(20, seed=10), **FAST)
    with pytest.raises(ValueError, match="generated images must be uint8"):
        quality.compute(digit_like_shapes(1, seed=11))
