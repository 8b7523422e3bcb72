"""Image datasets for the benchmark.

Every dataset is an :class:`ImageSet`: ``get(indices)`` returns float32 images in ``[0, 1]`` with shape
``[B, C, H, W]`` and int64 labels with shape ``[B]``.

Datasets
--------
``sample``       offline, 32 RGB 3x32x32 patches cut from 8 photos that ship with scikit-image.
``sample_gray``  offline, the 200 1x28x28 images of ``skimage.data.lfw_subset()`` (faces / non-faces).
``cifar10``      torchvision CIFAR-10 (3x32x32), read lazily.
``mnist``        torchvision MNIST (1x28x28), read lazily.
``folder``       every image file in one directory, resized and centre-cropped, all with one label.

Binary labels (``num_classes=2``) follow the R-GAP reference code: CIFAR-10 airplane, automobile, ship,
truck -> 0 and the six animal classes -> 1; MNIST digits 0, 1, 8, 9 -> 0 and 2-7 -> 1.
"""

from __future__ import annotations

import abc
import functools
import operator
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rgap.core.config import instantiate_group
from rgap.core.errors import DatasetNotFoundError, UserInputError, short_error

__all__ = [
    "CIFAR10_BINARY_ZERO",
    "IMAGE_EXTENSIONS",
    "MNIST_BINARY_ZERO",
    "SAMPLE_PHOTOS",
    "ImageSet",
    "TensorImageSet",
    "TorchvisionImageSet",
    "build_dataset",
    "load_cifar10",
    "load_folder",
    "load_mnist",
    "load_sample",
    "load_sample_gray",
    "select_indices",
]

# CIFAR-10 classes airplane(0), automobile(1), ship(8), truck(9) -> binary label 0, the rest -> 1.
CIFAR10_BINARY_ZERO = frozenset({0, 1, 8, 9})
# MNIST digits 0, 1, 8, 9 -> binary label 0, the rest -> 1.
MNIST_BINARY_ZERO = frozenset({0, 1, 8, 9})

# (skimage.data loader name, binary label). 0 = machine / non-living object or scene, 1 = living
# (person, animal, tissue). Multi-class label = position in this tuple.
SAMPLE_PHOTOS: tuple[tuple[str, int], ...] = (
    ("astronaut", 1),
    ("chelsea", 1),
    ("coffee", 0),
    ("rocket", 0),
    ("motorcycle", 0),
    ("hubble_deep_field", 0),
    ("retina", 1),
    ("immunohistochemistry", 1),
)
SAMPLE_BINARY_CLASS_NAMES = ("non-living", "living")
SAMPLE_GRAY_CLASS_NAMES = ("non-face", "face")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------------
# ImageSet classes
# --------------------------------------------------------------------------------------------------------
class ImageSet(abc.ABC):
    """A labelled image dataset with random access by index."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W)

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abc.abstractmethod
    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images, labels)``: float32 ``[B, C, H, W]`` in ``[0, 1]`` and int64 ``[B]``."""

    def sources(self, indices: Sequence[int]) -> list[str]:
        """Where each image comes from (file name, photo and quadrant, split and index), for the row."""
        return [f"{self.name}[{i}]" for i in self._check_indices(indices)]

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        """Validate ``indices`` against ``len(self)``; raises :class:`UserInputError` if one is bad."""
        if isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        n = len(self)
        out: list[int] = []
        for raw in indices:
            try:
                i = operator.index(raw)
            except TypeError:
                raise UserInputError(
                    f"Image index {raw!r} for dataset '{self.name}' is not an integer; "
                    f"valid indices are 0..{n - 1}."
                ) from None
            if not 0 <= i < n:
                raise UserInputError(
                    f"Image index {i} is out of range for dataset '{self.name}' with {n} images; "
                    f"valid indices are 0..{n - 1}."
                )
            out.append(i)
        return out

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (
            f"{type(self).__name__}(name={self.name!r}, len={len(self)}, shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes})"
        )


class TensorImageSet(ImageSet):
    """An :class:`ImageSet` backed by in-memory tensors."""

    def __init__(
        self, name: str, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
        sources: Sequence[str] | None = None,
    ) -> None:
        """``images``: float ``[N, C, H, W]`` in ``[0, 1]``; ``labels``: integer ``[N]`` in
        ``[0, len(class_names))``; ``sources``: one description per image (default ``name[i]``)."""
        if images.ndim != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        class_names = tuple(str(c) for c in class_names)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
            raise ValueError(f"labels must lie in [0, {len(class_names)}), got {labels.unique().tolist()}")
        self.name = name
        self.images = images.detach().to(torch.float32).contiguous()
        self.labels = labels.detach().to(torch.int64).contiguous()
        self.class_names = class_names
        self.num_classes = len(class_names)
        if sources is not None and len(sources) != images.shape[0]:
            raise ValueError(f"sources must have {images.shape[0]} entries, got {len(sources)}")
        self._sources = None if sources is None else tuple(str(v) for v in sources)
        c, h, w = self.images.shape[1:]
        self.shape = (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sources(self, indices: Sequence[int]) -> list[str]:
        if self._sources is None:
            return super().sources(indices)
        return [self._sources[i] for i in self._check_indices(indices)]

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return copies of the selected images and labels."""
        idx = torch.tensor(self._check_indices(indices), dtype=torch.int64)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


class TorchvisionImageSet(ImageSet):
    """An :class:`ImageSet` that wraps a torchvision dataset returning ``(PIL image, int target)``.

    Images are converted with ``ToTensor`` only for the requested indices, so the set is never held
    as one big tensor. ``label_map[target]`` gives the label (identity when ``label_map`` is None).
    """

    def __init__(
        self,
        name: str,
        dataset: Any,
        class_names: Sequence[str],
        shape: tuple[int, int, int],
        label_map: Sequence[int] | None = None,
    ) -> None:
        from torchvision.transforms import ToTensor

        self.name = name
        self.dataset = dataset
        self.class_names = tuple(str(c) for c in class_names)
        self.num_classes = len(self.class_names)
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.label_map = None if label_map is None else tuple(int(v) for v in label_map)
        self.split = "train" if getattr(dataset, "train", True) else "test"
        self._to_tensor = ToTensor()

    def sources(self, indices: Sequence[int]) -> list[str]:
        return [f"{self.name}-{self.split}[{i}]" for i in self._check_indices(indices)]

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Read, convert and stack the selected images."""
        idx = self._check_indices(indices)
        images = torch.empty((len(idx), *self.shape), dtype=torch.float32)
        labels = torch.empty(len(idx), dtype=torch.int64)
        for k, i in enumerate(idx):
            pil, target = self.dataset[i]
            img = self._to_tensor(pil)
            if tuple(img.shape) != self.shape:
                raise UserInputError(
                    f"Image {i} of dataset '{self.name}' has shape {tuple(img.shape)}, expected "
                    f"{self.shape}; the dataset files look corrupted."
                )
            images[k] = img
            target = int(target)
            labels[k] = target if self.label_map is None else self.label_map[target]
        return images, labels


# --------------------------------------------------------------------------------------------------------
# Offline sample sets built from scikit-image data
# --------------------------------------------------------------------------------------------------------
def _load_skimage_photo(name: str) -> np.ndarray:
    """Load one photo from ``skimage.data`` as uint8 HxWx3."""
    import skimage.data

    try:
        img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    except Exception as exc:  # scikit-image raises several types for missing optional data files
        raise DatasetNotFoundError(
            f"The offline 'sample' dataset needs the photo skimage.data.{name}(), which could not be loaded "
            f"({type(exc).__name__}: {exc}). Reinstall scikit-image (>=0.22) so that its bundled data files "
            f"are present, or use dataset=sample_gray, dataset=cifar10 or dataset=folder instead."
        ) from exc
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _photo_patches(img: np.ndarray, short: int = 64, patch: int = 32) -> list[np.ndarray]:
    """Resize so the short side is ``short`` (PIL bicubic, anti-aliased), centre-crop ``short x short``
    and split it into its four ``patch x patch`` quadrants (row-major order)."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = short / min(h, w)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - short) // 2, (nw - short) // 2
    square = resized[top : top + short, left : left + short]
    return [
        square[r : r + patch, c : c + patch]
        for r in range(0, short - patch + 1, patch)
        for c in range(0, short - patch + 1, patch)
    ]


@functools.lru_cache(maxsize=4)
def _sample_tensors(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Build (and cache) the ``sample`` images ``[32, 3, size, size]`` and their photo indices ``[32]``."""
    images: list[np.ndarray] = []
    photo: list[int] = []
    for p, (name, _) in enumerate(SAMPLE_PHOTOS):
        for crop in _photo_patches(_load_skimage_photo(name), short=2 * size, patch=size):
            images.append(crop)
            photo.append(p)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return x.contiguous(), torch.tensor(photo, dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def _sample_gray_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Build (and cache) the ``sample_gray`` images ``[200, 1, 28, 28]`` and labels (face=1)."""
    import skimage.data

    raw = np.asarray(skimage.data.lfw_subset(), dtype=np.float32)  # [200, 25, 25] in [0, 1]
    x = torch.from_numpy(raw).unsqueeze(1)
    x = torch.nn.functional.interpolate(
        x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True
    )
    x = x.clamp_(0.0, 1.0).contiguous()
    n = x.shape[0]
    labels = torch.zeros(n, dtype=torch.int64)
    labels[: n // 2] = 1  # the first half are faces (label 1), the second half non-faces (label 0)
    return x, labels


def load_sample(num_classes: int = 2, size: int = 32) -> ImageSet:
    """Offline RGB set: 32 images 3 x size x size, the four quadrants of the central (2 size) square of
    each of the 8 :data:`SAMPLE_PHOTOS` (resized so the short side is 2 size). ``size=32`` (the default)
    gives the historical 3x32x32 set; larger sizes cut the same quadrants at a higher resolution.

    ``num_classes=2``: 0 = non-living (coffee, rocket, motorcycle, hubble_deep_field), 1 = living
    (astronaut, chelsea, retina, immunohistochemistry). ``num_classes=8``: label = photo index.
    """
    n_photos = len(SAMPLE_PHOTOS)
    if num_classes not in (2, n_photos):
        raise UserInputError(
            f"dataset 'sample' supports num_classes=2 (non-living/living) or num_classes={n_photos} "
            f"(one class per source photo), got num_classes={num_classes}."
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserInputError(f"dataset 'sample' needs a positive integer image size, got size={size!r}.")
    images, photo = _sample_tensors(size)
    quadrants = ("top-left", "top-right", "bottom-left", "bottom-right")
    sources = [f"{SAMPLE_PHOTOS[int(p)][0]} {quadrants[i % 4]}" for i, p in enumerate(photo)]
    if num_classes == 2:
        binary = torch.tensor([label for _, label in SAMPLE_PHOTOS], dtype=torch.int64)
        return TensorImageSet("sample", images, binary[photo], SAMPLE_BINARY_CLASS_NAMES, sources)
    return TensorImageSet("sample", images, photo, tuple(name for name, _ in SAMPLE_PHOTOS), sources)


def load_sample_gray(num_classes: int = 2) -> ImageSet:
    """Offline grayscale set: the 200 images of ``skimage.data.lfw_subset()`` resized from 25x25 to
    1x28x28 (bilinear). Label 1 = face (images 0-99), 0 = non-face (images 100-199)."""
    if num_classes != 2:
        raise UserInputError(
            f"dataset 'sample_gray' has exactly 2 classes (face / non-face), so num_classes must be 2, "
            f"got num_classes={num_classes}."
        )
    images, labels = _sample_gray_tensors()
    sources = [f"lfw_subset[{i}]" for i in range(images.shape[0])]
    return TensorImageSet("sample_gray", images, labels, SAMPLE_GRAY_CLASS_NAMES, sources)


# --------------------------------------------------------------------------------------------------------
# torchvision datasets
# --------------------------------------------------------------------------------------------------------
def _not_found_message(
    title: str, data_dir: str, download: bool, exc: BaseException, files: str, offline: str
) -> str:
    if download:
        what = (
            f"{title} could not be loaded from {data_dir}: dataset.download=true but the download failed "
            f"({short_error(exc)})."
        )
    else:
        # torchvision's own "Dataset not found ... use download=True" adds nothing; other errors
        # (e.g. a truncated pickle) are worth showing.
        detail = "" if str(exc).startswith("Dataset not found") else f"; {short_error(exc)}"
        what = (
            f"{title} was not found (or is incomplete/corrupted) in {data_dir} and download is off "
            f"(dataset.download=false{detail})."
        )
    return (
        f"{what} To fix it, run with dataset.download=true on a machine with internet access, or copy "
        f"{files} into {data_dir}, or set dataset.root=... (or the RGAP_DATA environment variable) to a "
        f"directory that already holds them, or use the offline dataset={offline} instead."
    )


# What torchvision raises for missing, corrupted or undownloadable files (URLError is an OSError).
_LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError)


def _check_num_classes(dataset: str, num_classes: int) -> None:
    if num_classes not in (2, 10):
        raise UserInputError(
            f"dataset '{dataset}' supports num_classes=2 (binary split) or num_classes=10, "
            f"got num_classes={num_classes}."
        )


def load_cifar10(root: str, download: bool = False, train: bool = True, num_classes: int = 2) -> ImageSet:
    """CIFAR-10 from ``<root>/cifar-10-batches-py`` (3x32x32). ``num_classes=2``: airplane, automobile,
    ship, truck -> 0, animals -> 1; ``num_classes=10``: the original labels."""
    from torchvision.datasets import CIFAR10

    _check_num_classes("cifar10", num_classes)
    root_abs = os.path.abspath(os.path.expanduser(os.fspath(root)))
    data_dir = os.path.join(root_abs, CIFAR10.base_folder)
    try:
        ds = CIFAR10(root_abs, train=bool(train), download=bool(download))
    except _LOAD_ERRORS as exc:
        raise DatasetNotFoundError(
            _not_found_message(
                "CIFAR-10",
                data_dir,
                bool(download),
                exc,
                "the extracted CIFAR-10 python files (data_batch_1..data_batch_5, test_batch, batches.meta)",
                "sample",
            )
        ) from exc
    if num_classes == 2:
        label_map = [0 if c in CIFAR10_BINARY_ZERO else 1 for c in range(10)]
        class_names: Sequence[str] = ("vehicle", "animal")
    else:
        label_map = None
        class_names = tuple(ds.classes)
    return TorchvisionImageSet("cifar10", ds, class_names, (3, 32, 32), label_map)


def load_mnist(root: str, download: bool = False, train: bool = True, num_classes: int = 2) -> ImageSet:
    """MNIST from ``<root>/MNIST/raw`` (1x28x28). ``num_classes=2``: digits 0, 1, 8, 9 -> 0, digits 2-7
    -> 1; ``num_classes=10``: the digit."""
    from torchvision.datasets import MNIST

    _check_num_classes("mnist", num_classes)
    root_abs = os.path.abspath(os.path.expanduser(os.fspath(root)))
    data_dir = os.path.join(root_abs, "MNIST", "raw")
    try:
        ds = MNIST(root_abs, train=bool(train), download=bool(download))
    except _LOAD_ERRORS as exc:
        raise DatasetNotFoundError(
            _not_found_message(
                "MNIST",
                data_dir,
                bool(download),
                exc,
                "the four uncompressed MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)",
                "sample_gray",
            )
        ) from exc
    if num_classes == 2:
        label_map = [0 if c in MNIST_BINARY_ZERO else 1 for c in range(10)]
        class_names: Sequence[str] = ("digits 0,1,8,9", "digits 2-7")
    else:
        label_map = None
        class_names = tuple(str(d) for d in range(10))
    return TorchvisionImageSet("mnist", ds, class_names, (1, 28, 28), label_map)


# --------------------------------------------------------------------------------------------------------
# Folder of images
# --------------------------------------------------------------------------------------------------------
def load_folder(
    path: str, size: int = 32, channels: int = 3, label: int = 0, num_classes: int = 2
) -> ImageSet:
    """Every image file directly in ``path`` (sorted by file name), converted to RGB (``channels=3``) or
    grayscale (``channels=1``), resized so the short side is ``size`` and centre-cropped to
    ``size x size``. All images get ``label``."""
    from PIL import Image, UnidentifiedImageError

    accepted = ", ".join(IMAGE_EXTENSIONS)
    if channels not in (1, 3):
        raise UserInputError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got channels={channels}.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserInputError(f"dataset.size must be a positive integer, got size={size!r}.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserInputError(
            f"dataset.num_classes must be a positive integer, got num_classes={num_classes!r}."
        )
    if not isinstance(label, int) or not 0 <= label < num_classes:
        raise UserInputError(
            f"dataset.label must be an integer in 0..{num_classes - 1} (num_classes={num_classes}), "
            f"got label={label!r}."
        )
    folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(folder):
        raise UserInputError(
            f"Image folder {folder} does not exist; set dataset.path to a directory of images."
        )
    if not os.path.isdir(folder):
        raise UserInputError(f"dataset.path {folder} is not a directory; set it to a directory of images.")
    files = sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )
    if not files:
        raise UserInputError(
            f"Image folder {folder} contains no image files (accepted extensions, case-insensitive: "
            f"{accepted})."
        )
    mode = "RGB" if channels == 3 else "L"
    images = []
    for f in files:
        fpath = os.path.join(folder, f)
        try:
            with Image.open(fpath) as im:
                im = im.convert(mode)
                w, h = im.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UserInputError(f"Could not read image file {fpath} ({short_error(exc)}).") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    x = torch.stack(images).to(torch.float32) / 255.0
    labels = torch.full((len(files),), label, dtype=torch.int64)
    return TensorImageSet("folder", x, labels, tuple(str(i) for i in range(num_classes)), files)


# --------------------------------------------------------------------------------------------------------
# Config entry point and index selection
# --------------------------------------------------------------------------------------------------------
def build_dataset(cfg: Mapping) -> ImageSet:
    """Instantiate the dataset described by a ``conf/dataset/*.yaml`` mapping (dict or DictConfig).

    Key ``name`` is dropped, the rest goes to ``hydra.utils.instantiate`` (``_target_`` names the loader).
    Unknown or missing (``???``) keys raise :class:`UserInputError`.
    """
    return instantiate_group(cfg, "dataset", ImageSet)


def select_indices(n_items: int, index: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the images to attack.

    ``index >= 0``: the contiguous block ``[index, index + batch_size)``. ``index == -1``: ``batch_size``
    distinct indices drawn from ``torch.Generator().manual_seed(seed)`` (deterministic).
    """
    if batch_size < 1:
        raise UserInputError(f"batch_size must be at least 1, got batch_size={batch_size}.")
    if batch_size > n_items:
        raise UserInputError(
            f"batch_size={batch_size} is larger than the dataset, which has {n_items} images; "
            f"use a batch_size in 1..{n_items}."
        )
    if index < -1:
        raise UserInputError(
            f"index={index} is invalid; use -1 (random images) or an index in 0..{n_items - batch_size}."
        )
    if index >= n_items:
        raise UserInputError(
            f"index={index} is out of range for a dataset with {n_items} images; "
            f"use -1 (random images) or an index in 0..{n_items - batch_size}."
        )
    if index + batch_size > n_items:
        raise UserInputError(
            f"index={index} with batch_size={batch_size} runs past the end of the dataset "
            f"({n_items} images); use an index in 0..{n_items - batch_size} or -1 (random images)."
        )
    if index == -1:
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randperm(n_items, generator=gen)[:batch_size].tolist()
    return list(range(index, index + batch_size))
