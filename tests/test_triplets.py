"""Triplet manifests (contrastive/datamodules/triplets.py): validation on load, items, loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastive.datamodules import TripletManifestDataModule
from contrastive.datamodules.common import DataError, Skipped
from contrastive.datamodules.triplets import TripletDataset, read_triplet_manifest


def tokenize(texts: list[str]) -> torch.Tensor:
    """A trivial picklable tokenizer: each text's length and its first character."""
    return torch.tensor([[len(t), ord(t[0])] for t in texts])  # (B, 2)


def _images(root: Path, n: int = 6) -> list[str]:
    """``n`` small PNGs and one corrupt file under ``root/img``; their paths relative to root."""
    (root / "img").mkdir()
    for i in range(n):
        Image.new("RGB", (20, 14), (40 * i, 255 - 40 * i, 90)).save(root / "img" / f"{i}.png")
    (root / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return [f"img/{i}.png" for i in range(n)]


def _jsonl(root: Path, lines: list) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _bad_manifest(root: Path) -> Path:
    """Four good rows (one with a negative, one absolute path) and one of each bad kind."""
    img = _images(root)
    good = [
        {"image_a": img[0], "image_b": img[1], "text": "same color", "condition": "color"},
        {"image_a": img[1], "image_b": img[2], "text": "same shape", "negative": img[3]},
        {"image_a": str(root / img[2]), "image_b": img[3], "text": " both small "},
        {"image_a": img[4], "image_b": img[5], "text": "same color", "condition": "color"},
    ]
    bad = [
        {"image_a": img[0], "image_b": "img/gone.png", "text": "same color"},  # line 5
        {"image_a": img[0], "image_b": img[1], "text": "x", "negative": "img/gone.png"},  # 6
        {"image_a": img[0], "image_b": img[1], "text": "   "},  # 7: empty text
        '{"image_a": "img/0.png", "image_b": ',  # 8: malformed JSON
        "[1, 2, 3]",  # 9: JSON, but not an object
        {"image_a": img[0], "image_b": img[1], "caption": "same"},  # 10: no text key
        {"image_a": img[0], "image_b": img[1], "text": 7},  # 11: text not a string
    ]
    return _jsonl(root, [*good, *bad])


def test_a_jsonl_manifest_keeps_good_rows_and_counts_bad_ones_with_one_warning(tmp_path):
    path = _bad_manifest(tmp_path)
    with pytest.warns(UserWarning) as caught:
        rows, skipped = read_triplet_manifest(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message
    assert "skipped 7 bad samples" in message
    assert "missing image: 2" in message and "malformed row: 3" in message
    assert "empty text: 1" in message and "missing key 'text': 1" in message
    assert f"{path}:5 (missing image)" in message  # the first few are named
    assert [r.text for r in rows] == ["same color", "same shape", "both small", "same color"]
    assert [r.condition for r in rows] == ["color", "all", "all", "color"]
    assert rows[0].image_a == str(tmp_path / "img/0.png")  # relative to the manifest's folder
    assert rows[2].image_a == str(tmp_path / "img/2.png")  # absolute kept
    assert rows[1].negative == str(tmp_path / "img/3.png") and rows[0].negative is None
    reasons = {s.source: s.reason for s in skipped}
    assert reasons == {
        f"{path}:5": "missing image",
        f"{path}:6": "missing image",
        f"{path}:7": "empty text",
        f"{path}:8": "malformed row",
        f"{path}:9": "malformed row",
        f"{path}:10": "missing key 'text'",
        f"{path}:11": "malformed row",
    }


def _csv(root: Path, separator: str = ",", header: str = "image_a,image_b,text,condition") -> Path:
    img = _images(root)
    lines = [
        header,
        f"{img[0]},{img[1]},same color,color",
        f"{img[1]},img/gone.png,same color,color",  # line 3: missing image
        f"{img[2]},{img[3]},,shape",  # line 4: empty text
        f'{img[3]},{img[4]},"same hue, roughly",',  # quoted comma; no condition: "all"
    ]
    path = root / ("pairs.tsv" if separator == "\t" else "pairs.csv")
    path.write_text("\n".join(line.replace(",", separator) for line in lines) + "\n")
    return path


def test_a_csv_manifest_skips_bad_rows_and_a_missing_column_is_one_line(tmp_path):
    path = _csv(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 2 bad samples \(missing image: 1, empty text"):
        rows, skipped = read_triplet_manifest(path)
    assert [(r.text, r.condition) for r in rows] == [
        ("same color", "color"),
        ("same hue, roughly", "all"),
    ]
    assert {s.source: s.reason for s in skipped} == {
        f"{path}:3": "missing image",
        f"{path}:4": "empty text",
    }
    (tmp_path / "no_text.csv").write_text("image_a,image_b,caption\nimg/0.png,img/1.png,same\n")
    with pytest.raises(DataError) as err:
        read_triplet_manifest(tmp_path / "no_text.csv")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'no_text.csv'}: no column 'text'")


def test_a_byte_order_mark_is_read_past_and_a_file_not_utf8_is_one_line(tmp_path):
    _images(tmp_path)
    row = {"image_a": "img/0.png", "image_b": "img/1.png", "text": "même couleur"}
    for name in ("bom.jsonl", "bom.csv"):
        path = tmp_path / name
        body = (
            json.dumps(row, ensure_ascii=False) + "\n"
            if name.endswith("jsonl")
            else f"{','.join(row)}\n"
        )
        if name.endswith("csv"):
            body += ",".join(row.values()) + "\n"
        path.write_bytes(b"\xef\xbb\xbf" + body.encode())
        rows, skipped = read_triplet_manifest(path)  # the first line or header is whole
        assert [r.text for r in rows] == ["même couleur"] and skipped == [], name
        data = path.read_bytes().replace("même".encode(), "même".encode("cp1252"))
        path.write_bytes(data)
        offset = data.index(b"\xea")
        with pytest.raises(DataError) as err:
            read_triplet_manifest(path)
        assert str(err.value) == f"{path}: not UTF-8 text at byte {offset} (0xea); save it as UTF-8"


def test_a_tsv_manifest_is_read_with_tabs(tmp_path):
    path = tmp_path / "pairs.tsv"
    _images(tmp_path)
    path.write_text("image_a\timage_b\ttext\nimg/0.png\timg/1.png\tsame, or nearly\n")
    rows, skipped = read_triplet_manifest(path)
    assert [r.text for r in rows] == ["same, or nearly"] and skipped == []


def test_a_manifest_without_usable_rows_or_file_is_a_one_line_error(tmp_path):
    _images(tmp_path)
    path = _jsonl(tmp_path, [{"image_a": "img/gone.png", "image_b": "img/0.png", "text": "a"}])
    with pytest.raises(DataError, match=r"manifest.jsonl: no usable triplet rows .*missing image"):
        read_triplet_manifest(path)
    with pytest.raises(DataError, match="triplet manifest not found"):
        read_triplet_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "pairs.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"\.jsonl, \.csv or \.tsv"):
        read_triplet_manifest(tmp_path / "pairs.parquet")


def test_items_have_negatives_on_every_item_when_any_row_has_one(tmp_path):
    with pytest.warns(UserWarning):
        rows, _ = read_triplet_manifest(_bad_manifest(tmp_path))
    items = [TripletDataset(rows, image_size=12)[i] for i in range(len(rows))]
    for item in items:
        assert set(item) == {"image", "view", "text", "condition", "negative", "has_negative"}
        for key in ("image", "view", "negative"):
            assert item[key].shape == (3, 12, 12) and item[key].dtype == torch.uint8
    assert [item["has_negative"] for item in items] == [False, True, False, False]
    assert items[0]["negative"].eq(0).all() and items[1]["negative"].float().mean() > 0
    without = TripletDataset([rows[0], rows[3]], image_size=12)
    assert set(without[0]) == {"image", "view", "text", "condition"}


def test_an_image_that_does_not_decode_is_skipped_when_fetched(tmp_path):
    _images(tmp_path)
    path = _jsonl(tmp_path, [{"image_a": "img/0.png", "image_b": "img/bad.png", "text": "a"}])
    rows, _ = read_triplet_manifest(path)  # it exists, so it passes the check on load
    item = TripletDataset(rows, image_size=8)[0]
    assert isinstance(item, Skipped)
    assert item.source.endswith("bad.png") and item.reason == "corrupt image"


def _rows(root: Path, n: int, negatives: bool = True, name: str = "train.jsonl") -> Path:
    """``n`` good rows over 6 images; every third with a negative; conditions color/shape."""
    if not (root / "img").exists():
        _images(root)
    lines = []
    for i in range(n):
        row = {"image_a": f"img/{i % 6}.png", "image_b": f"img/{(i + 1) % 6}.png"}
        row.update(text=f"triplet {i}", condition=("color", "shape")[i % 2])
        if negatives and i % 3 == 0:
            row["negative"] = f"img/{(i + 2) % 6}.png"
        lines.append(row)
    path = root / name
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return path


def test_loaders_give_triplet_batches_with_the_condition_as_text(tmp_path):
    dm = TripletManifestDataModule(
        str(_rows(tmp_path, 20)), val_fraction=0.25, image_size=16, batch_size=4, eval_batch_size=3
    )
    dm.tokenizer = tokenize  # what a method that reads captions does in its setup
    dm.setup("fit")
    offer = dm.evaluation_data()  # triplets, no labels and no kNN bank
    assert dm.conditions == ["color", "shape"] and offer.conditions == ["color", "shape"]
    assert offer.num_classes == {} and not offer.has_bank
    train = list(dm.train_dataloader())
    assert len(train) == 3  # 15 training rows, batches of 4, the last incomplete one dropped
    batch = train[0]
    assert set(batch) == {
        "image",
        "view",
        "negative",
        "has_negative",
        "text",
        "condition",
    }
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert batch["view"].shape == batch["negative"].shape == (4, 3, 16, 16)
    assert batch["has_negative"].dtype == torch.bool and batch["has_negative"].shape == (4,)
    # The condition stays a string: Conditional embeds each distinct one once, from its cache.
    assert all(isinstance(t, str) for t in batch["text"])
    val = dm.val_dataloader()  # one loader of triplets, not [bank, query]
    sizes = [len(b["text"]) for b in val]
    assert sizes == [3, 2] and "text" in next(iter(val))
    assert next(iter(dm.test_dataloader()))["text"] == next(iter(val))["text"]  # falls back


def test_the_validation_split_is_disjoint_complete_and_seeded(tmp_path):
    path = str(_rows(tmp_path, 40))

    def split(seed: int) -> tuple[list[str], list[str]]:
        dm = TripletManifestDataModule(path, val_fraction=0.2, seed=seed)
        dm.setup("fit")
        return tuple([r.source for r in dm._splits[s][0]] for s in ("train", "val"))

    train, val = split(0)
    assert len(val) == 8 and not set(train) & set(val)
    assert sorted(train + val, key=lambda s: int(s.rsplit(":", 1)[1])) == [
        f"{path}:{i}" for i in range(1, 41)
    ]
    assert split(0) == (train, val)
    assert split(1)[1] != val


def test_val_and_test_manifests_and_no_validation(tmp_path):
    train = str(_rows(tmp_path, 8, negatives=False))
    val = str(_rows(tmp_path, 3, name="val.jsonl"))
    test = str(_rows(tmp_path, 5, negatives=False, name="test.jsonl"))
    dm = TripletManifestDataModule(train, val_manifest=val, test_manifest=test, batch_size=2)
    dm.setup("fit")
    assert len(dm._splits["train"][0]) == 8  # nothing held out when val_manifest is given
    assert "negative" not in next(iter(dm.train_dataloader()))
    assert "negative" in next(iter(dm.val_dataloader()))  # val.jsonl has negatives
    assert len(next(iter(dm.test_dataloader()))["text"]) == 5
    none = TripletManifestDataModule(train, val_fraction=0.0, batch_size=2)
    assert none.val_dataloader() == []
    with pytest.raises(DataError, match="no test triplets: set data.test_manifest"):
        none.test_dataloader()
    small = TripletManifestDataModule(train, val_fraction=0.0, batch_size=9)
    with pytest.raises(DataError, match="8 training rows, fewer than batch_size 9"):
        small.train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ({"image_size": 0}, "image_size must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"eval_batch_size": 0}, "eval_batch_size must be >= 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
    ],
)
def test_argument_ranges_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletManifestDataModule("m.jsonl", **kwargs)


def test_the_data_module_trains_through_the_real_cli(tmp_path, monkeypatch):
    """``--data TripletManifestDataModule``: configured by LightningCLI, one validation loader."""
    from contrastive.cli import main

    manifest = _rows(tmp_path, 24)
    monkeypatch.chdir(tmp_path)
    data = [f"--data.manifest={manifest}", "--data.val_fraction=0.25", "--data.image_size=16"]
    data += ["--data.batch_size=8", "--data.eval_batch_size=8"]
    trainer = ["--trainer.max_steps=2", "--trainer.logger.init_args.save_dir=runs"]
    trainer += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    model = ["--model=SimCLR", "--model.backbone_kwargs={width: 4}"]
    main(["fit", *model, "--data=TripletManifestDataModule", *data, *trainer])
    assert list((tmp_path / "runs").rglob("last.ckpt"))
