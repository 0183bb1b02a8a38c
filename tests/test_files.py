"""contrastive/files.py: folder scans through links, tables in UTF-8 (with and without a BOM,
and not UTF-8 at all), and atomic writes with the user's umask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contrastive.files import (
    TableError,
    atomic_writer,
    first_bad_byte,
    json_rows,
    read_rows,
    remove_partial_files,
    scan_images,
    table_rows,
)

# ---- scans ---------------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_scan_is_sorted_recursive_and_counts_other_files(tmp_path):
    expected = [_touch(tmp_path / p) for p in ("b/2.png", "a/deep/1.JPG", "a/0.jpg", "top.webp")]
    _touch(tmp_path / "labels.csv")
    _touch(tmp_path / ".git" / "x.png")  # hidden: neither listed nor counted
    _touch(tmp_path / "a" / ".hidden.jpg")
    images, ignored, repeated = scan_images(tmp_path)
    # os.walk's order: a folder's files, then each sub-folder's tree in sorted order.
    assert images == [tmp_path / p for p in ("top.webp", "a/0.jpg", "a/deep/1.JPG", "b/2.png")]
    assert sorted(images) == sorted(expected) and (ignored, repeated) == (1, 0)


def test_a_link_loop_is_entered_once_and_each_real_file_listed_once(tmp_path):
    real = [_touch(tmp_path / "cat" / f"{i}.jpg") for i in range(3)]
    real.append(_touch(tmp_path / "cat" / "deep" / "3.jpg"))
    (tmp_path / "cat" / "up").symlink_to(tmp_path)  # a loop through the root
    # os.walk(followlinks=True), the old scan, lists the files again on every turn of the loop
    # until the path holds 40 links (several loops multiply: this one alone is enough).
    walked = sum(1 for _, _, files in os.walk(tmp_path, followlinks=True) for _ in files)
    assert walked > 40 * len(real)
    (tmp_path / "cat" / "deep" / "back").symlink_to("..")  # a loop through a parent
    (tmp_path / "cat" / "self").symlink_to(".")
    images, ignored, repeated = scan_images(tmp_path)
    assert images == real and ignored == 0 and repeated == 3


def test_a_link_to_a_sibling_folder_or_a_file_adds_no_image(tmp_path):
    real = [_touch(tmp_path / "a" / f"{i}.png") for i in range(2)]
    (tmp_path / "b").symlink_to(tmp_path / "a")  # the same folder under another name
    (tmp_path / "a" / "again.png").symlink_to(tmp_path / "a" / "0.png")  # a file link inside
    outside = _touch(tmp_path.parent / f"{tmp_path.name}-elsewhere" / "far.png")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "far.png").symlink_to(outside)  # a link to a file found nowhere else
    (tmp_path / "c" / "gone.jpg").symlink_to(tmp_path / "nope.jpg")  # broken: listed
    images, _, repeated = scan_images(tmp_path)
    assert images == [*real, tmp_path / "c" / "far.png", tmp_path / "c" / "gone.jpg"]
    assert repeated == 2  # the folder b, and again.png
    # The sibling seen first: the link's name lists the files, the real folder adds none.
    (tmp_path / "b").unlink()
    (tmp_path / "0-first").symlink_to(tmp_path / "a")
    images, _, _ = scan_images(tmp_path)
    assert images[:2] == [tmp_path / "0-first" / "0.png", tmp_path / "0-first" / "1.png"]
    assert len(images) == 4


# ---- tables --------------------------------------------------------------------------------

TABLE = 'image,caption\nimg/0.jpg,a cat\nimg/1.jpg,"a dog, sitting\nby a wall"\n'


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_table_reads_the_same_with_or_without_a_byte_order_mark(tmp_path, bom):
    path = tmp_path / "pairs.csv"
    path.write_bytes(bom + TABLE.encode())
    assert list(table_rows(path, required=("image", "caption"))) == [
        (2, {"image": "img/0.jpg", "caption": "a cat"}),
        (4, {"image": "img/1.jpg", "caption": "a dog, sitting\nby a wall"}),  # its last line
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(bom + b'{"image": "x.jpg"}\n\nnot json\n[1]\n{"image": "\xc3\xa9"}\n')
    assert list(read_rows(jsonl)) == [
        (1, {"image": "x.jpg"}),
        (3, None),
        (4, None),
        (5, {"image": "é"}),
    ]


def test_a_missing_column_names_the_columns_the_table_has(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("filepath\ttitle\nx.jpg\ta cat\n")
    with pytest.raises(TableError) as err:
        list(table_rows(path, required=("filepath", "caption"), hint="; set caption_column"))
    assert str(err.value) == (
        f"{path}: no column 'caption' (separator '\\t'); its columns are ['filepath', 'title']; "
        "set caption_column"
    )


@pytest.mark.parametrize("offset", [0, 37, (1 << 20) - 1, (1 << 20) + 5])
def test_a_file_that_is_not_utf8_is_one_line_with_the_offset_of_its_first_bad_byte(
    tmp_path, offset
):
    # Two-byte characters up to the bad byte, so one straddles the 1 MiB read boundary.
    text = ("é" * (offset // 2) + "x" * (offset % 2)).encode()
    assert len(text) == offset
    data = text + b"\xe9t\xe9,caption\n" + b"a,b\n" * 10
    path = tmp_path / "latin1.csv"
    path.write_bytes(data)
    with pytest.raises(UnicodeDecodeError) as reference:
        data.decode("utf-8")
    assert first_bad_byte(path) == (reference.value.start, 0xE9) == (offset, 0xE9)
    for read in (lambda: list(table_rows(path)), lambda: list(json_rows(path))):
        with pytest.raises(TableError) as err:
            read()
        assert str(err.value) == f"{path}: not UTF-8 text at byte {offset} (0xe9); save it as UTF-8"


def test_utf16_and_a_cut_last_character_are_named(tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes("image\tcaption\n".encode("utf-16"))
    with pytest.raises(TableError, match=r"at byte 0 \(0xff\) \(it starts with a UTF-16 byte"):
        list(table_rows(path))
    assert first_bad_byte(path) == (0, 0xFF)
    cut = tmp_path / "cut.csv"
    cut.write_bytes(b"image,caption\nx,\xc3")  # the file ends inside a character
    assert first_bad_byte(cut) == (16, 0xC3)
    cut.write_bytes(TABLE.encode())
    assert first_bad_byte(cut) is None


def test_a_csv_error_names_its_line(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_bytes(b"image,caption\nx.jpg,ok\ny.jpg," + b"a" * ((1 << 24) + 1) + b"\n")
    with pytest.raises(TableError, match=r"huge.csv:3: not a valid table row \(field larger"):
        list(table_rows(path))


# ---- writing -------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """Sets a umask for one test and restores the old one."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writer_gives_new_files_the_users_umask(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives: the reference
    with atomic_writer(tmp_path / "out.txt") as f:
        f.write("é\n")
    with atomic_writer(tmp_path / "out.bin", binary=True) as f:
        f.write(b"\x00\x01")
    mode = plain.stat().st_mode & 0o777
    assert mode == 0o666 & ~mask
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01"


def test_atomic_writer_keeps_the_old_file_on_an_error_and_leaves_no_part(tmp_path):
    dest = tmp_path / "manifest.jsonl"
    dest.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_writer(dest) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert dest.read_text() == "old\n" and os.listdir(tmp_path) == ["manifest.jsonl"]
    # What a killed process leaves is cleared by the next run; other files stay.
    (tmp_path / ".manifest.jsonl.1a2b3c4d.part").write_text("half")
    (tmp_path / "notes.part").write_text("a user's file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".x.part").write_text("below: not touched")
    assert remove_partial_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["manifest.jsonl", "notes.part", "sub"]
