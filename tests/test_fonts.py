"""The typefaces data: the font catalog, the glyph table and its splits, rendering, the data
module and the triplets. Only DejaVu is used (fonts-dejavu, on every machine the suite runs);
fontconfig's answers are also faked where a test needs fonts DejaVu does not have."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORE, DEJAVU, EXTRA

from contrastive.cli import main
from contrastive.datamodules import font_catalog
from contrastive.datamodules import fonts as fonts_module
from contrastive.datamodules.common import DataError
from contrastive.datamodules.font_catalog import (
    FIELDS,
    covers,
    family_name,
    parse_entries,
    read_catalog,
)
from contrastive.datamodules.font_glyphs import ATTRIBUTES, GlyphRenderer, GlyphTable
from contrastive.datamodules.fonts import FontsDataModule, FontsDataset, caption


def small(fonts: Path, cls=FontsDataModule, **kwargs):
    settings = {
        "fonts": str(fonts),
        "image_size": 24,
        "num_train": 64,
        "num_bank": 32,
        "batch_size": 16,
        "eval_batch_size": 32,
        **kwargs,
    }
    data = cls(**settings)
    data.setup("fit")
    return data


# ---- the catalog -----------------------------------------------------------------------


def entry(
    file: str,
    family: str,
    style: str,
    weight: str,
    slant: str = "0",
    width: str = "100",
    charset: str = "20-7e",
    langs: str | None = None,
) -> str:
    langs = langs or ",".join("en" for _ in family.split(","))
    return "\t".join([file, "0", family, langs, style, weight, slant, width, charset])


def test_fontconfig_entries_become_faces_and_the_rest_is_counted_by_reason(fonts, monkeypatch):
    sans, bold = str(fonts / "DejaVuSans.ttf"), str(fonts / "DejaVuSans-Bold.ttf")
    lines = [
        entry(sans, "DejaVu Sans", "Book", "80"),
        entry(bold, "DejaVu Sans", "Bold", "200"),
        entry(sans, "DejaVu Sans", "SemiBold", "180"),  # bold class, loses to "Bold"
        entry(bold, "DejaVu Sans", "Medium", "100"),  # regular class, loses to "Book"
        entry(sans, "DejaVu Sans,DejaVu Sans Light", "ExtraLight", "40"),
        entry(sans, "DejaVu Sans", "Regular", "[40 205]"),  # a variable font
        entry(sans, "DejaVu Sans", "Regular", "80", charset="20-60"),  # no lower case
        entry("/x/font.pfb", "Type One", "Regular", "80"),
        entry(str(fonts / "DejaVuSans-Oblique.ttf"), "DejaVu Sans", "Oblique", "80", slant="110"),
        entry(
            str(fonts / "DejaVuSerif.ttf"),
            "DejaVu Serif,DejaVu Serif Condensed",
            "Condensed",
            "80",
            width="87",
        ),
        entry(str(fonts / "DejaVuSerif-Bold.ttf"), "DejaVu Serif", "Bold", "200"),
        entry(
            str(fonts / "DejaVuSansMono.ttf"),
            "DejaVu Sans Mono,Lang Name",
            "Book",
            "80",
            langs="en,de",
        ),
    ]
    parsed = parse_entries("\n".join(lines) + "\nnot\ta\tfull\tline\n")
    assert len(parsed) == len(lines) and set(parsed[0]) == set(FIELDS)
    monkeypatch.setattr(font_catalog, "fontconfig_entries", lambda folder: parsed)
    catalog = read_catalog("anything")
    assert [(f.name, f.spacing) for f in catalog.faces] == [
        ("DejaVu Sans", "proportional"),
        ("DejaVu Sans Bold", "proportional"),
        ("DejaVu Sans Italic", "proportional"),
        ("DejaVu Sans Mono", "monospace"),  # measured: fontconfig said nothing
        ("DejaVu Serif Bold", "proportional"),
        ("DejaVu Serif Condensed", "proportional"),  # another width of "DejaVu Serif"
    ]
    assert catalog.faces[0].file == sans and catalog.faces[1].file == bold
    assert catalog.skipped == Counter(
        {
            "duplicate of a kept face": 2,
            "variable font": 1,
            "weight neither regular nor bold": 1,
            "lacks a letter": 1,
            "not a .ttf/.otf/.ttc file": 1,
        }
    )
    assert catalog.families == (
        "DejaVu Sans",
        "DejaVu Sans Mono",
        "DejaVu Serif",
        "DejaVu Serif Condensed",
    )
    summary = catalog.summary()
    assert "6 faces in 4 families" in summary and "duplicate of a kept face: 2" in summary
    only = read_catalog("anything", families=["DejaVu Serif"])  # the others are not counted
    assert [f.name for f in only.faces] == ["DejaVu Serif Bold"] and not only.skipped


def test_charsets_and_family_names():
    assert covers("20-7e a0-17f", "azé") and not covers("20-60 7b", "a")
    assert covers("61 62-63", "abc") and not covers("", "a")
    assert family_name(["DejaVu Sans", "DejaVu Sans Condensed"], 87, qualify=True) == (
        "DejaVu Sans Condensed"
    )
    assert family_name(["Liberation Sans Narrow"], 75, qualify=False) == "Liberation Sans Narrow"
    assert family_name(["Roboto"], 75, qualify=True) == "Roboto Condensed"  # the width's name
    assert family_name(["Roboto"], 100, qualify=True) == "Roboto"


def test_a_folder_is_read_through_fc_scan(fonts):
    catalog = read_catalog(str(fonts))
    assert catalog.families == ("DejaVu Sans", "DejaVu Sans Mono", "DejaVu Serif")
    assert catalog.source == str(fonts) and not catalog.skipped and not catalog.empty
    for face in catalog.faces:
        stem = Path(face.file).stem
        assert (face.weight == "bold") == ("Bold" in stem)
        assert (face.slant == "italic") == ("Oblique" in stem or "Italic" in stem)
        assert (face.spacing == "monospace") == ("Mono" in stem)
    assert len(catalog.faces) == len(CORE + EXTRA)


def test_installed_fonts_are_found_through_fc_list():
    if not (DEJAVU / "DejaVuSansMono.ttf").is_file():
        pytest.skip("DejaVu Sans Mono is not installed")
    catalog = read_catalog(None, families=["DejaVu Sans Mono"])
    assert catalog.source == "fontconfig" and catalog.families == ("DejaVu Sans Mono",)
    assert {f.spacing for f in catalog.faces} == {"monospace"}
    assert "DejaVu Sans Mono Bold" in {f.name for f in catalog.faces}


def test_font_problems_are_one_clear_line(fonts, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no usable font in"):
        read_catalog(str(tmp_path))
    with pytest.raises(DataError, match="is not a folder"):
        read_catalog(str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"families not found: Comic Sans \(found: DejaVu Sans,"):
        read_catalog(str(fonts), families=["Comic Sans", "DejaVu Serif"])
    with pytest.raises(DataError, match="covering '一'"):  # no CJK in DejaVu
        read_catalog(str(fonts), letters="一")
    monkeypatch.setenv("PATH", str(tmp_path))  # no fontconfig
    with pytest.raises(DataError, match="fontconfig's fc-list was not found"):
        read_catalog(None)


def test_the_cli_says_when_no_font_is_found(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fonts").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--model=SimCLR",
                "--data=FontsDataModule",
                "--data.fonts=fonts",
                "--trainer.max_steps=1",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: fonts: no usable font in 'fonts'" in err


# ---- glyphs, splits and rendering --------------------------------------------------------


def test_glyphs_are_held_out_by_name_the_same_whatever_else_is_installed(fonts):
    catalog = read_catalog(str(fonts))
    table = GlyphTable(catalog, "abcdefghijklmnopqrstuvwxyz", seed=0, held_out=0.4)
    rows = np.concatenate(list(table.splits.values()))
    assert sorted(rows.tolist()) == list(range(len(table.glyphs)))  # a partition
    assert len(table.glyphs) == len(catalog.faces) * 26
    train = table.labels[table.splits["train"]]
    for split in ("val", "test"):
        held = table.labels[table.splits[split]]
        assert 0.1 < len(held) / len(table.glyphs) < 0.3
        train_pairs = {tuple(r) for r in train[:, :2]}  # (letter, family)
        assert set(held[:, 0]) <= set(train[:, 0]) and set(held[:, 1]) <= set(train[:, 1])
        keys = {(catalog.faces[f].name, k) for f, k in table.glyphs[table.splits[split]]}
        train_keys = {(catalog.faces[f].name, k) for f, k in table.glyphs[table.splits["train"]]}
        assert not keys & train_keys and train_pairs
    serif = read_catalog(str(fonts), families=["DejaVu Serif"])
    alone = GlyphTable(serif, "abcdefghijklmnopqrstuvwxyz", seed=0, held_out=0.4)

    def split_of(t: GlyphTable) -> dict:
        return {
            (t.catalog.faces[f].name, k): s
            for s, rows in t.splits.items()
            for f, k in t.glyphs[rows]
        }

    together = split_of(table)
    assert all(together[key] == s for key, s in split_of(alone).items())
    other_seed = GlyphTable(catalog, "abcdefghijklmnopqrstuvwxyz", seed=1, held_out=0.4)
    assert split_of(other_seed) != together


def test_a_split_without_glyphs_is_one_clear_line(fonts):
    catalog = read_catalog(str(fonts), families=["DejaVu Serif"])
    with pytest.raises(DataError, match="no glyph in the (val|test) split"):
        GlyphTable(catalog, "ab", seed=0, held_out=0.01)


def test_glyphs_that_render_empty_are_counted_and_left_out(fonts):
    catalog = read_catalog(str(fonts), letters="a b")  # the space is in every charset
    assert {c for _, c in catalog.empty} == {" "} and len(catalog.empty) == len(catalog.faces)
    assert "glyphs render empty" in catalog.summary()
    table = GlyphTable(catalog, "a b", seed=0, held_out=0.5)
    assert set(table.glyphs[:, 1].tolist()) == {0, 2}


def ink_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the dark pixels of a ``(3, S, S)`` image."""
    ink = (image[0] < 128).nonzero()
    return (
        ink[:, 0].min().item(),
        ink[:, 0].max().item(),
        ink[:, 1].min().item(),
        ink[:, 1].max().item(),
    )


def test_glyphs_are_drawn_black_on_white_centred_within_the_jitter(fonts):
    catalog = read_catalog(str(fonts), families=["DejaVu Sans"])
    render = GlyphRenderer(
        catalog, image_size=32, glyph_scale=0.7, size_jitter=0.1, position_jitter=0.08
    )
    centre = np.full(3, 0.5)
    image = render(0, "o", centre)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and image[:, 0].min() == 255  # white margin
    top, bottom, left, right = ink_box(image)
    assert abs((top + bottom) / 2 - 15.5) <= 1 and abs((left + right) / 2 - 15.5) <= 1
    moved = ink_box(render(0, "o", np.array([0.5, 1.0, 0.0])))  # right and up, at most
    assert 1 <= (moved[2] + moved[3]) / 2 - 15.5 <= 0.08 * 32 + 1
    assert -0.08 * 32 - 1 <= (moved[0] + moved[1]) / 2 - 15.5 <= -1
    large, tiny = (ink_box(render(0, "o", np.array([u, 0.5, 0.5]))) for u in (1.0, 0.0))
    assert large[1] - large[0] > tiny[1] - tiny[0]  # the size jitter
    big = GlyphRenderer(
        catalog, image_size=32, glyph_scale=1.0, size_jitter=0.0, position_jitter=0.5
    )(0, "W", np.array([0.5, 1.0, 1.0]))
    top, bottom, left, right = ink_box(big)  # too wide at this scale: drawn smaller, inside
    assert left >= 0 and right <= 31 and big[:, :, 0].min() == 255 and big[:, :, -1].min() == 255


# ---- the data set and the data module ---------------------------------------------------------


def test_items_are_a_function_of_seed_split_and_index(fonts):
    a, b = small(fonts), small(fonts)
    for split in ("train", "val", "test"):
        for i in (0, 5):
            x, y = a._datasets[split][i], b._datasets[split][i]
            assert torch.equal(x["image"], y["image"]) and x["labels"] == y["labels"]
    other = small(fonts, seed=1)
    assert not torch.equal(a._datasets["train"][0]["image"], other._datasets["train"][0]["image"])


def test_items_carry_their_labels_and_a_caption_that_names_them(fonts):
    data = small(fonts)
    names = data.class_names
    assert data.num_classes == {"letter": 26, "family": 3, "weight": 2, "slant": 2, "spacing": 2}
    dataset = data._datasets["train"]
    for i in range(30):
        item = dataset[i]
        labels = item["labels"]
        glyph, _ = dataset.glyph(i)
        face = data.table.catalog.faces[data.table.glyphs[glyph, 0]]
        assert names["family"][labels["family"]] == face.family
        assert names["weight"][labels["weight"]] == face.weight
        letter = names["letter"][labels["letter"]]
        assert item["caption"] == f"the letter {letter} in {face.name}"


def test_captions_name_what_they_are_asked_to():
    names = {
        "letter": "g",
        "family": "DejaVu Serif",
        "weight": "bold",
        "slant": "italic",
        "spacing": "proportional",
    }
    assert caption(names) == "the letter g in DejaVu Serif Bold Italic"
    assert caption(names, ["family"]) == "a letter in DejaVu Serif"
    assert caption(names, ["letter", "weight", "spacing"]) == (
        "the letter g in bold proportional type"
    )
    assert caption(names, ["letter"]) == "the letter g" and caption(names, []) == "a letter"


def test_eval_splits_show_every_held_out_glyph_once(fonts):
    data = small(fonts)
    bank, query = data.val_dataloader()
    val = data.table.splits["val"]
    assert len(query.dataset) == len(val) and len(bank.dataset) == 32
    shown = [query.dataset.glyph(i)[0] for i in range(len(val))]
    assert sorted(shown) == sorted(val.tolist())
    batch = next(iter(query))
    assert batch["image"].shape[1:] == (3, 24, 24) and set(batch["labels"]) == set(ATTRIBUTES)
    assert len(small(fonts, num_test=7).test_dataloader()[1].dataset) == 7


def test_views_share_the_named_attributes_and_are_new_on_every_fetch(fonts):
    data = small(fonts, shared_factors=["letter"])
    dataset = data._datasets["train"]
    for i in range(20):
        item = dataset[i]
        view = dataset.labels(
            dataset.table.matching(dataset.glyph(i)[0], ["letter"], dataset.pool)[0]
        )
        assert view["letter"] == item["labels"]["letter"]
        letter = data.class_names["letter"][item["labels"]["letter"]]
        assert item["view_caption"].startswith(f"the letter {letter} in ")
    same = small(fonts, shared_factors=list(ATTRIBUTES))._datasets["train"]
    first, second = same[3], same[3]
    assert first["view_caption"] == first["caption"] == second["view_caption"]
    assert not torch.equal(first["view"], second["view"])  # the same glyph, jittered anew
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['colour'\]"):
        FontsDataModule(fonts=str(fonts), shared_factors=["colour"])


def test_caption_dropout_leaves_attributes_out(fonts):
    dataset = small(fonts, caption_dropout=0.5)._datasets["train"]
    captions = {dataset[i % 4]["caption"] for i in range(40)}
    assert len(captions) > 4 and any(c.startswith("a letter") for c in captions)


def test_caption_dropout_per_attribute_keeps_the_family_in_every_caption(fonts):
    dataset = small(fonts, caption_dropout={"letter": 0.5, "weight": 0.5})._datasets["train"]
    items = [dataset[i % 4] for i in range(40)]
    families = dataset.table.class_names["family"]
    for item in items:
        family = families[item["labels"]["family"]]
        assert f" in {family}" in item["caption"], item["caption"]
    assert any(it["caption"].startswith("a letter in") for it in items)
    with pytest.raises(ValueError, match="caption_dropout: 'colour' is no attribute"):
        FontsDataModule(fonts=str(fonts), caption_dropout={"colour": 0.5})


def test_the_data_module_checks_its_settings(fonts):
    for kwargs, message in [
        ({"image_size": 8}, "image_size"),
        ({"letters": "aa"}, "distinct"),
        ({"held_out": 1.0}, "held_out"),
        ({"size_jitter": 1.5}, "size_jitter"),
        ({"num_train": 8, "batch_size": 16}, "num_train"),
    ]:
        with pytest.raises(ValueError, match=message):
            FontsDataModule(fonts=str(fonts), **kwargs)
    with pytest.raises(ValueError, match="split must be one of"):
        FontsDataset(small(fonts).table, None, 4, split="dev")


def test_an_items_image_is_drawn_once_per_process_within_a_bound(fonts, monkeypatch):
    data = small(fonts)
    dataset = data._datasets["train"]
    drawn = [dataset[i]["image"] for i in range(8)]
    assert len(dataset._drawn) == 8
    for i, image in enumerate(drawn):  # the same as drawing it anew, and the same object
        assert torch.equal(image, dataset.draw(*dataset.glyph(i)))
        assert dataset[i]["image"] is image
    monkeypatch.setattr(fonts_module, "DRAWN_BYTES", 10 * drawn[0].nbytes)
    for i in range(8, 16):
        dataset[i]
    assert len(dataset._drawn) == 10  # no room for more
