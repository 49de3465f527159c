"""Precision, recall, density and coverage, and the calibration table: real MNIST under controlled damage.

The targets of issue 13 run on the real MNIST (../shared/data, skipped when absent): the damaged train images are
scored against the test split exactly as `ganlab-eval calibrate` and the manifest's table score them. The rest needs
nothing but the package: agreement with the authors' `prdc` package on random features (skipped without prdc, a dev
dependency), the damage itself, and the commands that print and store the table on the tiny fixture MNIST.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import ganlab.manifold
from ganlab.calibration import COLUMNS, FLOOR, calibrate, damaged_sets
from ganlab.cli import eval_command
from ganlab.errors import ConfigError
from ganlab.features import FEATURE_NETS_DIR, MANIFEST, load_feature_net, read_manifest, sha256_of
from ganlab.manifold import ManifoldMetrics
from ganlab.metrics import SampleQuality

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NOISE = ["noise σ0.05", "noise σ0.1", "noise σ0.2", "noise σ0.3"]
BLUR = ["blur σ1 (3x3)", "blur σ2 (5x5)"]
CLASSES = ["only 5 classes", "only 1 class"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: scores must not depend on the thread count


# --- precision, recall, density, coverage against the reference implementation ---


@pytest.mark.parametrize("k", [1, 3, 5])
def test_manifold_metrics_equal_the_prdc_package_on_random_features(k):
    """Naeem et al.'s own implementation (numpy, scikit-learn) and ganlab's chunked torch one give the same numbers.

    The fake set is shifted and wider than the real one, so every metric is strictly between 0 and 1; 97-row chunks
    split both sets unevenly, so the block-wise accumulation is tested too.
    """
    prdc = pytest.importorskip("prdc", reason="prdc (pip install prdc, in the dev extra) is the reference to compare")
    rng = np.random.default_rng(k)
    real = rng.normal(size=(700, 16)).astype(np.float32)
    fake = (rng.normal(size=(500, 16)) * 1.2 + 0.3).astype(np.float32)
    expected = prdc.compute_prdc(real, fake, nearest_k=k)
    ours = ManifoldMetrics(torch.from_numpy(real), k, chunk_rows=97).compute(torch.from_numpy(fake))
    assert all(0 < value < 1 for value in ours.values())
    assert ours == pytest.approx(
        {"precision": expected["precision"], "recall": expected["recall"], "density": expected["density"],
         "prdc_coverage": expected["coverage"]}, rel=1e-12)  # fmt: skip


def test_reference_radii_are_computed_once_and_sets_of_identical_points_score_perfectly(monkeypatch):
    """Building measures the real radii; each compute measures only the generated set's (one call, its size)."""
    reference = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    metrics = ManifoldMetrics(reference)
    sizes = []
    radii = ganlab.manifold.kth_neighbour_radii
    monkeypatch.setattr(ganlab.manifold, "kth_neighbour_radii", lambda x, *a: sizes.append(len(x)) or radii(x, *a))
    same = metrics.compute(reference.clone())
    assert sizes == [300]
    assert same == {"precision": 1.0, "recall": 1.0, "density": pytest.approx(1.0, abs=0.1), "prdc_coverage": 1.0}
    far = metrics.compute(reference[:3] + 100)  # 3 points, fewer than k + 1: k is clamped, nothing is inside
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "prdc_coverage": 0.0}


# --- the damage ---


def test_damaged_sets_differ_from_the_floor_by_their_damage_alone():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(96, 160, (400, 1, 12, 12), dtype=torch.uint8, generator=generator)  # mid-gray
    labels = torch.arange(400) % 10
    sets = damaged_sets(images, labels, n=300, seed=1)
    assert list(sets) == [FLOOR, *NOISE, *BLUR, *CLASSES]
    floor = sets[FLOOR].float()
    assert [len(damaged) for damaged in sets.values()] == [300] * 7 + [200, 40]  # classes 0-4: 200 images; 0: 40
    assert all(damaged.dtype == torch.uint8 and damaged.shape[1:] == (1, 12, 12) for damaged in sets.values())
    for name, std in zip(NOISE[:3], (0.05, 0.1, 0.2), strict=True):  # σ0.3 clips at 0 and 255 here
        difference = (sets[name].float() - floor) / 255
        assert abs(float(difference.mean())) < 0.01 and float(difference.std()) == pytest.approx(std, rel=0.05)
    assert (sets[NOISE[3]].float() - floor).std() > (sets[NOISE[2]].float() - floor).std()
    assert (sets[BLUR[0]].float() - floor).abs().mean() < (sets[BLUR[1]].float() - floor).abs().mean()
    blurred = float(sets[BLUR[0]].float().mean())
    assert blurred == pytest.approx(float(floor.mean()), rel=0.02)  # blur moves pixels, not brightness
    as_rows = {tuple(image.flatten().tolist()): int(label) for image, label in zip(images, labels, strict=True)}
    for name, kept in zip(CLASSES, (set(range(5)), {0}), strict=True):
        assert {as_rows[tuple(image.flatten().tolist())] for image in sets[name]} == kept
    assert torch.equal(damaged_sets(images, labels, n=300, seed=1)[NOISE[2]], sets[NOISE[2]])  # seeded


# --- the targets, on real MNIST ---


@pytest.fixture(scope="module")
def real_mnist_calibration():
    """Every metric on 5,000 damaged real MNIST train images per set, against the 10,000 test images (~1 min).

    The same call, seed and sizes as the manifest's table; only KID averages 10 subsets instead of 100, to save time.
    """
    if not (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"the real MNIST is not in {SHARED_DATA} (MNIST/raw/t10k-images-idx3-ubyte)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train = torchvision.datasets.MNIST(str(SHARED_DATA), train=True)
    test = torchvision.datasets.MNIST(str(SHARED_DATA), train=False)
    quality = SampleQuality(load_feature_net("mnist"), test.data.unsqueeze(1), kid_subsets=10)
    rows = calibrate(quality, train.data.unsqueeze(1), train.targets, n=5000, seed=0)
    torch.set_num_threads(threads)
    return {row["set"]: row for row in rows}


def test_fid_and_kid_worsen_with_the_strength_of_each_damage(real_mnist_calibration):
    table = real_mnist_calibration
    for damage in (NOISE, BLUR, CLASSES):
        for metric in ("fid", "kid_mean"):
            values = [table[name][metric] for name in [FLOOR, *damage]]
            assert values == sorted(values) and len(set(values)) == len(values), (metric, damage, values)


def test_noise_and_blur_cut_precision(real_mnist_calibration):
    """Precision falls with each step of noise and blur; noise σ0.1 and both blurs take at least 0.2 off the floor."""
    table = real_mnist_calibration
    floor = table[FLOOR]["precision"]
    for damage in (NOISE, BLUR):
        values = [table[name]["precision"] for name in [FLOOR, *damage]]
        assert values == sorted(values, reverse=True), (damage, values)
    for name in ("noise σ0.1", *BLUR):
        assert table[name]["precision"] <= floor - 0.2, name


def test_dropping_classes_cuts_recall_but_not_precision(real_mnist_calibration):
    """Perfect images of fewer classes: precision within 0.1 of the floor, recall at least 0.2 below it."""
    table = real_mnist_calibration
    floor = table[FLOOR]
    assert floor["recall"] > table["only 5 classes"]["recall"] > table["only 1 class"]["recall"]
    for name in CLASSES:
        assert abs(table[name]["precision"] - floor["precision"]) <= 0.1, name
        assert table[name]["recall"] <= floor["recall"] - 0.2, name
    assert table["only 1 class"]["recall"] < 0.3


def test_shipped_mnist_table_is_what_the_code_computes(real_mnist_calibration):
    """The manifest's table was made by this code: every number but KID (fewer subsets here) agrees."""
    stored = {row["set"]: row for row in read_manifest()["mnist"]["calibration"]["sets"]}
    assert list(stored) == list(real_mnist_calibration)
    for name, row in real_mnist_calibration.items():
        for metric in ("fid", "precision", "recall", "density", "prdc_coverage", "coverage", "confidence"):
            assert row[metric] == pytest.approx(stored[name][metric], rel=1e-3, abs=2e-3), (name, metric)


# --- the commands that print and store the table ---


def test_ganlab_eval_calibrate_prints_the_table(data_root, capsys):
    """The real command on the fixture MNIST (64 train images with labels 0-9, 16 test images)."""
    eval_command(["calibrate", "dataset=mnist", f"dataset.root={data_root}", "n=30"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| set | images | " + " | ".join(COLUMNS) + " |"
    rows = [line.split(" | ") for line in lines[2:]]
    assert [row[0].removeprefix("| ") for row in rows] == [FLOOR, *NOISE, *BLUR, *CLASSES]
    assert [int(row[1]) for row in rows] == [30] * 7 + [30, 7]  # 64 images: 32 of classes 0-4, 7 of class 0
    assert float(rows[3][2]) > float(rows[0][2])  # fid of noise σ0.1 above the floor's


def test_calibrate_needs_a_dataset_with_a_feature_net():
    with pytest.raises(ConfigError, match=r"calibrate needs the dataset: add dataset=NAME"):
        eval_command(["calibrate"])
    with pytest.raises(ConfigError, match=r"dataset ring8 is a set of 2-D points, not images"):
        eval_command(["calibrate", "dataset=ring8"])


def test_script_stores_the_table_without_touching_the_net(data_root, tmp_path):
    """`train_feature_net.py --calibrate` on a copy of the shipped nets: the entry gains the table, the net's file and
    its checksum stay as they were (tests/test_metrics.py checks that training a net stores the table too)."""
    nets = tmp_path / "nets"
    shutil.copytree(FEATURE_NETS_DIR, nets)
    before = (nets / "mnist.pt").read_bytes()
    command = [sys.executable, "scripts/train_feature_net.py", "--dataset", "mnist", "--data-root", str(data_root)]
    result = subprocess.run([*command, "--calibrate", "--out-dir", str(nets), "--threads", "1"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    entry = json.loads((nets / MANIFEST).read_text())["mnist"]
    assert (nets / "mnist.pt").read_bytes() == before and entry["sha256"] == sha256_of(before)
    calibration = entry["calibration"]
    assert "--calibrate" in calibration["command"] and calibration["images_per_set"] == 5000
    assert [row["set"] for row in calibration["sets"]] == [FLOOR, *NOISE, *BLUR, *CLASSES]
    assert calibration["sets"][0]["images"] == 64 and "(64 images)" in calibration["damaged"]
    assert set(COLUMNS) <= set(calibration["sets"][0])
    assert result.stdout.startswith("| set | images | fid |")
    load_feature_net("mnist", nets)  # still loads: the checksum matches


def test_plot_script_draws_one_panel_per_net_from_the_manifest(tmp_path):
    """scripts/plot_calibration.py (the README's picture) reads the stored tables: three panels, or the one asked."""
    widths = []
    for nets in (["mnist", "fashion_mnist", "cifar10"], ["mnist"]):
        out = tmp_path / f"{len(nets)}.png"
        result = subprocess.run([sys.executable, "scripts/plot_calibration.py", "--nets", *nets, "--out", str(out)],
                                cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        with Image.open(out) as image:
            widths.append(image.size[0])
    assert widths[0] == pytest.approx(3 * widths[1], rel=0.05)
