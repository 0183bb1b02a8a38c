"""The National Gallery of Art data module (contrastive/datamodules/nga.py) on folders the tests
write as ``contrastive data nga`` does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from nga_server import jpeg, uuid_of

from contrastive.cli import main as cli_main
from contrastive.datamodules import NGADataModule
from contrastive.datamodules.common import DataError, Skipped
from contrastive.datamodules.nga import METADATA_FIELDS, caption, century
from contrastive.tools import nga_catalog

# ---- the data module ---------------------------------------------------------------------

# 24 artworks: artist frequencies 8, 6, 4, 3 and 3 without an artist; three classifications.
ARTISTS = ["Rembrandt van Rijn"] * 8 + ["Albrecht Dürer"] * 6 + ["Mary Cassatt"] * 4
ARTISTS += ["Winslow Homer"] * 3 + [""] * 3
KINDS = ["Painting", "Print", "Drawing"]
MEDIA = {"Painting": "oil on canvas", "Print": "engraving", "Drawing": "red chalk"}


def make_folder(root: Path, n: int = 24, size: tuple[int, int] = (40, 30)) -> dict[int, dict]:
    """An NGA folder as the tool writes it: images/<objectid>.jpg and manifest.jsonl."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = {}
    for i in range(n):
        oid = 1000 + i
        (root / f"images/{oid}.jpg").write_bytes(jpeg(i, size))
        kind = KINDS[i % 3]
        rows[oid] = {
            "path": f"images/{oid}.jpg",
            "objectid": oid,
            "uuid": uuid_of(oid),
            "title": f"Work {i}",
            "artist": ARTISTS[i % len(ARTISTS)],
            "classification": kind,
            "medium": MEDIA[kind],
            "year": None if i % 5 == 4 else 1450 + 23 * i,
            "displaydate": "",
        }
    nga_catalog.write_manifest(root, rows)
    return rows


def datamodule(root: Path, **kwargs) -> NGADataModule:
    settings = {
        "root": str(root),
        "image_size": 32,
        "num_artists": 2,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "batch_size": 4,
        "eval_batch_size": 8,
        "num_bank": 6,
        **kwargs,
    }
    dm = NGADataModule(**settings)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    "year, name",
    [
        (1650, "17th century"),
        (1600, "17th century"),
        (1699, "17th century"),
        (1901, "20th century"),
        (2001, "21st century"),
        (1150, "12th century"),
        (1250, "13th century"),
        (1050, "11th century"),
        (50, "1st century"),
        (-500, "5th century BCE"),
        (-501, "6th century BCE"),
        (-1, "1st century BCE"),
        (None, "unknown"),
    ],
)
def test_century(year, name):
    assert century(year) == name


def test_captions_name_medium_kind_artist_and_year():
    row = {"medium": "oil on canvas", "classification": "Painting", "year": 1650}
    assert caption({**row, "artist": "Rembrandt van Rijn"}) == (
        "Oil on canvas painting by Rembrandt van Rijn, 1650"
    )
    assert caption({**row, "medium": "", "artist": ""}) == "Painting, 1650"
    assert caption({"classification": "Print", "artist": "Albrecht Dürer", "year": None}) == (
        "Print by Albrecht Dürer"
    )
    assert caption({"medium": "bronze", "year": -500}) == "Bronze, 500 BCE"
    assert caption({}) == "Artwork"


def test_labels_class_names_captions_and_metadata(tmp_path):
    rows = make_folder(tmp_path)
    dm = datamodule(tmp_path)
    names = dm.class_names
    assert dm.attributes == ("classification", "artist", "century")
    assert names["classification"] == ("Drawing", "Painting", "Print")
    assert names["artist"] == ("Rembrandt van Rijn", "Albrecht Dürer", "other")  # top 2 + other
    assert names["century"][0] == "15th century" and names["century"][-1] == "unknown"
    assert list(names["century"][:-1]) == sorted(names["century"][:-1])  # chronological here
    assert dm.num_classes == {label: len(n) for label, n in names.items()}

    seen = 0
    for split in ("train", "val", "test"):
        dataset = dm.dataset(split)
        for i in range(len(dataset)):
            item = dataset[i]
            row = rows[int(Path(item["path"]).stem)]
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
            assert item["index"] == i and item["path"] == str(tmp_path / row["path"])
            labels = {k: names[k][v] for k, v in item["labels"].items()}
            top = row["artist"] if row["artist"] in names["artist"] else "other"
            assert labels == {
                "classification": row["classification"],
                "artist": top,
                "century": century(row["year"]),
            }
            assert item["caption"] == caption(row)
            meta = dataset.metadata(i)
            assert tuple(meta) == METADATA_FIELDS
            assert meta["artist"] == row["artist"] and meta["medium"] == row["medium"]
            assert meta["century"] == century(row["year"]) and meta["year"] == row["year"]
            seen += 1
    assert seen == len(rows)


def test_splits_are_disjoint_complete_and_seeded(tmp_path):
    rows = make_folder(tmp_path)
    dm = datamodule(tmp_path)
    ids = {s: [r["objectid"] for r in dm.dataset(s).records] for s in ("train", "val", "test")}
    assert (len(ids["val"]), len(ids["test"]), len(ids["train"])) == (5, 5, 14)
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(rows)
    bank = [r["objectid"] for r in dm.dataset("bank").records]
    assert bank == ids["train"][:6]  # capped by num_bank, taken from the train split
    again = datamodule(tmp_path)
    assert [r["objectid"] for r in again.dataset("val").records] == ids["val"]
    other = datamodule(tmp_path, seed=1)
    assert [r["objectid"] for r in other.dataset("val").records] != ids["val"]
    assert datamodule(tmp_path, num_bank=100).dataset("bank").records == dm.dataset("train").records


def test_loaders_give_bank_and_query_and_skip_bad_images(tmp_path):
    make_folder(tmp_path)
    dm = datamodule(tmp_path)
    bad = dm.dataset("train").records[0]["path"]
    (tmp_path / bad).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dm.tokenizer = len  # the loaders tokenize captions when a method sets one
    batches = list(dm.train_dataloader())
    assert len(batches) == 14 // 4
    skipped = [s for b in batches for s in b.get("skipped", [])]
    images = sum(len(b["image"]) for b in batches)
    assert images + len(skipped) == 12
    if skipped:  # the shuffled epoch may leave the bad image in the dropped last batch
        assert skipped[0].source == str(tmp_path / bad) and "image" in skipped[0].reason
    batch = batches[-1]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch["labels"]) == {"classification", "artist", "century"}
    assert batch["tokens"] == len(batch["caption"]) and len(batch["path"]) == len(batch["image"])

    bank, query = dm.val_dataloader()
    assert len(bank.dataset) == 6 and query.dataset is dm.dataset("val")
    bank, query = dm.test_dataloader()
    assert query.dataset is dm.dataset("test") and dm.predict_dataloader().dataset is query.dataset
    full = [dm.dataset("train")[i] for i in range(14)]
    assert sum(isinstance(item, Skipped) for item in full) == 1


def test_missing_or_too_small_folders_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="contrastive data nga --root"):
        datamodule(tmp_path)
    make_folder(tmp_path, n=6)
    with pytest.raises(ValueError, match=r"fewer than batch_size \(8\)"):
        datamodule(tmp_path, batch_size=8)
    with pytest.raises(ValueError, match="val_fraction"):
        NGADataModule(root=str(tmp_path), val_fraction=0.0)


def test_a_manifest_that_is_not_utf8_is_one_line(tmp_path):
    make_folder(tmp_path)
    manifest = tmp_path / "manifest.jsonl"
    data = manifest.read_bytes().replace("Dürer".encode(), "Dürer".encode("latin-1"), 1)
    manifest.write_bytes(data)
    offset = data.index(b"\xfc")
    with pytest.raises(DataError) as err:
        datamodule(tmp_path)
    assert str(err.value) == f"{manifest}: not UTF-8 text at byte {offset} (0xfc); save it as UTF-8"


def test_byol_nga_config_trains_and_tests_on_a_tiny_folder(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "data/nga", n=32, size=(48, 40))
    monkeypatch.chdir(tmp_path)  # the config's root, data/nga, is relative
    config = Path(__file__).parents[1] / "configs/byol_nga.yaml"
    tiny = [
        f"--config={config}",
        "--model.backbone=small_cnn",
        "--model.backbone_kwargs={width: 4}",
        "--model.augment.init_args.size=32",
        "--trainer.precision=32",
        "--data.image_size=32",
        "--data.batch_size=8",
        "--data.eval_batch_size=16",
        "--data.num_bank=16",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli_main(["fit", *tiny, "--trainer.max_steps=2", "--trainer.max_epochs=1"])
    cli_main(["test", *tiny, "--ckpt_path=last"])
    out = capsys.readouterr().out
    assert "What the embedding knows" in out
    for label in ("classification", "artist", "century"):
        assert any(line.startswith(label) for line in out.splitlines()), label
    assert Path("runs/byol_nga/version_0/checkpoints/last.ckpt").is_file()
