"""GeneCIS data: annotation files in the format of github.com/facebookresearch/genecis, read
with image folders the tests write (JPEGs through Pillow), crops checked against GeneCIS's own
Pillow code written out here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from contrastive.cli import main
from contrastive.datamodules.common import DataError, Skipped
from contrastive.datamodules.genecis import (
    TASKS,
    GeneCISDataModule,
    GeneCISDataset,
    dilated_box,
    pad_square,
    read_annotations,
)
from contrastive.datamodules.images import resize_center_crop


def genecis_crop(image: Image.Image, bbox: list[float]) -> Image.Image:
    """GeneCIS's ``VAWDataset.load_cropped_image`` (dilation 0.7, padded to a square)."""
    width, height = bbox[2], bbox[3]
    left, top = max(0, bbox[0] - 0.7 * width), max(0, bbox[1] - 0.7 * height)
    right = min(image.size[0], left + 1.7 * width)
    bottom = min(image.size[1], top + 1.7 * height)
    im = image.crop((left, top, right, bottom))
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new(im.mode, (side, side), (0, 0, 0))
    out.paste(im, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def test_the_crop_is_genecis_own_dilation_clamping_and_padding():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)  # (H, W, 3)
    image = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W)
    boxes = [
        [50, 30, 20, 10],  # inside, wider than tall
        [0, 0, 30, 60],  # at the top left corner: clamped at 0
        [120, 70, 19, 19],  # at the bottom right: clamped at W and H
        [10.5, 20.5, 7, 9],  # halves: Pillow rounds half to even
        [2.25, 3.75, 135.5, 85.25],  # nearly the whole image
        *rng.uniform([0, 0, 1, 1], [130, 80, 60, 60], (40, 4)).round(2).tolist(),
    ]
    for box in boxes:
        left, top, right, bottom = dilated_box(tuple(box), 140, 90)
        ours = pad_square(image[:, top:bottom, left:right]).permute(1, 2, 0).numpy()
        theirs = np.asarray(genecis_crop(Image.fromarray(pixels), box))
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), box


def test_dilated_box_by_hand():
    # x=10, y=20, w=10, h=40 in a 100 x 50 image: left 3, top max(0, -8) = 0, right 3 + 17,
    # bottom min(50, 0 + 68) = 50.
    assert dilated_box((10, 20, 10, 40), 100, 50) == (3, 0, 20, 50)
    assert dilated_box((95, 45, 10, 10), 100, 50) == (88, 38, 100, 50)
    assert dilated_box((0.25, 0, 1, 1), 10, 10) == (0, 0, 2, 2)  # 1.95 rounds to 2
    assert dilated_box((200, 10, 5, 5), 100, 50)[2] == 100  # right of the image: left > right


def write_jpeg(path: Path, color: tuple[int, int, int], size=(64, 48), box=None, exif=None):
    """A flat image (with a white rectangle at ``box`` x, y, w, h), as a JPEG."""
    image = Image.new("RGB", size, color)
    if box is not None:
        x, y, w, h = box
        image.paste((255, 255, 255), (x, y, x + w, y + h))
    image.save(path, quality=95, **({"exif": exif} if exif else {}))


def coco(i: int) -> dict:
    return {"val_image_id": i}


def object_record(condition: str, ref: int, target: int, gallery: list[int]) -> dict:
    return {
        "condition": condition,
        "reference": coco(ref),
        "target": coco(target),
        "gallery": [coco(g) for g in gallery],
    }


@pytest.fixture()
def object_task(tmp_path) -> tuple[Path, Path]:
    """focus_object in GeneCIS's format: two records of 14 distractors, COCO file names."""
    images = tmp_path / "val2017"
    images.mkdir()
    for i in range(1, 17):
        write_jpeg(images / f"{i:012d}.jpg", (i * 15, 100, 255 - i * 15))
    records = [
        object_record("cardboard", 1, 2, list(range(3, 17))),
        object_record("wall", 16, 3, [1, 2, *range(4, 16)]),
    ]
    annotations = tmp_path / "focus_object.json"
    annotations.write_text(json.dumps(records, indent=4))
    return annotations, images


def test_object_records_give_the_reference_the_text_and_the_target_first(object_task):
    annotations, images = object_task
    data = GeneCISDataModule(
        "focus_object", str(annotations), str(images), image_size=32, batch_size=2
    )
    data.setup("test")
    assert not data.mismatched
    batch = next(iter(data.test_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["gallery"].shape == (2, 15, 3, 32, 32)
    assert batch["text"] == ["cardboard", "wall"] and batch["target"].tolist() == [0, 0]
    assert batch["gallery_mask"].all() and batch["index"].tolist() == [0, 1]
    assert batch["task"].tolist() == [0, 0] and data.evaluation_data().gallery_tasks == {
        "focus_object": 2
    }
    # Flat colours survive JPEG: each image is the one its id names.
    red = batch["gallery"][:, :, 0].float().mean((2, 3))  # (2, 15)
    assert torch.allclose(red[0], torch.tensor([i * 15.0 for i in range(2, 17)]), atol=3)
    assert abs(batch["image"][1, 0].float().mean() - 16 * 15) < 3
    assert abs(red[1, 0] - 3 * 15) < 3  # record 1's target (image 3) first


def test_attribute_records_are_cropped_around_their_box(tmp_path):
    images = tmp_path / "VG_100K"
    images.mkdir()
    boxes = {7: [40, 30, 20, 10], 8: [0, 0, 16, 24], 9: [110, 70, 10, 10]}
    for image_id, box in boxes.items():
        write_jpeg(images / f"{image_id}.jpg", (0, 0, 200), size=(120, 80), box=box)
    entries = [{"image_id": i, "instance_bbox": b} for i, b in boxes.items()]
    record = {
        "condition": "color",
        "reference": entries[0],
        "target": entries[1],
        "gallery": [entries[2]] * 9,
    }
    annotations = tmp_path / "focus_attribute.json"
    annotations.write_text(json.dumps([record]))
    data = GeneCISDataModule("focus_attribute", str(annotations), str(images), image_size=40)
    data.setup("test")
    item = data.test_dataloader().dataset[0]
    assert item["gallery"].shape == (10, 3, 40, 40) and item["gallery_mask"].all()
    for image_id, got in ((7, item["image"]), (8, item["gallery"][0]), (9, item["gallery"][1])):
        expected = genecis_crop(
            Image.open(images / f"{image_id}.jpg").convert("RGB"), boxes[image_id]
        )
        expected = torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1)
        expected = resize_center_crop(expected, 40)
        # Two JPEG decoders (Pillow's, torchvision's) and a resize of sharp edges.
        assert (got.float() - expected.float()).abs().mean() < 4
    # GeneCIS's dilation grows the box to the left and up only (right = left + 1.7 w = x + w):
    # the 20 x 10 box at (40, 30) gives a 34 x 17 crop with the box in its right 20 columns
    # and lower 10 rows, padded to 34 x 34 with 8 black rows above; at 40 px, x 16.5-40 and
    # y 17.6-29.4 are white, left of it the blue background, above it black.
    image = item["image"].float()
    assert image[:, 19:28, 19:39].min() > 200
    assert image[2, 19:28, 2:14].mean() > 150 and image[0, 19:28, 2:14].mean() < 50
    assert image[:, :8].max() < 40


def test_pixels_are_read_as_stored_not_turned_by_exif(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    write_jpeg(images / "5.jpg", (0, 0, 200), size=(120, 60), box=[0, 0, 30, 60], exif=exif)
    write_jpeg(images / "6.jpg", (0, 0, 200), size=(120, 60))
    entry = {"image_id": 5, "instance_bbox": [0, 0, 30, 60]}  # in the stored frame: left strip
    other = {"image_id": 6, "instance_bbox": [0, 0, 10, 10]}
    record = {"condition": "white", "reference": entry, "target": other, "gallery": [other] * 9}
    (tmp_path / "a.json").write_text(json.dumps([record]))
    dataset = GeneCISDataModule("focus_attribute", str(tmp_path / "a.json"), str(images), 32)
    dataset.setup()
    image = dataset.test_dataloader().dataset[0]["image"].float()
    # In the stored frame the box is the left strip: crop 51 x 60 from the left edge, padded
    # to 60 x 60 with 4 black columns either side; the box is x 4-34 (2-18 at 32 px), the
    # blue background x 34-55. Turned by the EXIF tag, the image would be 60 wide, 120 high.
    assert image[:, :, 4:16].min() > 200
    assert image[2, :, 20:28].mean() > 150 and image[0, :, 20:28].mean() < 50


def test_a_missing_image_or_a_box_outside_its_image_skips_the_record(object_task, tmp_path):
    annotations, images = object_task
    records = json.loads(annotations.read_text())
    records[0]["reference"] = coco(99)  # no such file
    annotations.write_text(json.dumps(records))
    data = GeneCISDataModule("focus_object", str(annotations), str(images), 16, batch_size=2)
    data.setup()
    batch = next(iter(data.test_dataloader()))
    assert batch["text"] == ["wall"] and batch["index"].tolist() == [1]
    (skipped,) = batch["skipped"]
    assert skipped == Skipped(str(images / f"{99:012d}.jpg"), "missing file")
    vg = tmp_path / "vg"
    vg.mkdir()
    write_jpeg(vg / "1.jpg", (9, 9, 9), size=(50, 50))
    outside = {"image_id": 1, "instance_bbox": [80, 10, 5, 5]}
    inside = {"image_id": 1, "instance_bbox": [10, 10, 5, 5]}
    dataset = GeneCISDataset(read_annotations_list(tmp_path, outside, inside), vg, 16, 10)
    assert dataset[0] == Skipped(
        f"{vg / '1.jpg'} box [80.0, 10.0, 5.0, 5.0]", "box outside the image"
    )


def read_annotations_list(tmp_path: Path, reference: dict, other: dict):
    record = {"condition": "c", "reference": reference, "target": other, "gallery": [other] * 9}
    (tmp_path / "x.json").write_text(json.dumps([record]))
    return read_annotations(tmp_path / "x.json", "focus_attribute")


def test_a_gallery_of_another_size_is_reported_and_kept(object_task, recwarn):
    annotations, images = object_task
    records = json.loads(annotations.read_text())
    records[1]["gallery"] = records[1]["gallery"][:9]
    annotations.write_text(json.dumps(records))
    data = GeneCISDataModule("change_object", str(annotations), str(images), 16, batch_size=2)
    with pytest.warns(UserWarning, match=r"1 of 2 records rank other than 15 images \(records 1"):
        data.setup()
    assert data.mismatched == {"change_object": [1]}
    batch = next(iter(data.test_dataloader()))
    assert batch["gallery"].shape == (2, 15, 3, 16, 16)
    assert batch["gallery_mask"].sum(1).tolist() == [15, 10]
    assert batch["gallery"][1, 10:].max() == 0  # padding, masked out


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not JSON"),
        ('{"condition": "x"}', "must hold a JSON list"),
        ('[{"condition": "x", "reference": {}}]', "record 0: missing target, gallery"),
        ('[{"condition": "", "reference": {}, "target": {}, "gallery": []}]', "non-empty string"),
        (
            '[{"condition": "x", "reference": {"image_id": 1, "instance_bbox": [0, 0, 1, 1]}, '
            '"target": {}, "gallery": []}]',
            "record 0 'reference': expected an integer "
            "'val_image_id' \\(an attribute task's file\\?\\)",
        ),
        (
            '[{"condition": "x", "reference": {"val_image_id": 1}, "target": {"val_image_id": 2}, '
            '"gallery": [{"val_image_id": "3"}]}]',
            r"record 0 'gallery'\[0\]",
        ),
    ],
)
def test_malformed_annotations_are_one_clear_line(tmp_path, content, message):
    path = tmp_path / "focus_object.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_annotations(path, "focus_object")


def test_malformed_attribute_entries_are_one_clear_line(tmp_path):
    path = tmp_path / "change_attribute.json"
    good = {"image_id": 1, "instance_bbox": [0, 0, 2, 2]}
    for entry, message in [
        ({"val_image_id": 1}, "an object task's file"),
        ({"image_id": 1, "instance_bbox": [0, 0, 2]}, "four numbers"),
        ({"image_id": "../x", "instance_bbox": [0, 0, 2, 2]}, "'image_id' must be a number"),
    ]:
        path.write_text(
            json.dumps([{"condition": "c", "reference": good, "target": entry, "gallery": []}])
        )
        with pytest.raises(DataError, match=message):
            read_annotations(path, "change_attribute")
    with pytest.raises(DataError, match="annotation file not found"):
        read_annotations(tmp_path / "missing.json", "change_attribute")
    with pytest.raises(DataError, match="unknown task 'focus_color'"):
        read_annotations(path, "focus_color")


def test_the_module_checks_its_settings(object_task, tmp_path):
    annotations, images = object_task
    with pytest.raises(ValueError, match="unknown GeneCIS task"):
        GeneCISDataModule("focus_colour", str(annotations), str(images))
    with pytest.raises(ValueError, match="gallery_size must be >= 2"):
        GeneCISDataModule("focus_object", str(annotations), str(images), gallery_size=1)
    missing = GeneCISDataModule("focus_object", str(annotations), str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="images folder not found"):
        missing.setup()
    assert TASKS["focus_attribute"].gallery_size == 10
    assert GeneCISDataModule("focus_object", str(annotations), str(images)).gallery_sizes == [15]


def test_several_tasks_share_one_loader_with_ids_unique_across_them(object_task, tmp_path):
    annotations, images = object_task
    records = json.loads(annotations.read_text())
    records[0]["gallery"] = records[0]["gallery"][:9]  # change_object ranks 15: reported
    other = tmp_path / "change_object.json"
    other.write_text(json.dumps(records[:1] * 3))
    data = GeneCISDataModule(
        ["focus_object", "change_object"], [str(annotations), str(other)], str(images), 16,
        batch_size=8,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="genecis change_object: 3 of 3 records"):
        data.setup()
    assert data.evaluation_data().gallery_tasks == {"focus_object": 2, "change_object": 3}
    (batch,) = list(data.test_dataloader())
    assert batch["task"].tolist() == [0, 0, 1, 1, 1]
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]  # the second task's follow the first's
    assert batch["gallery_mask"].sum(1).tolist() == [15, 15, 10, 10, 10]
    with pytest.raises(ValueError, match="2 GeneCIS tasks need as many annotations files"):
        GeneCISDataModule(["focus_object", "change_object"], str(annotations), str(images))
    with pytest.raises(ValueError, match="named twice"):
        GeneCISDataModule(["focus_object"] * 2, [str(annotations)] * 2, str(images))


def test_the_cli_takes_task_annotations_and_images(object_task, capsys):
    annotations, images = object_task
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "test",
                "--model=SimCLR",
                "--data=GeneCISDataModule",
                "--data.task=focus_object",
                f"--data.annotations={annotations}",
                f"--data.images={images}",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == "contrastive.datamodules.GeneCISDataModule"
    assert data["init_args"]["task"] == "focus_object"
    assert data["init_args"]["annotations"] == str(annotations)
