"""The text files that describe an image folder (contrastive/datamodules/folder_lists.py):
subset lists and ImageNet's val label files, through ImageFolderDataModule."""

from __future__ import annotations

import pytest
from test_imagefolder import CLASS_COLORS, color_class, data, image_bytes, items, write_class_tree

from contrastive.datamodules.common import Skipped
from contrastive.datamodules.folder_lists import ImageFolderError


def test_subset_file_keeps_and_renumbers_classes(tmp_path):
    write_class_tree(tmp_path / "train", per_class=3)
    subset = tmp_path / "subset.txt"
    subset.write_text("# two of three\nowl\n\ndog  # trailing comment\n")
    module = data(tmp_path / "train", subset=subset, val_fraction=0.0)
    assert module.class_names == {"class": ("dog", "owl")}
    train = items(module._datasets["train"])
    assert len(train) == 6
    for item in train:
        assert color_class(item["image"]) == ("dog", "owl")[item["labels"]["class"]]

    subset.write_text("owl\nzebra\n")
    with pytest.raises(ImageFolderError, match="names 1 classes with no folder in .*: zebra"):
        data(tmp_path / "train", subset=subset)


def test_imagenet_val_layout_flat_folder_and_label_file(tmp_path):
    write_class_tree(tmp_path / "train", per_class=2)
    val = tmp_path / "val"
    val.mkdir()
    truth = {"v1": "owl", "v2": "cat", "v3": "dog", "v4": "cat", "v5": "owl"}
    for name, cls in truth.items():
        (val / f"ILSVRC_{name}.JPEG").write_bytes(image_bytes(CLASS_COLORS[cls], "JPEG"))
    (val / "ILSVRC_unlisted.JPEG").write_bytes(image_bytes(CLASS_COLORS["cat"], "JPEG"))
    labels = tmp_path / "LOC_val_solution.csv"  # ImageNet's form: header, stems, boxes
    rows = [f"ILSVRC_{n},{c} 1 2 3 4 {c} 5 6 7 8" for n, c in truth.items() if n != "v5"]
    labels.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\nILSVRC_gone,dog 1\n")
    module = data(tmp_path / "train", val_root=val, val_labels=labels)
    query = module._datasets["query"]
    assert len(query) == 5  # four listed images and one listed but missing file
    got = items(query)
    assert got[-1] == Skipped(str(val / "ILSVRC_gone"), "missing file")
    for item in got[:-1]:
        assert color_class(item["image"]) == module.class_names["class"][item["labels"]["class"]]
    assert len(module._datasets["train"]) == 6  # val_root: nothing held out of root

    # Caffe's val.txt: full file names and class indices into the sorted folders; subset.
    labels.write_text("ILSVRC_v1.JPEG 2\nILSVRC_v2.JPEG 0\nILSVRC_v3.JPEG 1\n")
    subset = tmp_path / "subset.txt"
    subset.write_text("cat\nowl\n")
    module = data(tmp_path / "train", val_root=val, val_labels=labels, subset=subset)
    got = items(module._datasets["query"])
    assert [module.class_names["class"][i["labels"]["class"]] for i in got] == ["owl", "cat"]

    labels.write_text("ILSVRC_v1.JPEG owl\nILSVRC_v2.JPEG zebra\n")
    with pytest.raises(ImageFolderError, match=r"LOC_val_solution.csv:2: class 'zebra'"):
        data(tmp_path / "train", val_root=val, val_labels=labels)


def test_list_and_label_files_with_a_byte_order_mark_or_not_utf8(tmp_path):
    write_class_tree(tmp_path / "train", per_class=2)
    subset = tmp_path / "subset.txt"
    subset.write_bytes(b"\xef\xbb\xbfowl\r\ndog\r\n")  # Windows Notepad's UTF-8
    module = data(tmp_path / "train", subset=subset, val_fraction=0.0)
    assert module.class_names == {"class": ("dog", "owl")}
    val = tmp_path / "val"
    val.mkdir()
    (val / "a.jpg").write_bytes(image_bytes(CLASS_COLORS["cat"], "JPEG"))
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbfa.jpg,cat\n")  # the first line is a row, not a header
    module = data(tmp_path / "train", val_root=val, val_labels=labels)
    (item,) = items(module._datasets["query"])  # found: its name does not start with the BOM
    assert item["path"] == str(val / "a.jpg") and item["labels"] == {"class": 0}
    labels.write_bytes("a.jpg,cat  # 'café'\n".encode("latin-1"))
    expected = f"{labels}: not UTF-8 text at byte 17 (0xe9); save it as UTF-8"
    with pytest.raises(ImageFolderError) as err:
        data(tmp_path / "train", val_root=val, val_labels=labels)
    assert str(err.value) == expected
