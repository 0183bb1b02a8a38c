"""``contrastive data triplets`` (contrastive/tools/triplets.py): pair modes on a folder the tests
write, and the chat describer against a loopback stub of an OpenAI-compatible server."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import TINY

from contrastive import collection
from contrastive.backbones import create_backbone
from contrastive.checkpoints import load_method
from contrastive.cli import main as cli_main
from contrastive.datamodules.images import Reading
from contrastive.datamodules.triplets import read_triplet_manifest
from contrastive.encoder import Encoder
from contrastive.tools import triplets as tool

CLASSES = {"cat": (200, 60, 40), "dog": (40, 160, 60), "bird": (50, 70, 210)}
COLORS = ("red", "green", "blue")
ARTISTS = ("ann", "bo")


def _picture(path: Path, base: tuple[int, int, int], seed: int) -> None:
    """A 24 px PNG: a base colour with seeded noise, so every image embeds differently."""
    noise = np.random.default_rng(seed).integers(-60, 60, (24, 24, 3))
    pixels = np.clip(np.array(base) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def image_set(tmp_path) -> Path:
    """Class folders (4 images each) and ``meta.csv`` giving ``color`` and ``artist`` to most
    images, plus a row whose image is missing and one without a path."""
    root = tmp_path / "set"
    rows = []
    for c, (name, base) in enumerate(CLASSES.items()):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _picture(root / name / f"{i}.png", base, 10 * c + i)
            rows.append({"path": f"{name}/{i}.png", "color": COLORS[(c + i) % 3]})
            rows[-1]["artist"] = ARTISTS[i % 2] if i < 3 else ""  # empty: no artist
    rows += [{"path": "cat/gone.png", "color": "red", "artist": "ann"}, {"path": "", "color": "x"}]
    with open(root / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "color", "artist"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _fields(root: Path) -> dict[str, dict[str, str]]:
    """Every image's fields, by resolved path: its class folder and its meta.csv values."""
    fields = {}
    with open(root / "meta.csv", newline="") as f:
        for row in csv.DictReader(f):
            path = root / row.pop("path")
            if path.is_file():
                values = {k: v for k, v in row.items() if v}
                fields[str(path.resolve())] = {"class": path.parent.name, **values}
    return fields


def _read(out: Path) -> list[dict]:
    """The manifest's rows with their image paths resolved."""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        for key in ("image_a", "image_b", "negative"):
            if key in row:
                row[key] = str((out.parent / row[key]).resolve())
    return rows


def _run(*args: str) -> int:
    return tool.main([str(a) for a in args])


def test_field_pairs_share_the_field_and_negatives_do_not(image_set, tmp_path, capsys):
    out = tmp_path / "out" / "triplets.jsonl"
    common = ["--images", image_set, "--metadata", image_set / "meta.csv", "--out", out]
    args = [*common, "--pairs", "field", "--field", "color", "--field", "class", "--negatives"]
    assert _run(*args, "--num_pairs", "12", "--template", "color=alike in {field}") == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"triplets: made 12 rows in {out} (field 12 (color 6, class 6))")
    assert "skipped 2 (missing image: 1, no image path: 1)" in summary
    fields, rows = _fields(image_set), _read(out)
    assert Counter(row["condition"] for row in rows) == {"color": 6, "class": 6}
    for row in rows:
        name = row["condition"]
        a, b, negative = (fields[row[k]] for k in ("image_a", "image_b", "negative"))
        assert row["image_a"] != row["image_b"]
        assert a[name] == b[name] and negative[name] != a[name]
        if name == "color":
            assert row["text"] == "alike in color"
        else:
            assert row["text"] in {"same class", "they share a class", f"both have class {a[name]}"}
    assert len({frozenset((r["image_a"], r["image_b"], r["condition"])) for r in rows}) == 12
    loaded, skipped = read_triplet_manifest(out)  # the data module reads what the tool wrote
    assert len(loaded) == 12 and skipped == [] and all(r.negative for r in loaded)
    first = out.read_text()
    assert _run(*args, "--num_pairs", "12", "--template", "color=alike in {field}") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == first  # refused: untouched
    rerun = [*args, "--num_pairs", "12", "--template", "color=alike in {field}", "--overwrite"]
    assert _run(*rerun) == 0 and out.read_text() == first  # seeded: the same file
    assert _run(*rerun, "--seed", "1") == 0 and out.read_text() != first
    assert not list(out.parent.glob(".*.part"))  # the temporary file was renamed


def test_a_field_with_few_shared_values_gives_only_the_pairs_it_has(image_set, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    args = ["--metadata", image_set / "meta.csv", "--field", "artist", "--num_pairs", "100"]
    assert _run(*args, "--out", out) == 0
    rows = _read(out)
    # Artists: ann on images 0 and 2 of each class (6 images), bo on image 1 (3): 15 + 3 pairs.
    assert len(rows) == 18
    assert {frozenset((r["image_a"], r["image_b"])) for r in rows}.__len__() == 18


def test_neighbor_pairs_are_among_the_k_nearest(image_set, tmp_path, capsys):
    out = tmp_path / "near.jsonl"
    args = ["--images", image_set, "--pairs", "neighbors", "--backbone", "small_cnn", "--k", "2"]
    extra = ["--image_size", "32", "--num_pairs", "10", "--negatives", "--device", "cpu"]
    assert _run(*args, *extra, "--seed", "3", "--out", out) == 0
    assert "embedded 12 of 12 images with small_cnn" in capsys.readouterr().err
    # Brute force: the same seeded backbone, every similarity.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = Encoder(create_backbone("small_cnn")).eval()
    paths = sorted(image_set.glob("*/*.png"))
    source = collection.ImageSource([str(p) for p in paths], paths=paths)
    z = collection.embed_source(model, source, Reading(32), torch.device("cpu"), progress=False).z
    z = torch.nn.functional.normalize(z, dim=1)
    sims = z @ z.T  # (12, 12)
    sims.fill_diagonal_(float("-inf"))
    index = {str(p.resolve()): i for i, p in enumerate(paths)}
    rows = _read(out)
    assert len(rows) == 10
    assert {r["condition"] for r in rows} == {"neighbors"}
    assert {r["text"] for r in rows} == {"visually similar"}
    for row in rows:
        a, b, n = (index[row[k]] for k in ("image_a", "image_b", "negative"))
        kth = sims[a].topk(2).values[-1]
        assert sims[a, b] >= kth - 1e-5  # b is among a's 2 nearest
        assert sims[a, n] < kth - 1e-5 and n != a  # the negative is not
    assert len({frozenset((r["image_a"], r["image_b"])) for r in rows}) == 10


def test_random_pairs_take_the_text_of_a_shared_field_or_are_skipped(image_set, tmp_path, capsys):
    out = tmp_path / "random.jsonl"
    args = ["--images", image_set, "--metadata", image_set / "meta.csv", "--pairs", "random"]
    assert _run(*args, "--num_pairs", "40", "--out", out) == 0
    summary = capsys.readouterr().out
    fields, rows = _fields(image_set), _read(out)
    for row in rows:
        a, b = fields[row["image_a"]], fields[row["image_b"]]
        name = row["condition"]
        assert a[name] == b[name]
        assert row["text"] in {
            f"same {name}",
            f"they share a {name}",
            f"both have {name} {a[name]}",
        }
    assert 0 < len(rows) < 40 and len({frozenset((r["image_a"], r["image_b"])) for r in rows})
    assert f"(random {len(rows)}); skipped {2 + 40 - len(rows)} " in summary
    assert f"nothing shared: {40 - len(rows)}" in summary


def test_nga_metadata_fields_make_pairs(tmp_path, capsys):
    """A manifest as ``contrastive data nga`` writes it: integer and null values, a path column
    relative to the manifest."""
    root = tmp_path / "nga"
    (root / "images").mkdir(parents=True)
    with open(root / "manifest.jsonl", "w") as f:
        for i in range(6):
            _picture(root / "images" / f"{100 + i}.jpg", (120, 80, 40), i)
            row = {"path": f"images/{100 + i}.jpg", "objectid": 100 + i, "title": f"Work {i}"}
            row.update(artist=("Rembrandt van Rijn", "Albrecht Dürer")[i % 2], medium="oil")
            row.update(year=1650 if i < 3 else None, displaydate="")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.write("not json\n")
    out = root / "triplets.jsonl"
    args = ["--metadata", root / "manifest.jsonl", "--field", "artist", "--field", "year"]
    assert _run(*args, "--num_pairs", "8", "--out", out) == 0
    assert "skipped 1 (malformed row: 1)" in capsys.readouterr().out
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert raw[0]["image_a"].startswith("images/")  # relative to the output's folder
    # Four artist pairs; the year has only three (1650 on three images) and gives just those.
    assert Counter(row["condition"] for row in raw) == {"artist": 4, "year": 3}
    number = {str(root / f"images/{100 + i}.jpg"): i for i in range(6)}
    for row in _read(out):
        a, b = number[row["image_a"]], number[row["image_b"]]
        if row["condition"] == "artist":
            assert a % 2 == b % 2
        else:  # the year: 1650 for the first three, null (never shared) for the others
            assert a < 3 and b < 3
            assert row["text"] in {"same year", "they share a year", "both have year 1650"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "{tmp}/nope", "--field", "class"], "--images {tmp}/nope: no such folder"),
        (["--images", "{tmp}/empty", "--field", "class"], "no images in class folders"),
        (["--images", "{set}", "--field", "colour"], "--field colour: unknown field; fields:"),
        (["--images", "{set}", "--field", "class", "--template", "size=x"], "unknown field"),
        (["--images", "{set}", "--field", "class", "--template", "class={nope}"], "only {field}"),
        (["--images", "{set}", "--pairs", "field,nearby", "--field", "class"], "'nearby'"),
        (["--images", "{set}"], "--pairs field needs --field NAME"),
        (["--images", "{set}", "--pairs", "neighbors"], "needs one of --backbone NAME or --ckpt"),
        (["--images", "{set}", "--pairs", "random", "--describer", "chat"], "--base_url URL"),
        (["--field", "class"], "give --images DIR"),
        (["--metadata", "{set}/meta.csv", "--path_column", "f", "--field", "x"], "no column 'f'"),
        (["--images", "{set}", "--num_pairs", "many"], "invalid int value"),
    ],
)
def test_bad_input_is_one_error_line_and_status_2(image_set, tmp_path, capsys, args, message):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    fill = {"tmp": str(tmp_path), "set": str(image_set)}
    argv = [a.replace("{tmp}", fill["tmp"]).replace("{set}", fill["set"]) for a in args]
    assert _run(*argv, "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    expected = message.replace("{tmp}", fill["tmp"]).replace("{set}", fill["set"])
    assert expected in err
    assert not (tmp_path / "o.jsonl").exists()


def test_the_contrastive_data_command_runs_the_tool(image_set, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    cli_main(
        ["data", "triplets", "--images", str(image_set), "--field", "class", "--out", str(out)]
    )
    assert "triplets: made" in capsys.readouterr().out
    rows, _ = read_triplet_manifest(out)
    assert len(rows) == 18  # 3 classes of 4 images: 3 * 6 pairs, all of them
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "triplets", "--images", str(tmp_path / "nope"), "--out", str(out)])
    assert exit_info.value.code == 2


def test_neighbor_pairs_with_a_trained_checkpoint(image_set, tmp_path, monkeypatch, capsys):
    """``--ckpt``: a method's ``embed`` after one training step (SimCLR, small CNN of width 4)."""
    monkeypatch.chdir(tmp_path)
    cli_main(
        ["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
    )
    ckpt = tmp_path / "runs" / "contrastive" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "near.jsonl"
    args = ["--images", image_set, "--pairs", "neighbors", "--ckpt", ckpt, "--k", "1"]
    assert _run(*args, "--num_pairs", "6", "--device", "cpu", "--out", out) == 0
    assert "(32 dims, 32 px)" in capsys.readouterr().err  # the training image size
    model, reading = load_method(ckpt, torch.device("cpu"))  # as the training data read them
    paths = sorted(image_set.glob("*/*.png"))
    source = collection.ImageSource([str(p) for p in paths], paths=paths)
    z = collection.embed_source(model, source, reading, torch.device("cpu"), progress=False).z
    z = torch.nn.functional.normalize(z, dim=1)
    sims = (z @ z.T).fill_diagonal_(float("-inf"))  # (12, 12)
    index = {str(p.resolve()): i for i, p in enumerate(paths)}
    rows = _read(out)
    assert len(rows) == 6
    for row in rows:
        a, b = index[row["image_a"]], index[row["image_b"]]
        assert sims[a, b] >= sims[a].max() - 1e-5  # the nearest
