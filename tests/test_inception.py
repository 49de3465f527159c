"""`eval.features=inception`: torch-fidelity's InceptionV3 through ganlab's real paths, on weights the tests write.

The real weights cannot be downloaded here, so `inception_weights` saves torch-fidelity's own InceptionV3 module with
seeded random weights, in the layout of the real file: everything from the loading on is the code users run. The
numbers are then those of a random network, which is all that equality with torch-fidelity needs.
"""

import hashlib
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity
from conftest import compose_config, dataset_overrides, ganlab_train
from omegaconf import OmegaConf

from ganlab import inception as inception_module
from ganlab.cli import eval_command, sample_command
from ganlab.config import build
from ganlab.data import ImageSource
from ganlab.inception import EXTRACTOR, Inception, InceptionError, write_random_weights
from ganlab.runfolder import read_summary
from ganlab.scoring import stats_path
from ganlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared; scores must not depend on threads
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's InceptionV3 with seeded random weights, saved as the real weights file is."""
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    write_random_weights(path)
    return path


def scoring(weights: Path, stats_dir: Path, **keys):
    """An `eval` config that scores with Inception on `weights`, caching in `stats_dir`."""
    chosen = {"features": "inception", "inception_weights": str(weights), "stats_dir": str(stats_dir)} | keys
    return OmegaConf.merge(compose_config([]).eval, chosen)


def source_of(data_root, kind: str, *overrides: str) -> ImageSource:
    return build(compose_config(dataset_overrides(kind, data_root) + list(overrides)).dataset, "dataset")


class Images(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as torch-fidelity's `calculate_metrics` takes a Dataset input."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def test_scores_equal_torch_fidelitys_calculate_metrics_and_real_against_real_is_near_0(
    inception_weights, data_root, tmp_path
):
    """FID, KID and IS of ganlab's training evaluator equal torch-fidelity's on the same two image sets, to 1e-3.

    CIFAR-10's default is Inception (eval.features=auto); the reference is its test split here (16 images) to keep
    the test short. The real images scored against themselves give an FID near 0.
    """
    source = source_of(data_root, "cifar10")
    evaluator = source.evaluator(CPU, (0.0, 1.0), scoring(inception_weights, tmp_path, features="auto",
                                                          reference="test"))  # fmt: skip
    real = source.split("test").decode_uint8()
    generated = torch.flip(source.decode_uint8()[:16], dims=[3]) // 2  # mirrored and darker: another set
    scores = evaluator.quality.compute(generated)
    expected = torch_fidelity.calculate_metrics(
        input1=Images(generated), input2=Images(real), cuda=False, fid=True, kid=True, isc=True,
        feature_extractor=EXTRACTOR, feature_extractor_weights_path=str(inception_weights), kid_subset_size=16,
        cache=False, verbose=False, save_cpu_ram=True,
    )  # fmt: skip
    pairs = {"fid": "frechet_inception_distance", "kid_mean": "kernel_inception_distance_mean",
             "kid_std": "kernel_inception_distance_std", "is_mean": "inception_score_mean",
             "is_std": "inception_score_std"}  # fmt: skip
    for ours, theirs in pairs.items():
        assert scores[ours] == pytest.approx(expected[theirs], rel=1e-3), ours
    assert scores["fid"] > 0.1 and scores["is_mean"] > 1
    assert {"precision", "recall", "density", "prdc_coverage"} <= set(scores)
    checksum = hashlib.sha256(inception_weights.read_bytes()).hexdigest()[:8]
    assert evaluator.protocol(16) == {"features": f"{EXTRACTOR}/{checksum}", "samples": 16,
                                      "reference": "cifar10 test", "reference_size": 16}  # fmt: skip
    same = evaluator.quality.compute(real)
    assert abs(same["fid"]) < 1e-3 * scores["fid"]
    assert same["precision"] == same["recall"] == 1.0


def test_reference_statistics_are_cached_and_rebuilt_when_the_split_size_or_count_changes(
    inception_weights, data_root, tmp_path
):
    """One .npz per split, size and extractor, in pytorch-fid's layout: reused as it is, rebuilt when it is stale."""
    extracted = []
    features = Inception.features

    def counting(self, images, *args):
        extracted.append(len(images))
        return features(self, images, *args)

    folder = ["dataset.test_root=" + str(data_root / "folder")]  # both splits: the fixture's 12-image folder

    def build_evaluator(*overrides, **keys):
        source = source_of(data_root, "folder", *folder, *overrides)
        return source.evaluator(CPU, (0.0, 1.0), scoring(inception_weights, tmp_path, **keys))

    with mock.patch.object(Inception, "features", counting):
        build_evaluator(reference="test")
        [cached] = tmp_path.glob("*.npz")
        assert cached.name.startswith("folder-folder-test-32px-rgb-inception-v3-compat-")
        with np.load(cached) as stats:  # what pytorch-fid's --save-stats writes, and reads back
            assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
            assert stats["features"].shape == (12, 2048)
        build_evaluator(reference="test")
        assert extracted == [12]  # the second evaluator read the cache
        build_evaluator(reference="train")
        build_evaluator("dataset.image_size=16", reference="test")
        assert extracted == [12, 12, 12] and len(list(tmp_path.glob("*.npz"))) == 3
        with np.load(cached) as stats:
            np.savez(cached, mu=stats["mu"], sigma=stats["sigma"], features=stats["features"][:5])
        build_evaluator(reference="test")  # 5 images cached, 12 in the split: computed again
        assert extracted == [12, 12, 12, 12]
        with np.load(cached) as stats:
            assert stats["features"].shape == (12, 2048)


def test_stats_are_cached_beside_the_dataset_by_default(inception_weights, data_root):
    """eval.stats_dir=null: in fid_stats/ beside the dataset's files (beside a folder dataset, not inside it)."""
    source = source_of(data_root, "folder")
    path = stats_path(source, None, "train", f"{EXTRACTOR}/0123abcd")
    assert path == data_root / "fid_stats" / f"folder-folder-train-32px-rgb-{EXTRACTOR}-0123abcd.npz"
    assert stats_path(source_of(data_root, "mnist"), None, "test", "x/1").parent == data_root / "fid_stats"


def test_missing_foreign_or_undownloadable_weights_are_one_sentence(inception_weights, tmp_path, monkeypatch):
    with pytest.raises(InceptionError, match=r"eval.inception_weights=.*missing.pth does not exist: download https"):
        Inception.load(str(tmp_path / "missing.pth"), CPU)
    (tmp_path / "foreign.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionError, match=r"foreign.pth is not torch-fidelity's InceptionV3 weights \("):
        Inception.load(str(tmp_path / "foreign.pth"), CPU)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InceptionError, match=r"other.pth is not torch-fidelity's InceptionV3 weights \(.*"):
        Inception.load(str(tmp_path / "other.pth"), CPU)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(inception_module, "weights_url", lambda: (tmp_path / "offline.pth").as_uri())
    with pytest.raises(InceptionError, match=r"could not download its weights from file://.*: download that file"):
        Inception.load(None, CPU)


def test_the_command_line_says_so_in_one_line(tmp_path, data_root):
    """A training run whose Inception weights are missing stops at start-up, before it trains, with exit 2."""
    process = ganlab_train(*dataset_overrides("mnist", data_root), "eval.features=inception",
                           f"eval.inception_weights={tmp_path / 'none.pth'}", "train.steps=2",
                           cwd=tmp_path)  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.strip().count("\n") == 0 and "eval.inception_weights=" in process.stderr
    assert not list(tmp_path.rglob("checkpoint.pt"))


def test_a_run_scored_with_inception_records_its_protocol_everywhere(inception_weights, data_root, tmp_path, capsys):
    """Training, `ganlab-eval RUN` and `ganlab-eval FILE` score with Inception and name the protocol; the file of
    a run's samples gives the run's own FID."""
    keys = ["eval.features=inception", f"eval.inception_weights={inception_weights}", "eval.reference=test",
            f"eval.stats_dir={tmp_path / 'stats'}"]  # fmt: skip
    overrides = dataset_overrides("mnist", data_root) + keys
    run = tmp_path / "run"
    cfg = compose_config(overrides + ["train.steps=2", "eval.times=0", "eval.num_samples=12", "log.progress=false"])
    summary = train(cfg, run)
    protocol = summary["protocol"]
    assert protocol["features"].startswith(f"{EXTRACTOR}/") and protocol["samples"] == 12
    assert (protocol["reference"], protocol["reference_size"]) == ("mnist test", 16)
    assert read_summary(run)["protocol"] == protocol and "is_mean" in summary["metrics"]
    eval_command([str(run), "n=12", *keys])
    from_run = json.loads(capsys.readouterr().out)
    assert from_run["protocol"] == protocol and from_run["fid"] == pytest.approx(summary["metrics"]["fid"], rel=1e-6)
    sample_command([str(run), "n=12", f"out={tmp_path / 'samples.npz'}", "weights=raw"])
    capsys.readouterr()
    eval_command([str(tmp_path / "samples.npz"), *keys])
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["protocol"] == protocol and from_file["fid"] == pytest.approx(from_run["fid"], rel=1e-6)
