"""Class-conditional sample metrics (issue 14): accuracy, accuracy_min and intra-FID of images asked for a class,
and accuracy of 2-D points asked for a mode.

The proof that the metrics measure conditioning runs on the real MNIST (../shared/data, skipped when absent): real
test digits with their true labels score like a perfect conditional generator, the same digits with shuffled labels
like one that ignores its label. The rest needs nothing but the package: the unconditional scores unchanged, the
command line on the tiny fixture MNIST (tests/conftest.py) in a real process, and the toy mixtures.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import compose_config, fixture_train_images
from omegaconf import OmegaConf

from ganlab.cli import eval_command
from ganlab.config import build
from ganlab.entry import evaluate
from ganlab.features import load_feature_net, prepare_images
from ganlab.metrics import SampleQuality
from ganlab.report import higher_is_better, shown_metrics

FAST = {"kid_subsets": 10}  # KID subsets per compute: 10 instead of 100 keeps each compute well under a second
CLASS_KEYS = {"accuracy", "accuracy_min", "intra_fid"}
IMAGES = fixture_train_images("mnist")  # uint8 (64, 1, 28, 28), noise; the fixture's test split has label i % 10
LABELS = np.arange(len(IMAGES)) % 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: scores must not depend on the thread count


def noise_images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- SampleQuality ---


def test_real_digits_score_high_with_their_labels_and_at_chance_with_shuffled_ones(mnist_net, real_mnist_test):
    """Test digits 0-1999 as the "samples" of a perfect conditional generator, scored against digits 2000-4999.

    With their true labels the net agrees with 99% of them, and each class's images match that class's reference
    images (intra-FID near the overall FID). Shuffled, the labels say nothing about the images: accuracy falls to
    chance (1/10) and every class's images are a mix of all digits, far from the class asked for. The unconditional
    scores are the same either way: they never see the labels.
    """
    images, labels = real_mnist_test
    quality = SampleQuality(mnist_net, images[2000:5000], reference_labels=labels[2000:5000], **FAST)
    true = quality.compute(images[:2000], labels[:2000])
    shuffle = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    shuffled = quality.compute(images[:2000], labels[:2000][shuffle])
    assert true["accuracy"] >= 0.95 and true["accuracy_min"] >= 0.9
    assert true["intra_fid"] < 5
    assert 0.05 <= shuffled["accuracy"] <= 0.2
    assert shuffled["intra_fid"] > 20 * true["intra_fid"]
    assert {k: v for k, v in true.items() if k not in CLASS_KEYS} == {
        k: v for k, v in shuffled.items() if k not in CLASS_KEYS
    }


def test_accuracy_is_the_mean_of_the_per_class_shares_the_net_gets_right(mnist_net):
    """Checked against the net's own predictions: every class weighs the same, however many images asked for it."""
    generated = noise_images(90, seed=1)
    labels = torch.tensor([0] * 60 + [1] * 20 + [2] * 10)
    quality = SampleQuality(mnist_net, noise_images(30, seed=2), reference_labels=torch.arange(30) % 3, **FAST)
    predicted = mnist_net(prepare_images(generated, mnist_net.input_shape)).argmax(1)
    shares = [float((predicted[labels == k] == k).double().mean()) for k in range(3)]
    scores = quality.compute(generated, labels)
    assert scores["accuracy"] == pytest.approx(sum(shares) / 3, abs=1e-12)
    assert scores["accuracy_min"] == pytest.approx(min(shares), abs=1e-12)


def test_without_labels_the_scores_are_exactly_the_unconditional_ones(mnist_net):
    """No labels, or all -1 (what an unconditional run writes), give the old keys and values, reference labels or not;
    images asked for no class (-1) count in the overall scores only, not in the class metrics."""
    reference, generated = noise_images(60, seed=3), noise_images(40, seed=4)
    plain = SampleQuality(mnist_net, reference, **FAST).compute(generated)
    assert not CLASS_KEYS & set(plain)
    quality = SampleQuality(mnist_net, reference, reference_labels=torch.arange(60) % 3, **FAST)
    assert quality.compute(generated) == plain
    assert quality.compute(generated, torch.full((40,), -1)) == plain
    assert SampleQuality(mnist_net, reference, **FAST).compute(generated, torch.arange(40) % 3) == plain
    half = torch.arange(40) % 3
    half[20:] = -1
    mixed = quality.compute(generated, half)
    assert {k: v for k, v in mixed.items() if k not in CLASS_KEYS} == plain
    first = quality.compute(generated[:20], half[:20])
    assert {k: mixed[k] for k in CLASS_KEYS} == pytest.approx({k: first[k] for k in CLASS_KEYS}, rel=1e-5)


def test_the_net_still_runs_once_per_batch_and_small_classes_are_left_out_of_intra_fid(mnist_net):
    """The class metrics reuse compute's embedding pass; a class asked for once has no covariance, so no FID."""
    quality = SampleQuality(mnist_net, noise_images(60, seed=5), batch_size=20, reference_labels=torch.arange(60) % 3)
    calls = []
    hook = mnist_net.body.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    try:
        lone = quality.compute(noise_images(50, seed=6), torch.tensor([0] * 49 + [1]))
    finally:
        hook.remove()
    assert calls == [20, 20, 10]
    only_zeros = quality.compute(noise_images(50, seed=6)[:49], torch.zeros(49, dtype=torch.long))
    assert lone["intra_fid"] == pytest.approx(only_zeros["intra_fid"], rel=1e-5)
    assert math.isnan(quality.compute(noise_images(2, seed=7), torch.tensor([0, 1]))["intra_fid"])


def test_bad_labels_are_refused_with_one_sentence(mnist_net):
    quality = SampleQuality(mnist_net, noise_images(30, seed=8), reference_labels=torch.arange(30) % 3, **FAST)
    generated = noise_images(10, seed=9)
    for labels, phrase in (
        (torch.zeros(9, dtype=torch.long), r"one integer class per generated image \(10\)"),
        (torch.zeros(10), "got torch.float32 values"),
        (torch.full((10,), 3), r"the classes \[3\], which no reference image has"),
    ):
        with pytest.raises(ValueError, match=phrase) as caught:
            quality.compute(generated, labels)
        assert "\n" not in str(caught.value)


# --- ganlab-eval FILE with labels, on the fixture MNIST ---


def run_eval(*arguments) -> subprocess.CompletedProcess:
    """`ganlab-eval` through its console entry point, in a real process on one thread."""
    return subprocess.run([sys.executable, "-c", "from ganlab.entry import evaluate; evaluate()", *map(str, arguments)],
                          capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip


def test_ganlab_eval_scores_a_file_with_labels_on_its_classes(data_root, tmp_path, capsys):
    """A `ganlab-sample`-style .npz of a conditional run: the class metrics come out beside the others, and
    accuracy is what the shipped net says about each class's images. The -1 labels of an unconditional run give
    the unconditional scores, and the training evaluator (`ImageSource.evaluator`) scores like the command."""
    np.savez(tmp_path / "labelled.npz", images=IMAGES, labels=LABELS)
    np.savez(tmp_path / "unconditional.npz", images=IMAGES, labels=np.full(len(IMAGES), -1))
    process = run_eval(tmp_path / "labelled.npz", "dataset=mnist", f"dataset.root={data_root}")
    assert process.returncode == 0, process.stderr
    scores = json.loads(process.stdout)
    assert scores.pop("protocol")["samples"] == len(IMAGES)
    net = load_feature_net("mnist")
    predicted = net(prepare_images(torch.from_numpy(IMAGES), net.input_shape)).argmax(1).numpy()
    shares = [(predicted[LABELS == k] == k).mean() for k in range(10)]
    assert scores["accuracy"] == pytest.approx(np.mean(shares), abs=1e-9)
    assert scores["accuracy_min"] == pytest.approx(min(shares), abs=1e-9)
    assert math.isfinite(scores["intra_fid"]) and scores["intra_fid"] > 0
    eval_command([str(tmp_path / "unconditional.npz"), "dataset=mnist", f"dataset.root={data_root}"])
    unconditional = json.loads(capsys.readouterr().out)
    unconditional.pop("protocol")
    assert unconditional == pytest.approx({k: v for k, v in scores.items() if k not in CLASS_KEYS}, rel=1e-6)
    source = build(compose_config(["dataset=mnist", f"dataset.root={data_root}"]).dataset, "dataset")
    evaluator = source.evaluator(torch.device("cpu"), (-1.0, 1.0))
    generator_output = torch.from_numpy(IMAGES).float() / 127.5 - 1  # what a tanh generator draws
    assert evaluator(generator_output, torch.from_numpy(LABELS)) == pytest.approx(scores, rel=1e-6)
    assert evaluator(generator_output) == pytest.approx(unconditional, rel=1e-6)


def test_labels_are_trimmed_with_the_images_and_read_from_pt_dicts(data_root, tmp_path, capsys):
    def score(path, *options):
        eval_command([str(path), "dataset=mnist", f"dataset.root={data_root}", *options])
        scores = json.loads(capsys.readouterr().out)
        scores.pop("protocol")
        return scores

    np.savez(tmp_path / "all.npz", images=IMAGES, labels=LABELS)
    np.savez(tmp_path / "first.npz", images=IMAGES[:30], labels=LABELS[:30])
    torch.save({"images": torch.from_numpy(IMAGES), "labels": torch.from_numpy(LABELS)}, tmp_path / "all.pt")
    assert score(tmp_path / "all.npz", "n=30") == score(tmp_path / "first.npz")
    assert score(tmp_path / "all.pt") == score(tmp_path / "all.npz")


def test_a_labels_array_of_the_wrong_length_is_one_line_and_a_nonzero_exit(data_root, tmp_path):
    np.savez(tmp_path / "short.npz", images=IMAGES, labels=LABELS[:3])
    process = run_eval(tmp_path / "short.npz", "dataset=mnist", f"dataset.root={data_root}")
    assert process.returncode != 0 and process.stdout == ""
    assert process.stderr.startswith("ganlab: error: ") and process.stderr.count("\n") == 1, process.stderr
    assert f"{tmp_path / 'short.npz'} has 3 labels for 64 images" in process.stderr


# each file whose labels cannot be used: (labels, a phrase the one-line error must hold)
BAD_LABELS = {
    "a class the test split lacks": (np.where(LABELS == 3, 10, LABELS), "the labels 10, which are not classes of"),
    "below -1": (np.full(64, -2), "has the label -2: a label is a class index from 0"),
    "float": (LABELS.astype(np.float32), "labels of float32 values"),
    "two-dimensional": (LABELS.reshape(8, 8), "shaped (8, 8)"),
}


@pytest.mark.parametrize("case", BAD_LABELS)
def test_unusable_labels_are_one_line_naming_the_file(case, data_root, tmp_path, monkeypatch, capsys):
    labels, phrase = BAD_LABELS[case]
    np.savez(tmp_path / "a.npz", images=IMAGES, labels=labels)
    monkeypatch.setattr(sys, "argv", ["ganlab-eval", str(tmp_path / "a.npz"), "dataset=mnist",
                                      f"dataset.root={data_root}"])  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        evaluate()
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.count("\n") == 1 and phrase in error, error
    assert str(tmp_path / "a.npz") in error


# --- the toy mixtures ---


def test_ring8_points_at_the_mode_asked_for_are_accurate_and_one_mode_off_are_not():
    """Each point drawn at its own mode: accuracy 1; the labels rotated by one mode: every point is at a mode, but
    the wrong one, so accuracy 0 while the unconditional mode metrics stay perfect."""
    source = build(compose_config(["dataset=ring8"]).dataset, "dataset")
    evaluator = source.evaluator(torch.device("cpu"), (-1.0, 1.0))
    torch.manual_seed(0)
    labels = torch.arange(800) % 8
    points = source.centers[labels] + 0.5 * source.std * torch.randn(800, 2)  # all well within 3 std
    samples = source.to_range(points, (-1.0, 1.0))
    right = evaluator(samples, labels)
    assert right == {"modes_covered": 8, "high_quality": 1.0, "accuracy": 1.0, "accuracy_min": 1.0}
    wrong = evaluator(samples, (labels + 1) % 8)
    assert wrong == {"modes_covered": 8, "high_quality": 1.0, "accuracy": 0.0, "accuracy_min": 0.0}
    assert evaluator(samples) == evaluator(samples, torch.full((800,), -1)) == {"modes_covered": 8, "high_quality": 1.0}
    one_wrong = labels.clone()
    one_wrong[labels == 5] = torch.tensor([5, 6] * 50)  # half of mode 5's points are asked for mode 6
    assert evaluator(samples, one_wrong)["accuracy_min"] == pytest.approx(100 / 150)
    off = source.to_range(points + 5 * source.std * torch.tensor([1.0, 0.0]), (-1.0, 1.0))  # nearest right, too far
    assert evaluator(off, labels)["accuracy"] == 0.0
    with pytest.raises(ValueError, match="but dataset ring8 has the modes 0 to 7"):
        evaluator(samples, labels + 1)


def test_ganlab_eval_scores_a_file_of_points_with_labels(tmp_path, capsys):
    """A `ganlab-sample` file of a conditional toy run: its points and labels, and the config it records."""
    cfg = compose_config(["dataset=ring8", "model=mlp"])
    source = build(cfg.dataset, "dataset")
    labels = np.arange(160) % 8
    config = np.array(json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    np.savez(tmp_path / "points.npz", points=source.centers[labels].numpy(), labels=labels, config=config)
    np.savez(tmp_path / "rotated.npz", points=source.centers[labels].numpy(), labels=(labels + 1) % 8, config=config)
    eval_command([str(tmp_path / "points.npz")])
    scores = json.loads(capsys.readouterr().out)
    assert scores.pop("protocol")["features"] == "modes"
    assert scores == {"accuracy": 1.0, "accuracy_min": 1.0, "high_quality": 1.0, "modes_covered": 8}
    eval_command([str(tmp_path / "rotated.npz")])
    assert json.loads(capsys.readouterr().out)["accuracy"] == 0.0


# --- the report ---


def test_the_report_ranks_accuracy_highest_first_and_shows_it_beside_the_objective():
    assert higher_is_better("accuracy") and higher_is_better("accuracy_min_ema")
    names = ["fid", "fid_ema", "accuracy", "accuracy_ema", "precision_ema"]
    assert shown_metrics("fid_ema", names) == ["fid_ema", "precision_ema", "accuracy_ema"]
