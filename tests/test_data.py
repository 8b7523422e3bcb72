"""Tests for rgap.zoo.data: tiny on-disk CIFAR-10 / MNIST, offline sample sets, folders, configs, indices."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rgap.core.errors import DatasetNotFoundError, UserInputError
from rgap.zoo.data import (
    ImageSet,
    TensorImageSet,
    TorchvisionImageSet,
    build_dataset,
    load_cifar10,
    load_folder,
    load_mnist,
    load_sample,
    load_sample_gray,
    select_indices,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --------------------------------------------------------------------------------------------------------
# Tiny datasets in the real on-disk formats
# --------------------------------------------------------------------------------------------------------
def _write_cifar(root: Path, n_per_batch: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write cifar-10-batches-py with 5 train batches, a test batch and batches.meta.

    The pickles use str keys: the real files are Python-2 pickles that torchvision reads with
    encoding="latin1", which yields str keys ("data", "labels", "label_names").
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [(b * n_per_batch + k) % 10 for k in range(n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": n_per_batch}, f)
    return written


@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks every CIFAR-10 file against the md5 of the real release, which custom content
    cannot match. Replace only torchvision's md5 helper (test-only) by a file-exists check; the loader's
    own logic is untouched."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        for d in array.shape:
            f.write(struct.pack(">i", d))
        f.write(array.astype(np.uint8).tobytes())


def _write_mnist(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images, 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 2049)
        written[split] = (images, labels)
    return written


# --------------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------------
def test_cifar10_pixels_and_labels(tmp_path: Path, skip_cifar_md5: None) -> None:
    written = _write_cifar(tmp_path)
    ds = load_cifar10(root=str(tmp_path), download=False, num_classes=10)
    assert isinstance(ds, TorchvisionImageSet)
    assert len(ds) == 10 and ds.shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.class_names == tuple(CIFAR_CLASSES)
    x, y = ds.get(list(range(10)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (10, 3, 32, 32)
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    expected_t = torch.from_numpy(expected.reshape(10, 3, 32, 32)).float() / 255.0
    assert torch.allclose(x, expected_t, atol=1e-6)
    labels = [lab for i in range(1, 6) for lab in written[f"data_batch_{i}"][1]]
    assert y.tolist() == labels

    binary = load_cifar10(root=tmp_path, download=False, num_classes=2)
    assert binary.num_classes == 2
    _, yb = binary.get(range(10))
    assert yb.tolist() == [0 if c in (0, 1, 8, 9) else 1 for c in labels]

    test = load_cifar10(root=tmp_path, train=False, num_classes=10)
    xt, yt = test.get([1])
    data, lab = written["test_batch"]
    assert torch.allclose(xt[0], torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255.0)
    assert yt.tolist() == [lab[1]]


def test_cifar10_bad_num_classes_and_index(tmp_path: Path, skip_cifar_md5: None) -> None:
    _write_cifar(tmp_path)
    with pytest.raises(UserInputError, match="num_classes"):
        load_cifar10(root=tmp_path, num_classes=3)
    ds = load_cifar10(root=tmp_path)
    for bad in ([10], [-1]):
        with pytest.raises(UserInputError, match="out of range"):
            ds.get(bad)


def test_cifar10_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "nothing_here"
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(root=str(root), download=False)
    msg = str(info.value)
    assert str(root / "cifar-10-batches-py") in msg
    assert "download" in msg and "dataset=sample" in msg
    assert "\n" not in msg


def test_cifar10_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def no_network(self: object) -> None:
        raise URLError("no network in tests")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(root=tmp_path, download=True)
    msg = str(info.value)
    assert "download failed" in msg and "no network in tests" in msg and str(tmp_path) in msg


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root="data")
    assert str(tmp_path / "data" / "MNIST" / "raw") in str(info.value)


# --------------------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------------------
def test_mnist_pixels_and_labels(tmp_path: Path) -> None:
    written = _write_mnist(tmp_path)
    ds = load_mnist(root=tmp_path, download=False, num_classes=10)
    assert isinstance(ds, ImageSet) and len(ds) == 12 and ds.shape == (1, 28, 28)
    x, y = ds.get([0, 5, 11])
    images, labels = written["train"]
    assert x.shape == (3, 1, 28, 28)
    assert torch.allclose(x[:, 0], torch.from_numpy(images[[0, 5, 11]]).float() / 255.0, atol=1e-6)
    assert y.tolist() == labels[[0, 5, 11]].tolist()

    _, yb = load_mnist(root=tmp_path, num_classes=2).get(range(12))
    assert yb.tolist() == [0 if d in (0, 1, 8, 9) else 1 for d in labels.tolist()]

    test = load_mnist(root=tmp_path, train=False)
    assert len(test) == 5


def test_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root=tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "download" in msg and "sample_gray" in msg


# --------------------------------------------------------------------------------------------------------
# Offline sample sets
# --------------------------------------------------------------------------------------------------------
def test_sample() -> None:
    ds = load_sample()
    assert isinstance(ds, TensorImageSet)
    assert len(ds) >= 16 and ds.shape == (3, 32, 32) and ds.num_classes == 2
    x, y = ds.get(range(len(ds)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    assert set(y.tolist()) == {0, 1}
    assert (x.flatten(1).std(dim=1) > 0.02).all(), "sample images must not be (nearly) constant"
    x2, y2 = load_sample().get(range(len(ds)))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # get() returns copies: editing them does not change the cached set.
    x2.zero_()
    assert torch.equal(load_sample().get([0])[0], x[:1])

    multi = load_sample(num_classes=8)
    _, ym = multi.get(range(len(multi)))
    assert multi.num_classes == 8 and set(ym.tolist()) == set(range(8))
    with pytest.raises(UserInputError, match="num_classes"):
        load_sample(num_classes=3)


def test_sample_gray() -> None:
    ds = load_sample_gray()
    assert len(ds) == 200 and ds.shape == (1, 28, 28) and ds.num_classes == 2
    x, y = ds.get(range(200))
    assert x.min() >= 0 and x.max() <= 1
    assert y[:100].eq(1).all() and y[100:].eq(0).all()
    with pytest.raises(UserInputError, match="exactly 2 classes"):
        load_sample_gray(num_classes=10)


# --------------------------------------------------------------------------------------------------------
# Folder
# --------------------------------------------------------------------------------------------------------
def _write_pngs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(folder / "c.png")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(folder / "a.PNG")
    Image.new("L", (50, 70), 128).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_folder_rgb_sorted(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "imgs")
    ds = load_folder(str(tmp_path / "imgs"), size=8, channels=3, label=1)
    assert len(ds) == 3 and ds.shape == (3, 8, 8)
    x, y = ds.get([0, 1, 2])
    assert y.tolist() == [1, 1, 1]
    # Sorted by file name: a.PNG (green), b.jpg (gray), c.png (red).
    assert torch.allclose(x[0].mean(dim=(1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=0.02)
    assert torch.allclose(x[1].mean(dim=(1, 2)), torch.full((3,), 128 / 255), atol=0.02)
    assert torch.allclose(x[2].mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


def test_folder_gray_and_errors(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "imgs")
    ds = load_folder(tmp_path / "imgs", size=5, channels=1)
    assert ds.shape == (1, 5, 5) and ds.get([0])[0].shape == (1, 1, 5, 5)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError) as info:
        load_folder(empty)
    assert str(empty) in str(info.value) and ".png" in str(info.value)
    with pytest.raises(UserInputError, match="does not exist"):
        load_folder(tmp_path / "missing")
    with pytest.raises(UserInputError, match="not a directory"):
        load_folder(tmp_path / "imgs" / "c.png")
    with pytest.raises(UserInputError, match="channels"):
        load_folder(tmp_path / "imgs", channels=2)
    with pytest.raises(UserInputError, match="size"):
        load_folder(tmp_path / "imgs", size=0)
    with pytest.raises(UserInputError, match="label"):
        load_folder(tmp_path / "imgs", label=2, num_classes=2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(UserInputError, match="broken.png"):
        load_folder(tmp_path / "imgs")


# --------------------------------------------------------------------------------------------------------
# select_indices
# --------------------------------------------------------------------------------------------------------
def test_select_indices_ranges_and_random() -> None:
    assert select_indices(10, 0, 1, 0) == [0]
    assert select_indices(10, 3, 4, 0) == [3, 4, 5, 6]
    assert select_indices(10, 9, 1, 0) == [9]
    a = select_indices(100, -1, 8, seed=7)
    assert a == select_indices(100, -1, 8, seed=7)
    assert len(a) == 8 and len(set(a)) == 8 and all(0 <= i < 100 for i in a)
    assert a != select_indices(100, -1, 8, seed=8)
    assert sorted(select_indices(5, -1, 5, seed=0)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("n", "index", "batch", "match"),
    [
        (10, 0, 0, "batch_size=0"),
        (10, 0, 11, "batch_size=11"),
        (10, -2, 1, "index=-2"),
        (10, 10, 1, "index=10"),
        (10, 8, 3, "index=8 with batch_size=3"),
    ],
)
def test_select_indices_errors(n: int, index: int, batch: int, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        select_indices(n, index, batch, seed=0)


# --------------------------------------------------------------------------------------------------------
# build_dataset from the yaml files
# --------------------------------------------------------------------------------------------------------
def _conf(name: str):
    return OmegaConf.load(CONF_DIR / f"{name}.yaml")


def test_build_sample_configs() -> None:
    ds = build_dataset(_conf("sample"))
    assert ds.name == "sample" and ds.num_classes == 2
    gray = build_dataset(_conf("sample_gray"))
    assert gray.name == "sample_gray" and gray.shape == (1, 28, 28)
    # A plain dict works too.
    plain = {"name": "sample", "_target_": "rgap.zoo.data.load_sample", "num_classes": 8}
    assert build_dataset(plain).num_classes == 8


def test_build_cifar_and_mnist_configs(
    tmp_path: Path, skip_cifar_md5: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_cifar(tmp_path)
    _write_mnist(tmp_path)
    cfg = _conf("cifar10")
    cfg.root = str(tmp_path)
    assert build_dataset(cfg).shape == (3, 32, 32)
    # The default root comes from the RGAP_DATA environment variable.
    monkeypatch.setenv("RGAP_DATA", str(tmp_path))
    mnist = build_dataset(_conf("mnist"))
    assert mnist.name == "mnist" and len(mnist) == 12


def test_build_config_errors(tmp_path: Path) -> None:
    cfg = _conf("mnist")
    cfg.root = str(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="download"):
        build_dataset(cfg)

    with pytest.raises(UserInputError, match="dataset.path"):
        build_dataset(_conf("folder"))
    _write_pngs(tmp_path / "imgs")
    folder = _conf("folder")
    folder.path = str(tmp_path / "imgs")
    assert len(build_dataset(folder)) == 3

    bad = _conf("sample")
    bad.colour = "red"
    with pytest.raises(UserInputError, match="dataset.colour"):
        build_dataset(bad)
    with pytest.raises(UserInputError, match="rgap.zoo.data.nope"):
        build_dataset({"name": "x", "_target_": "rgap.zoo.data.nope"})
    with pytest.raises(UserInputError, match="_target_"):
        build_dataset({"name": "x", "num_classes": 2})
    bad_classes = _conf("sample")
    bad_classes.num_classes = 5
    with pytest.raises(UserInputError, match="num_classes"):
        build_dataset(bad_classes)
