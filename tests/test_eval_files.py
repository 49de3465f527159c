"""`ganlab-eval FILE dataset=NAME`: anyone's images, in every accepted file type, value type and layout.

The same 64 fixture images (tests/conftest.py) are written in each format and scored against the fixture MNIST's
test split through the real command; every lossless form must score exactly like the uint8 original. Unreadable
files must give one line on stderr and exit code 2, through the console entry point.
"""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, fixture_train_images
from omegaconf import OmegaConf
from PIL import Image

from ganlab.cli import eval_command
from ganlab.entry import evaluate, sample

IMAGES = fixture_train_images("mnist")  # uint8 (64, 1, 28, 28)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: scores must not depend on the thread count


def score(path, data_root, capsys, *options) -> dict:
    """The scores `ganlab-eval path dataset=mnist dataset.root=<fixture> [options]` prints."""
    eval_command([str(path), "dataset=mnist", f"dataset.root={data_root}", *options])
    return without_protocol(json.loads(capsys.readouterr().out))


def without_protocol(scores: dict) -> dict:
    """The scores alone, once their protocol is checked: the mnist net against the 16 test images of the fixture."""
    protocol = scores.pop("protocol")
    assert protocol["features"].startswith("net:mnist/") and protocol["reference"] == "mnist test"
    assert protocol["reference_size"] == 16 and protocol["samples"] >= 2
    return scores


@pytest.fixture(scope="module")
def expected(data_root, tmp_path_factory) -> dict:
    """The scores of the uint8 (N, C, H, W) original, saved as .npy."""
    path = tmp_path_factory.mktemp("expected") / "images.npy"
    np.save(path, IMAGES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (`one_thread`), which this module-wide fixture is set up before
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        eval_command([str(path), "dataset=mnist", f"dataset.root={data_root}"])
    torch.set_num_threads(threads)
    scores = without_protocol(json.loads(printed.getvalue()))
    assert {"fid", "kid_mean", "precision", "recall", "density", "prdc_coverage", "coverage"} <= set(scores)
    return scores


gray = IMAGES[:, 0]  # (N, H, W)
# every lossless way to store the images: (file name, writer of the file)
LOSSLESS = {
    "npz images, (N, H, W) uint8": ("a.npz", lambda p: np.savez(p, images=gray, labels=np.full(64, -1))),
    "npz only array, (N, H, W, 1) float [0, 1]": ("a.npz", lambda p: np.savez(p, gray[..., None] / 255.0)),
    "npy (N, C, H, W) float32 [-1, 1]": ("a.npy", lambda p: np.save(p, (IMAGES / 127.5 - 1).astype(np.float32))),
    "npy (N, H, W) float16 [0, 1]": ("a.npy", lambda p: np.save(p, (gray / 255).astype(np.float16))),
    "npy (N, H, W) big-endian float32 [0, 1]": ("a.npy", lambda p: np.save(p, (gray / 255).astype(">f4"))),
    "pt tensor (N, C, H, W) uint8": ("a.pt", lambda p: torch.save(torch.from_numpy(IMAGES), p)),
    "pt dict, (N, H, W, 3) float64 [0, 1]": (
        "a.pt", lambda p: torch.save({"images": torch.from_numpy(np.repeat(gray[..., None], 3, -1) / 255.0)}, p)),
    "folder of gray PNGs": ("pngs", lambda p: write_pngs(p, gray)),
}  # fmt: skip


def write_pngs(folder, images, suffix: str = ".png", **options) -> None:
    (folder / "class_a").mkdir(parents=True)  # a subfolder: folders are searched recursively
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "class_a" / f"{i:03d}{suffix}", **options)


@pytest.mark.parametrize("case", LOSSLESS)
def test_every_lossless_form_scores_like_the_uint8_original(case, expected, data_root, tmp_path, capsys):
    """uint8, float [0, 1] and [-1, 1] (float16 to 64), gray or RGB, channels first or last: the same scores.

    Float images map back to the same uint8 values, so the scores are equal; gray repeated to RGB becomes gray
    again with PIL's luma weights, equal to float32 rounding.
    """
    name, write = LOSSLESS[case]
    write(tmp_path / name)
    scores = score(tmp_path / name, data_root, capsys)
    assert scores == expected if "3)" not in case else scores == pytest.approx(expected, rel=1e-4)


def test_a_sample_file_with_a_config_needs_no_dataset_and_is_never_divided_by_255(data_root, tmp_path, capsys):
    """The bug of issue 13: float images in [0, 1] beside a copied `config` entry were divided by 255 (FID 251)."""
    dataset = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "dataset" / "mnist.yaml")) | {"root": str(data_root)}
    config = np.array(json.dumps({"dataset": dataset}))
    np.savez(tmp_path / "uint8.npz", images=IMAGES, config=config)
    np.savez(tmp_path / "float.npz", images=IMAGES / 255.0, config=config)
    eval_command([str(tmp_path / "uint8.npz")])
    from_uint8 = without_protocol(json.loads(capsys.readouterr().out))
    eval_command([str(tmp_path / "float.npz")])
    assert without_protocol(json.loads(capsys.readouterr().out)) == from_uint8
    eval_command([str(tmp_path / "float.npz"), "n=20"])  # the first 20 images only
    first_of_file = without_protocol(json.loads(capsys.readouterr().out))
    np.save(tmp_path / "first.npy", IMAGES[:20])
    assert first_of_file == score(tmp_path / "first.npy", data_root, capsys) != from_uint8


def test_jpeg_folders_and_rgb_pngs_are_read(expected, data_root, tmp_path, capsys):
    """JPEG is lossy, so its scores are near the original's, not equal; RGB PNGs of gray digits score like gray."""
    write_pngs(tmp_path / "jpegs", gray, ".jpg", quality=95)
    jpeg = score(tmp_path / "jpegs", data_root, capsys)
    assert jpeg.keys() == expected.keys() and jpeg["fid"] == pytest.approx(expected["fid"], rel=0.2)
    write_pngs(tmp_path / "rgb", np.repeat(gray[..., None], 3, -1))
    assert score(tmp_path / "rgb", data_root, capsys) == pytest.approx(expected, rel=1e-4)


# each unreadable file: (what to write, a phrase the one-line error must hold)
BAD_FILES = {
    "npz without an image array": ("a.npz", lambda p: np.savez(p, x=gray, y=gray), "arrays x, y and none named images"),
    "npz with no array at all": ("a.npz", lambda p: np.savez(p, weights=np.array("ema")), "holds no image array"),
    "npz with a foreign config": ("a.npz", lambda p: np.savez(p, images=gray, config=np.array("{}")), "not the JSON"),
    "wrong rank": ("a.npy", lambda p: np.save(p, IMAGES[None]), "of rank 5"),
    "NaNs": ("a.npy", lambda p: np.save(p, np.where(gray > 128, np.nan, 0.5)), "some are NaN"),
    "0-255 as float": ("a.npy", lambda p: np.save(p, gray.astype(np.float32)), "fits neither [0, 1] nor [-1, 1]"),
    "int64 pixels": ("a.npy", lambda p: np.save(p, gray.astype(np.int64)), "integer images must be uint8"),
    "four channels": ("a.npy", lambda p: np.save(p, np.zeros((4, 28, 28, 4), np.uint8)), "neither axis 1 nor axis 3"),
    "one image": ("a.npy", lambda p: np.save(p, gray[:1]), "fewer than the 2 images"),
    "not a zip": ("a.npz", lambda p: p.write_bytes(b"not numpy"), "is not a readable .npz file"),
    "pt without images": ("a.pt", lambda p: torch.save({"x": torch.zeros(2)}, p), "the keys x and no images"),
    "text file": ("a.txt", lambda p: p.write_text("x"), "ganlab-eval reads .npz, .npy and .pt files"),
    "empty folder": ("folder", lambda p: p.mkdir(), "holds no .png, .jpg, .jpeg files"),
    "images of two sizes": ("folder", lambda p: write_pngs(p, [gray[0], gray[1, :20]]), "(28x28 in 000.png, 28x20 in"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FILES)
def test_an_unreadable_file_is_one_line_naming_what_it_holds(case, data_root, tmp_path, monkeypatch, capsys):
    name, write, phrase = BAD_FILES[case]
    write(tmp_path / name)
    arguments = [str(tmp_path / name), "dataset=mnist", f"dataset.root={data_root}"]
    monkeypatch.setattr(sys, "argv", ["ganlab-eval", *arguments])
    with pytest.raises(SystemExit) as exited:
        evaluate()
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("ganlab: error: ") and error.count("\n") == 1 and phrase in error, error
    assert str(tmp_path / name) in error


def test_dataset_must_be_named_and_known(data_root, tmp_path):
    """Through the installed console script's code in a real process: no traceback, one line, exit code 2."""
    np.save(tmp_path / "a.npy", IMAGES)
    for options, phrase in (([], "add dataset=NAME"), (["dataset=svhn"], "dataset=svhn is not a dataset of ganlab")):
        process = subprocess.run([sys.executable, "-c", "from ganlab.entry import evaluate; evaluate()",
                                  str(tmp_path / "a.npy"), *options], capture_output=True, text=True)  # fmt: skip
        assert process.returncode == 2 and process.stderr.count("\n") == 1 and phrase in process.stderr


@pytest.mark.parametrize("arguments", [["n=abc"], ["seed=-1"], ["device=gpu"]], ids=["n", "seed", "device"])
def test_bad_options_of_either_command_are_one_line(arguments, tmp_path, monkeypatch, capsys):
    for main, name in ((evaluate, "ganlab-eval"), (sample, "ganlab-sample")):
        monkeypatch.setattr(sys, "argv", [name, str(tmp_path), *arguments])
        with pytest.raises(SystemExit) as exited:
            main()
        error = capsys.readouterr().err
        assert exited.value.code == 2 and error.count("\n") == 1 and arguments[0].split("=")[0] in error, error
