"""Sets of images from anyone's files, for `ganlab-eval FILE`: what is in the file, and uint8 images from it.

Accepted files: `.npz` (the key `images`, or `arr_0` with `arr_1` as labels, or its only array), `.npy`, `.pt` (a
tensor, or a dict with `images`), or a folder of PNG/JPEG files (searched recursively). Accepted values: uint8
(0-255), or float in [0, 1] or [-1, 1]; accepted layouts: (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3.
An .npz or a .pt dict may hold `labels` beside the images: the class each image was asked for, N integers (-1 =
none), which `ganlab-sample` always writes; with them, the images of a class-conditional generator are scored on
their classes too.

The value range is read from the dtype and the values, never assumed from where the file came from: uint8 is
0-255; float whose values all lie in [0, 1] is [0, 1], float with negative values down to -1 is [-1, 1]. So a
float file is never divided by 255, and float values outside both ranges (0-255 stored as float, say) are an
error. The one ambiguous case, [-1, 1] images without a single negative value, needs a whole set without a pixel
darker than mid-gray. Anything unreadable is a `DataError` of one sentence naming what the file holds.
"""

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ganlab.data import to_uint8
from ganlab.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
METADATA_KEYS = ("config", "weights", "labels")  # what `ganlab-sample` stores beside its images: not image arrays
RANGE_SLACK = 1e-3  # float values this far past 0, 1 or -1 still count as in range (rounding in a generator's output)
EXPECTED = (
    "ganlab-eval expects images shaped (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3 and N >= 2, as uint8 "
    "or as float in [0, 1] or [-1, 1]"
)


@dataclass
class SampleFile:
    """What a samples file holds: its array, the key it was under, and the ganlab config stored with it, if any.

    key: `images`, `points` (a `ganlab-sample` file of a 2-D toy dataset), another .npz key, or "" for a whole file.
    labels: the class each image (or point) was asked for, int64 (N,), -1 where none was; None if the file has none.
    """

    array: np.ndarray | Tensor
    key: str
    config: dict | None = None
    labels: np.ndarray | None = None


def open_samples(path: Path) -> SampleFile:
    """The array in `path` (.npz, .npy, .pt or a folder of PNG/JPEG files); see the module docstring."""
    if path.is_dir():
        return SampleFile(read_folder(path), "")
    if not path.is_file():
        raise DataError(f"{path} does not exist: pass a run dir, a .npz, .npy or .pt file, or a folder of images.")
    reader = {".npz": read_npz, ".npy": read_npy, ".pt": read_pt}.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path} is a {path.suffix or 'suffix-less'} file: ganlab-eval reads .npz, .npy and .pt files, "
            f"folders of PNG/JPEG images, and run dirs."
        )
    return reader(path)


def read_npz(path: Path) -> SampleFile:
    """The `images` array of an .npz (or `points`, or its only array) and its `config` and `labels` entries, if any."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path} is not a readable .npz file ({_why(error)}): write it with numpy.savez.") from None
    config = _config(path, arrays.pop("config", None))
    candidates = [key for key in arrays if key not in METADATA_KEYS]
    if "images" in arrays or "points" in arrays:
        key = "images" if "images" in arrays else "points"
    elif "arr_0" in arrays and set(candidates) <= {"arr_0", "arr_1"}:
        key = "arr_0"  # numpy.savez(path, images, labels): the layout guided-diffusion's evaluator reads
    elif len(candidates) == 1:
        key = candidates[0]
    else:
        found = f"the arrays {', '.join(candidates)} and none named images" if candidates else "no image array"
        raise DataError(
            f"{path} holds {found}: save the images as its only array, or under the key images "
            f"(numpy.savez(path, images=...))."
        )
    labels = arrays.get("labels", arrays.get("arr_1") if key == "arr_0" else None)
    return SampleFile(arrays[key], key, config, _labels(path, labels, arrays[key]))


def _config(path: Path, entry: np.ndarray | None) -> dict | None:
    """The ganlab config `ganlab-sample` stores as a JSON string, or None if the file has none."""
    if entry is None:
        return None
    try:
        config = json.loads(str(entry))
        if not isinstance(config, dict) or not isinstance(config.get("dataset"), dict):
            raise ValueError("it has no dataset section")
        return config
    except ValueError as error:
        raise DataError(
            f"{path} has a config entry that is not the JSON of a ganlab config ({_why(error)}): remove that entry "
            f"and name the dataset with dataset=NAME."
        ) from None


def _labels(path: Path, entry, images: np.ndarray | Tensor) -> np.ndarray | None:
    """The `labels` entry as int64 (N,), checked against the N images beside it; None if the file has none."""
    if entry is None:
        return None
    labels = np.asarray(entry.cpu() if isinstance(entry, Tensor) else entry)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path} has labels of {labels.dtype} values shaped {labels.shape}: save one integer class per image "
            f"(-1 for an image asked for no class) under the key labels."
        )
    if labels.size and labels.min() < -1:
        raise DataError(
            f"{path} has the label {labels.min()}: a label is a class index from 0, or -1 for an image asked for "
            f"no class."
        )
    if images.ndim >= 1 and len(labels) != len(images):
        raise DataError(
            f"{path} has {len(labels)} labels for {len(images)} images: save one label per image (-1 for none)."
        )
    return labels.astype(np.int64)


def read_npy(path: Path) -> SampleFile:
    try:
        return SampleFile(np.load(path, allow_pickle=False), "")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npy file ({_why(error)}): write it with numpy.save.") from None


def read_pt(path: Path) -> SampleFile:
    """A tensor saved with torch.save, or the `images` (and `labels`) of a saved dict; loaded with weights_only=True."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise DataError(
            f"{path} is not a .pt file that loads with torch.load(weights_only=True) ({_why(error)}): save a tensor "
            f"(or a dict with an images tensor) with torch.save."
        ) from None
    labels = None
    if isinstance(content, dict) and "images" in content:
        content, labels = content["images"], content.get("labels")
    elif isinstance(content, dict):
        raise DataError(
            f"{path} holds a dict with the keys {', '.join(map(str, content)) or 'none'} and no images: save the "
            f"images tensor itself, or a dict with the key images."
        )
    if not isinstance(content, Tensor):
        raise DataError(f"{path} holds a {type(content).__name__}, not a tensor: save the images as a tensor.")
    return SampleFile(content, "images", labels=_labels(path, labels, content))


def read_folder(folder: Path) -> np.ndarray:
    """All PNG/JPEG files under `folder` (in name order) as uint8 (N, H, W, C): gray if every one is, else RGB."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"{folder} holds no {', '.join(IMAGE_SUFFIXES)} files and no config.yaml: pass a folder of images "
            f"or a run dir."
        )
    try:  # one file open at a time: a folder of 10,000 samples would exceed the open-file limit
        arrays = []
        for file in files:
            with Image.open(file) as image:
                gray = image.mode in ("1", "L", "LA")
                arrays.append(np.asarray(image.convert("L" if gray else "RGB")))
        mode = "L" if all(array.ndim == 2 for array in arrays) else "RGB"
        if mode == "RGB":  # a mixed folder: the gray ones become RGB too
            arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"an image under {folder} cannot be read ({_why(error)}): remove or replace it.") from None
    sizes = {array.shape[:2]: file for array, file in zip(arrays, files, strict=True)}
    if len(sizes) > 1:
        (first, a), (second, b) = list(sizes.items())[:2]
        raise DataError(
            f"{folder} holds images of different sizes ({first[1]}x{first[0]} in {a.name}, {second[1]}x{second[0]} in "
            f"{b.name}): resize them to one size."
        )
    stacked = np.stack(arrays)
    return stacked[..., None] if mode == "L" else stacked


def to_uint8_images(array: np.ndarray | Tensor, where: str) -> Tensor:
    """uint8 (N, C, H, W) images from an array of any accepted value type and layout; `where` names it in errors."""
    found = f"{where} holds {_dtype(array)} values shaped {tuple(array.shape)}"
    if not isinstance(array, Tensor) and array.dtype.kind not in "uif":  # strings, objects, booleans, complex
        raise DataError(f"{found}: {EXPECTED}.")
    if not isinstance(array, Tensor) and not array.dtype.isnative:  # e.g. a big-endian .npy: torch takes native only
        array = array.astype(array.dtype.newbyteorder("="))
    images = torch.as_tensor(array)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() != 4:
        raise DataError(f"{found}, of rank {images.dim()}: {EXPECTED}.")
    elif images.shape[1] not in (1, 3):
        if images.shape[3] not in (1, 3):
            raise DataError(f"{found}, and neither axis 1 nor axis 3 has 1 or 3 channels: {EXPECTED}.")
        images = images.permute(0, 3, 1, 2)
    if len(images) < 2:
        raise DataError(f"{found}, fewer than the 2 images the metrics need: {EXPECTED}.")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise DataError(
            f"{found}: integer images must be uint8 (0-255); convert them (numpy: .astype(numpy.uint8)), or save "
            f"floats in [0, 1] or [-1, 1]."
        )
    images = images.float()
    if not torch.isfinite(images).all():
        bad = "NaN" if torch.isnan(images).any() else "infinite"
        raise DataError(f"{found}, and some are {bad}: {EXPECTED}, all finite.")
    low, high = images.min().item(), images.max().item()
    if low >= -RANGE_SLACK and high <= 1 + RANGE_SLACK:
        return to_uint8(images, (0.0, 1.0))
    if low >= -1 - RANGE_SLACK and high <= 1 + RANGE_SLACK:
        return to_uint8(images, (-1.0, 1.0))
    raise DataError(
        f"{found}, from {low:g} to {high:g}, which fits neither [0, 1] nor [-1, 1]: scale float images to one of "
        f"those, or save 0-255 values as uint8."
    )


def _dtype(array: np.ndarray | Tensor) -> str:
    return str(array.dtype).removeprefix("torch.")


def _why(error: Exception) -> str:
    detail = " ".join(str(error).split())
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
