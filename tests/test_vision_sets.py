"""Tests for CIFAR-10, CIFAR-100, STL-10 and Fashion-MNIST (contrastive/datamodules/vision_sets.py).

No network here: the tests write small fakes in the real on-disk formats (the CIFAR Python 2
pickle batches, STL-10's column-major binaries, Fashion-MNIST's IDX files) with known pixels.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from lightning.pytorch import Trainer

from contrastive.datamodules.common import DataError
from contrastive.datamodules.vision_sets import (
    SPECS,
    VisionSetDataModule,
    VisionSetMissingError,
)
from contrastive.methods import SimCLR

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer"] + [
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def cifar_rows(n: int, seed: int) -> np.ndarray:
    """``(n, 3072)`` uint8 rows: the red plane, then green, then blue, each row-major 32 x 32."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the archives' protocol


def write_fake_cifar10(root: Path, per_batch: int = 8, test: int = 10) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for i in range(1, 6):
        data = cifar_rows(per_batch, seed=i)
        batch_labels = [(i + j) % 10 for j in range(per_batch)]
        names = [f"img_{i}_{j}.png" for j in range(per_batch)]
        batch = {"batch_label": f"training batch {i} of 5", "labels": batch_labels}
        dump(folder / f"data_batch_{i}", {**batch, "data": data, "filenames": names})
        rows.append(data)
        labels += batch_labels
    test_rows = cifar_rows(test, seed=99)
    dump(folder / "test_batch", {"data": test_rows, "labels": [j % 10 for j in range(test)]})
    dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    return {"train": np.concatenate(rows), "labels": labels, "test": test_rows}


def write_fake_cifar100(root: Path, n: int = 12) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        fine = [(7 * j) % 100 for j in range(n)]
        coarse = [f // 5 for f in fine]
        dump(
            folder / split, {"data": cifar_rows(n, 0), "fine_labels": fine, "coarse_labels": coarse}
        )
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    dump(folder / "meta", meta)


def write_fake_stl10(root: Path, train: int = 6, test: int = 4, unlabeled: int = 5) -> np.ndarray:
    """Returns the train images as they should read: ``(N, 3, 96, 96)``, row-major."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for split, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images[split] = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        # On disk each 96 x 96 plane is column-major: (N, 3, W, H).
        images[split].transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            np.array([j % 10 + 1 for j in range(n)], np.uint8).tofile(folder / f"{split}_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return images["train"]


def module(root: Path, **kwargs) -> VisionSetDataModule:
    args = dict(root=root, batch_size=4, eval_batch_size=8, num_workers=0)
    data = VisionSetDataModule(**{**args, **kwargs})
    data.prepare_data()
    data.setup("fit")
    return data


def test_fake_cifar10_reads_pixels_labels_and_names(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    data = module(tmp_path)
    assert data.num_classes == {"class": 10}
    assert data.class_names == {"class": tuple(CIFAR10_NAMES)}
    train = data._datasets["train"]
    assert len(train) == 40
    for i in (0, 13, 39):
        item = train[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
        expected = torch.from_numpy(fake["train"][i].reshape(3, 32, 32))
        assert torch.equal(item["image"], expected)
        assert item["labels"] == {"class": fake["labels"][i]} and item["index"] == i
    # Red plane first, row-major: pixel (y=0, x=1) of the red channel is byte 1.
    assert train[0]["image"][0, 0, 1] == fake["train"][0][1]
    assert train[0]["image"][2, 1, 0] == fake["train"][0][2048 + 32]
    test = data._datasets["test"]
    assert len(test) == 10 and torch.equal(
        test[3]["image"].flatten(), torch.from_numpy(fake["test"][3])
    )


def test_eval_loaders_and_a_seeded_held_out_split(tmp_path):
    write_fake_cifar10(tmp_path)
    data = module(tmp_path, num_bank=16)
    bank, query = data.val_dataloader()
    assert len(bank.dataset) == 16 and len(query.dataset) == 10  # the test split
    batch = next(iter(bank))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["labels"]["class"].shape == (8,)
    assert len({int(c) for b in bank for c in b["labels"]["class"]}) > 3  # a draw, not a prefix

    held = module(tmp_path, val_fraction=0.25, num_bank=100)
    assert len(held._datasets["train"]) == 30 and len(held._datasets["val"]) == 10
    train_ids = set(held._datasets["train"].indices.tolist())
    assert train_ids.isdisjoint(held._datasets["val"].indices.tolist())
    assert set(held._datasets["bank"].indices.tolist()) == train_ids  # never a held-out image
    again = module(tmp_path, val_fraction=0.25)
    assert np.array_equal(again._datasets["val"].indices, held._datasets["val"].indices)
    other = module(tmp_path, val_fraction=0.25, seed=1)
    assert not np.array_equal(other._datasets["val"].indices, held._datasets["val"].indices)
    assert len(held.test_dataloader()[1].dataset) == 10  # test still uses the test split


def test_cifar100_has_classes_and_superclasses(tmp_path):
    write_fake_cifar100(tmp_path)
    data = module(tmp_path, name="cifar100")
    assert data.num_classes == {"class": 100, "superclass": 20}
    assert data.class_names["superclass"][3] == "coarse3"
    item = data._datasets["train"][5]
    assert item["labels"] == {"class": 35, "superclass": 7}


def test_stl10_is_column_major_on_disk_and_can_add_the_unlabeled_split(tmp_path):
    expected = write_fake_stl10(tmp_path)
    data = module(tmp_path, name="stl10")
    assert data.class_names["class"][7] == "monkey"
    item = data._datasets["train"][2]
    assert item["image"].shape == (3, 96, 96)
    assert torch.equal(item["image"], torch.from_numpy(expected[2]))
    assert item["labels"] == {"class": 2}

    data = module(tmp_path, name="stl10", unlabeled=True, image_size=48)
    train = data._datasets["train"]
    assert len(train) == 6 + 5
    items = [train[i] for i in range(len(train))]
    assert all("labels" not in it and it["image"].shape == (3, 48, 48) for it in items)
    assert [it["index"] for it in items] == list(range(11))  # unique across both splits
    assert len(data._datasets["bank"]) == 6  # the bank stays labelled
    with pytest.raises(ValueError, match="unlabeled=True is for stl10 only"):
        VisionSetDataModule("cifar10", tmp_path, unlabeled=True)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_data_says_how_to_get_it_and_downloads_nothing(tmp_path, monkeypatch, name):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded without download=True")

    for cls in ("CIFAR10", "CIFAR100", "STL10", "FashionMNIST"):
        monkeypatch.setattr(torchvision.datasets, cls, no_download)
    data = VisionSetDataModule(name, tmp_path / "data")
    data.prepare_data()
    with pytest.raises(VisionSetMissingError) as error:
        data.setup("fit")
    message = str(error.value)
    assert "\n" not in message and "--data.download true" in message
    assert SPECS[name].source in message and str(tmp_path / "data" / SPECS[name].folder) in message


def test_download_happens_in_prepare_data_through_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, train, download))
        write_fake_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    data = VisionSetDataModule("cifar10", tmp_path, download=True, batch_size=4)
    data.prepare_data()
    assert calls == [(str(tmp_path), True, True)]
    data.setup("fit")
    assert len(data._datasets["train"]) == 40


def test_trains_on_fake_cifar10(tmp_path):
    write_fake_cifar10(tmp_path)
    data = VisionSetDataModule("cifar10", tmp_path, batch_size=8, num_workers=0)
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, projector_dim=8)
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, data)
    assert trainer.global_step == 5 and torch.isfinite(trainer.callback_metrics["train/loss"])


# ---- Fashion-MNIST: tiny IDX files in the real format, gzipped as Debian ships them or not ----


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gzipped else data)


def write_fake_fashion_mnist(folder: Path, gzipped: bool, train: int = 12, test: int = 6) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, stem in (("train", train, "train"), ("test", test, "t10k")):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        suffix = ".gz" if gzipped else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, gzipped)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, gzipped)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_is_read_padded_to_32_in_three_grey_channels(tmp_path, gzipped):
    arrays = write_fake_fashion_mnist(tmp_path, gzipped)
    data = VisionSetDataModule("fashion_mnist", tmp_path, num_bank=8, batch_size=4, num_workers=0)
    data.setup("fit")
    item = data._datasets["test"][3]
    image = item["image"]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[2])  # grey: three equal channels
    assert torch.equal(image[0, 2:30, 2:30], torch.from_numpy(arrays["test"][0][3]))
    assert image[:, :2].sum() == 0 and image[:, :, 30:].sum() == 0  # a black border
    assert item["labels"] == {"class": 3}
    assert len(data._datasets["train"]) == 12 and len(data._datasets["bank"]) == 8
    assert data.class_names["class"][0] == "T-shirt/top" and data.num_classes == {"class": 10}


def test_fashion_mnist_reads_torchvisions_layout_and_defaults_to_debians_folder(
    tmp_path, monkeypatch
):
    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gzipped=False)
    data = VisionSetDataModule("fashion_mnist", tmp_path, num_bank=8, batch_size=4, num_workers=0)
    data.setup("fit")
    assert len(data._datasets["test"]) == 6
    import contrastive.datamodules.vision_sets as vision_sets

    monkeypatch.setattr(vision_sets, "FASHION_MNIST_ROOT", tmp_path / "debian")
    assert VisionSetDataModule("fashion_mnist").root == Path("data")  # not installed
    (tmp_path / "debian").mkdir()
    assert VisionSetDataModule("fashion_mnist").root == tmp_path / "debian"
    assert VisionSetDataModule("cifar10").root == Path("data")


def test_bad_fashion_mnist_files_are_one_line_naming_the_file(tmp_path):
    arrays = write_fake_fashion_mnist(tmp_path, gzipped=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-2])  # truncated
    data = VisionSetDataModule("fashion_mnist", tmp_path, num_bank=8, batch_size=4)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 10 bytes of data; its header"):
        data.setup("fit")
    labels.write_bytes(b"\x00\x00\x0d\x01" + bytes(12))  # float IDX, not unsigned bytes
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        data.setup("fit")
    write_idx(labels, arrays["train"][1], gzipped=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(
        VisionSetMissingError,
        match="lacks t10k-images-idx3-ubyte.*apt-get install dataset-fashion-mnist",
    ):
        data.setup("fit")


def test_fashion_mnist_is_downloaded_through_torchvision_only_when_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        torchvision.datasets, "FashionMNIST", lambda root, train, download: calls.append(root)
    )
    VisionSetDataModule("fashion_mnist", tmp_path, download=True).prepare_data()
    assert calls == [str(tmp_path)]
    write_fake_fashion_mnist(tmp_path, gzipped=True)
    VisionSetDataModule("fashion_mnist", tmp_path, download=True).prepare_data()
    assert calls == [str(tmp_path)]  # the files are there: nothing fetched
