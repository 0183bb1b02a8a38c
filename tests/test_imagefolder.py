"""Tests for image folders (contrastive/datamodules/imagefolder.py).

Every tree is written by the test: class folders of solid-colour images (the colour tells the
class, so labels can be checked against pixels), plus every kind of bad and odd file from
``test_images``.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from PIL import Image
from test_images import write_odd_images

from contrastive.datamodules import ImageFolderDataModule, ImageFolderDataset
from contrastive.datamodules.common import Skipped, default_num_workers
from contrastive.datamodules.imagefolder import ImageFolderError, PathArray
from contrastive.evaluation import EmbeddingReport
from contrastive.methods import SimCLR

CLASS_COLORS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "owl": (40, 80, 230)}


def image_bytes(color: tuple, fmt: str, size: tuple[int, int] = (40, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_class_tree(root: Path, per_class: int = 4, classes: dict = CLASS_COLORS) -> list[Path]:
    """Class folders of solid-colour JPEGs and PNGs, the last of each one folder deeper."""
    paths = []
    for name, color in classes.items():
        for i in range(per_class):
            fmt = ("JPEG", "PNG")[i % 2]
            folder = root / name / ("deeper" if i == per_class - 1 else "")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}_{i}.{fmt.lower()}"
            path.write_bytes(image_bytes(color, fmt))
            paths.append(path)
    return sorted(paths)


def color_class(image: torch.Tensor, classes: dict = CLASS_COLORS) -> str:
    """The class whose colour an image shows."""
    mean = image.float().mean((1, 2))
    return min(classes, key=lambda c: (mean - torch.tensor(classes[c])).abs().sum().item())


def data(root: Path, **kwargs) -> ImageFolderDataModule:
    args = dict(image_size=16, batch_size=2, eval_batch_size=4, num_workers=0)
    module = ImageFolderDataModule(root, **{**args, **kwargs})
    module.setup("fit")
    return module


def items(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------- layouts


def test_class_folders_give_labels_matching_the_pixels(tmp_path):
    write_class_tree(tmp_path, per_class=4)
    (tmp_path / "README.txt").write_text("not an image, ignored")
    (tmp_path / "cat" / ".hidden.jpg").write_bytes(b"")  # hidden: not even scanned
    module = data(tmp_path, val_fraction=0.25)
    assert module.num_classes == {"class": 3}
    assert module.class_names == {"class": ("cat", "dog", "owl")}
    train, query = items(module._datasets["train"]), items(module._datasets["query"])
    assert len(train) == 9 and len(query) == 3  # round(0.25 * 12) held out
    for item in train + query:
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 16, 16)
        name = module.class_names["class"][item["labels"]["class"]]
        assert color_class(item["image"]) == name and f"/{name}/" in item["path"]
    assert [item["index"] for item in train] == list(range(9))
    train_paths = {item["path"] for item in train}
    assert train_paths.isdisjoint(item["path"] for item in query)
    assert len(train_paths | {item["path"] for item in query}) == 12


def test_held_out_split_is_deterministic_by_seed(tmp_path):
    write_class_tree(tmp_path, per_class=10)

    def held_out(seed: int) -> list[str]:
        query = data(tmp_path, val_fraction=0.2, seed=seed)._datasets["query"]
        return [query.paths[i] for i in range(len(query))]

    assert held_out(0) == held_out(0) and len(held_out(0)) == 6
    assert held_out(0) != held_out(1)
    assert len(data(tmp_path)._datasets["query"]) == 2  # the default: 5 percent of 30


def test_val_root_with_class_folders(tmp_path):
    write_class_tree(tmp_path / "train", per_class=2)
    write_class_tree(tmp_path / "val", per_class=1)
    module = data(tmp_path / "train", val_root=tmp_path / "val")
    query = items(module._datasets["query"])
    assert [module.class_names["class"][i["labels"]["class"]] for i in query] == [
        "cat",
        "dog",
        "owl",
    ]
    with pytest.raises(ValueError, match="not both"):
        ImageFolderDataModule(tmp_path, val_root=tmp_path / "val", val_fraction=0.1)


def test_unlabelled_folder(tmp_path):
    write_class_tree(tmp_path, per_class=2)
    (tmp_path / "loose.png").write_bytes(image_bytes((1, 2, 3), "PNG"))
    module = data(tmp_path, labelled=False, val_fraction=0.3)
    assert module.num_classes == {} and module.class_names == {}
    train = items(module._datasets["train"])
    assert len(train) + len(module._datasets["query"]) == 7
    assert all("labels" not in item for item in train)
    assert len(module._datasets["bank"]) == 0  # no labels, no kNN bank
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and "labels" not in batch


def test_bank_is_a_seeded_draw_over_every_class_capped_by_num_bank(tmp_path):
    write_class_tree(tmp_path, per_class=10)
    module = data(tmp_path, num_bank=6, val_fraction=0.0)
    bank = items(module._datasets["bank"])
    assert len(bank) == 6
    assert len({item["labels"]["class"] for item in bank}) > 1  # not the first class only
    again = data(tmp_path, num_bank=6, val_fraction=0.0)._datasets["bank"]
    assert [item["path"] for item in bank] == [again.paths[i] for i in range(6)]
    bank_loader, query_loader = module.val_dataloader()
    assert len(bank_loader.dataset) == 6 and len(query_loader.dataset) == 0


# ----------------------------------------------------------------------------- errors


def test_links_are_followed_once_each_real_image_listed_once(tmp_path, caplog):
    expected = write_class_tree(tmp_path / "train", per_class=4)
    (tmp_path / "train" / "cat" / "loop").symlink_to(tmp_path / "train")  # back to the root
    (tmp_path / "train" / "dog" / "deeper" / "up").symlink_to("..")
    outside = tmp_path / "more_owls"
    outside.mkdir()
    (outside / "owl_9.png").write_bytes(image_bytes(CLASS_COLORS["owl"], "PNG"))
    (tmp_path / "train" / "owl" / "more").symlink_to(outside)  # a real folder elsewhere: read
    with caplog.at_level("INFO"):
        module = data(tmp_path / "train", val_fraction=0.0)
    train = items(module._datasets["train"])
    assert sorted(item["path"] for item in train) == sorted(
        [*map(str, expected), str(tmp_path / "train/owl/more/owl_9.png")]
    )
    for item in train:  # a link inside a class keeps the class of the folder it lies in
        assert color_class(item["image"]) == module.class_names["class"][item["labels"]["class"]]
    assert "2 links to files or folders listed already skipped" in caplog.text

    # Unlabelled, a link to a sibling folder adds nothing: each file once, by its first path.
    flat = tmp_path / "flat"
    (flat / "a").mkdir(parents=True)
    for i in range(3):
        (flat / "a" / f"{i}.png").write_bytes(image_bytes((10 * i, 0, 0), "PNG"))
    (flat / "b").symlink_to(flat / "a")
    module = data(flat, labelled=False, val_fraction=0.0)
    assert [item["path"] for item in items(module._datasets["train"])] == [
        str(flat / "a" / f"{i}.png") for i in range(3)
    ]
    # Labelled, a class folder that is a link to another class is an empty class, so said.
    (tmp_path / "train" / "kitten").symlink_to(tmp_path / "train" / "cat")
    with pytest.raises(ImageFolderError, match="hold no images: kitten .a link to a folder"):
        data(tmp_path / "train")


def test_folder_without_images_is_a_one_line_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    for labelled in (True, False):
        with pytest.raises(ImageFolderError) as error:
            data(tmp_path, labelled=labelled)
        assert "no images in root" in str(error.value) and str(tmp_path) in str(error.value)
        assert "\n" not in str(error.value)
    with pytest.raises(ImageFolderError, match="is not a folder"):
        data(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_labels": "x.csv"}, "val_labels needs val_root"),
        ({"labelled": False, "subset": "s.txt"}, "subset needs labelled=True"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"image_size": 0}, "image_size must be >= 1"),
        ({"resize": "stretch"}, "resize must be one of crop, letterbox, got 'stretch'"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageFolderDataModule(tmp_path, **kwargs)


def test_layout_mistakes_are_one_line_errors(tmp_path):
    write_class_tree(tmp_path, per_class=2)
    (tmp_path / "stray.jpg").write_bytes(image_bytes((0, 0, 0), "JPEG"))
    with pytest.raises(ImageFolderError, match="1 images lie directly in root .*stray.jpg"):
        data(tmp_path)
    (tmp_path / "stray.jpg").unlink()
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ImageFolderError, match="1 class folders .* hold no images: empty_class"):
        data(tmp_path)
    (tmp_path / "empty_class").rmdir()
    with pytest.raises(ImageFolderError, match="fewer than batch_size"):
        data(tmp_path, batch_size=64)


# ----------------------------------------------------------------------------- pieces


def test_path_array_round_trips_and_pickles():
    paths = ["/a/b.jpg", "/ünï/çødé.png", "", "/x" * 50]
    array = pickle.loads(pickle.dumps(PathArray(paths)))
    assert len(array) == 4 and [array[i] for i in range(4)] == paths


def test_default_num_workers_leaves_a_core_per_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers() == 8  # capped
    assert default_num_workers(4) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers() == 1 and default_num_workers(2) == 0


def test_dataset_returns_skipped_for_bad_files_and_max_pixels_is_used(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes((9, 9, 9), "PNG", size=(40, 36)))
    assert ImageFolderDataset([path], [0], 8, max_pixels=40 * 36)[0]["labels"] == {"class": 0}
    skipped = ImageFolderDataset([path], None, 8, max_pixels=40 * 36 - 1)[0]
    assert isinstance(skipped, Skipped) and skipped.reason.startswith("too many pixels")


def test_letterbox_gives_the_whole_of_wide_images(tmp_path):
    """A wide image of a class: its colour band lies in the middle rows, white above and below;
    the default centre crop fills the square with the band's middle."""
    for name, color in CLASS_COLORS.items():
        (tmp_path / name).mkdir()
        for i in range(2):
            (tmp_path / name / f"{i}.png").write_bytes(image_bytes(color, "PNG", size=(64, 16)))
    boxed = data(tmp_path, resize="letterbox", val_fraction=0.0)
    cropped = data(tmp_path, val_fraction=0.0)
    for item in items(boxed._datasets["train"]):
        image, color = item["image"], CLASS_COLORS[color_class(item["image"][:, 6:10])]
        assert (image[:, :6] == 255).all() and (image[:, 10:] == 255).all()  # 64x16 -> 16x4
        assert (image[:, 6:10] == torch.tensor(color)[:, None, None]).all()
    for item in items(cropped._datasets["train"]):
        assert (
            item["image"] == torch.tensor(CLASS_COLORS[color_class(item["image"])])[:, None, None]
        ).all()


# ----------------------------------------------------------------------------- end to end


class RecordBatches(Callback):
    def __init__(self) -> None:
        self.indices: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert "skipped" not in batch  # the method took it out before the step
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
        self.indices.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())


def test_training_sees_every_good_image_once_per_epoch_and_reports_the_bad(tmp_path):
    root = tmp_path / "train"
    write_class_tree(root, per_class=3)
    odd, bad = write_odd_images(root / "odd")  # a class folder of odd and bad files
    (root / "README.md").write_text("ignored")
    # 9 + 19 + 8 = 36 files; a multiple of the batch size, so dropping the last batch drops none.
    module = ImageFolderDataModule(
        root, val_fraction=0.0, image_size=32, batch_size=12, num_workers=1
    )
    lightning.seed_everything(0)
    model = SimCLR(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        projector_hidden_dim=16,
        projector_dim=8,
    )
    record = RecordBatches()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # evaluation batches: test_eval_loaders_feed_the_knn_bank_and_queries
        callbacks=[record],
    )
    with pytest.warns(UserWarning) as warned:
        trainer.fit(model, module)

    train = module._datasets["train"]
    assert len(train) == 36
    paths = [train.paths[i] for i in range(len(train))]
    good = {i for i, p in enumerate(paths) if Path(p).name not in bad}
    assert len(good) == 9 + len(odd)
    for epoch in (0, 1):
        seen = record.indices[epoch]
        assert sorted(seen) == sorted(good), f"epoch {epoch}: {len(seen)} seen"  # each once
    assert record.indices[0] != record.indices[1]  # shuffled anew

    reports = [str(w.message) for w in warned if "bad samples" in str(w.message)]
    assert len(reports) == 2  # one per train epoch
    for epoch, line in enumerate(reports):
        assert line.startswith(f"train epoch {epoch}: skipped {len(bad)} bad samples")
        named = line.split("first: ")[1].split("; ")
        assert len(named) == 5 and all(Path(n.split(" (")[0]).name in bad for n in named)


def test_eval_loaders_feed_the_knn_bank_and_queries(tmp_path):
    write_class_tree(tmp_path / "train", per_class=3)
    write_class_tree(tmp_path / "val", per_class=2)
    (tmp_path / "val" / "owl" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    module = data(tmp_path / "train", val_root=tmp_path / "val", num_bank=5, num_workers=1)
    bank_loader, query_loader = module.val_dataloader()
    bank = [batch for batch in bank_loader]
    assert [len(b["index"]) for b in bank] == [4, 1]  # num_bank caps it, in eval batches
    assert bank[0]["labels"]["class"].shape == (4,) and bank[0]["image"].dtype == torch.uint8
    query = list(query_loader)
    labels = torch.cat([b["labels"]["class"] for b in query]).tolist()
    assert labels == [0, 0, 1, 1, 2, 2]  # in file order, the broken one dropped
    assert [s.reason for b in query for s in b.get("skipped", [])] == ["truncated image"]
    assert module.test_dataloader()[1].dataset is module.predict_dataloader().dataset


def _validate(module: ImageFolderDataModule) -> dict[str, float]:
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, projector_dim=8)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[EmbeddingReport()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, module, verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def test_unlabelled_validation_gives_the_embedding_metrics_without_a_bank(tmp_path):
    write_class_tree(tmp_path, per_class=4)
    metrics = _validate(data(tmp_path, labelled=False, val_fraction=0.5, image_size=32))
    assert {"val/uniformity", "val/rankme", "val/centred_rankme"} <= set(metrics)
    assert not any(key.startswith("val/knn") for key in metrics)


def test_labelled_validation_gives_the_knn_accuracy_of_the_class(tmp_path):
    write_class_tree(tmp_path, per_class=4)
    metrics = _validate(data(tmp_path, val_fraction=0.5, image_size=32))
    assert 0.0 <= metrics["val/knn/class"] <= 1.0
