"""``contrastive embed`` and ``contrastive similar`` through the real ``main``, on a tiny run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import TINY

from contrastive.cli import main
from contrastive.collection import read_ids
from contrastive.pairs import nearest, top_pairs, top_pairs_faiss


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A SimCLR checkpoint after one step on tiny shapes data (32 px, small CNN of width 4)."""
    root = tmp_path_factory.mktemp("run")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1"])
    finally:
        os.chdir(cwd)
    path = root / "runs" / "contrastive" / "version_0" / "checkpoints" / "last.ckpt"
    assert path.is_file(), f"expected a checkpoint at {path}"
    return path


@pytest.fixture(scope="session")
def ckpt2(ckpt, tmp_path_factory) -> Path:
    """A second model: the first with its weights perturbed, so its similarities differ."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for name, tensor in state["state_dict"].items():
        if tensor.is_floating_point() and "running" not in name:  # BN statistics stay valid
            tensor.add_(0.5 * torch.randn(tensor.shape, generator=gen))
    path = tmp_path_factory.mktemp("other") / "other.ckpt"
    torch.save(state, path)
    return path


def _picture(seed: int, size: int = 40) -> np.ndarray:
    """A smooth random picture (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))


@pytest.fixture()
def folder(tmp_path) -> Path:
    """PNGs (one grayscale, one RGBA, one a byte copy of another), a corrupt PNG, a text file."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    for k in range(4):
        Image.fromarray(_picture(k)).save(d / f"img{k}.png")
    Image.fromarray(_picture(10)).convert("L").save(d / "sub" / "gray.png")
    Image.fromarray(_picture(11)).convert("RGBA").save(d / "sub" / "rgba.png")
    shutil.copy(d / "img2.png", d / "sub" / "copy_of_img2.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (d / "notes.txt").write_text("not an image")
    return d


def _cli(*args: str) -> None:
    main([*args, "--no_progress", "--device", "cpu"])


def test_embed_folder(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    _cli("embed", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out))
    z = np.load(out)
    ids = read_ids(tmp_path / "emb.ids.jsonl")
    expected = sorted(
        p for p in folder.rglob("*.png") if p.name != "broken.png"
    )  # sorted paths, the corrupt one skipped
    assert ids == [str(p) for p in expected]
    assert z.dtype == np.float32 and z.shape[0] == 7 and z.ndim == 2 and z.shape[1] > 0
    assert np.isfinite(z).all()
    err = capsys.readouterr().err
    assert "skipped 1 unreadable" in err and "broken.png" in err
    # the byte-identical copy embeds identically
    assert np.allclose(z[ids.index(str(folder / "img2.png"))], z[ids.index(str(expected[4]))])

    with pytest.raises(SystemExit) as exit_info:  # never overwrites
        _cli("embed", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out))
    assert exit_info.value.code == 2
    assert "exists" in capsys.readouterr().err
    _cli("embed", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out), "--overwrite")


def test_embed_manifest_and_shapes(ckpt, folder, tmp_path):
    manifest = folder / "list.txt"
    manifest.write_text("# two images\nimg3.png\n\nsub/gray.png\n" + f"{folder / 'img0.png'}\n")
    out = tmp_path / "m.npy"
    _cli("embed", "--ckpt", str(ckpt), "--images", str(manifest), "--out", str(out))
    ids = read_ids(tmp_path / "m.ids.jsonl")
    assert ids == [str(folder / "img3.png"), str(folder / "sub/gray.png"), str(folder / "img0.png")]
    assert np.load(out).shape[0] == 3

    out = tmp_path / "s.npy"
    _cli("embed", "--ckpt", str(ckpt), "--images", "shapes:64", "--out", str(out))
    ids = read_ids(tmp_path / "s.ids.jsonl")
    assert ids == [f"shapes:test:{i}" for i in range(64)]
    assert np.load(out).shape[0] == 64


@pytest.mark.parametrize(
    "images, message",
    [("missing_dir", "no such folder"), ("empty", "no images"), ("shapes:x", "shapes:N")],
)
def test_user_mistakes_are_one_line(ckpt, tmp_path, monkeypatch, capsys, images, message):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _cli("embed", "--ckpt", str(ckpt), "--images", images, "--out", "x.npy")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        _cli("embed", "--ckpt", "nope.ckpt", "--images", "empty", "--out", "x.npy")
    assert "--ckpt: no checkpoint file at nope.ckpt" in capsys.readouterr().err


def _table(stdout: str) -> list[list[str]]:
    """The ranked table: the lines after the header, up to the duplicates' section."""
    table = stdout.strip().split("\n\n")[0]
    return [line.split("\t") for line in table.splitlines()[1:]]


def test_similar_pairs_query_and_compare(ckpt, ckpt2, folder, tmp_path, capsys):
    out = tmp_path / "pairs.png"
    _cli("similar", "--ckpt", str(ckpt), "--images", str(folder), "--top", "3", "--out", str(out))
    stdout = capsys.readouterr().out
    rows = _table(stdout)
    assert len(rows) == 3
    copy = str(folder / "sub/copy_of_img2.png")
    # The byte copy is an exact duplicate: reported apart, not ranked.
    assert all(copy not in row for row in rows)
    assert f"dup1\t{folder / 'img2.png'}\t{copy}" in stdout.splitlines()
    assert "exact duplicates: 1 groups of identical images (2 images" in stdout
    assert float(rows[0][1]) >= float(rows[1][1]) >= float(rows[2][1])
    with Image.open(out) as grid:
        assert grid.width > 0 and grid.height > 0

    out = tmp_path / "query.png"
    query = str(folder / "img2.png")
    _cli("similar", "--ckpt", str(ckpt), "--images", str(folder), "--query", query, "--top", "2",
         "--out", str(out), "--compare_ckpt", str(ckpt2))  # fmt: skip
    rows = _table(capsys.readouterr().out)
    assert len(rows) == 2 and len(rows[0]) == 5  # rank, cosine, compare, a, b
    assert rows[0][3] == query and rows[0][4] == str(folder / "sub/copy_of_img2.png")
    assert all(row[4] != query for row in rows)  # the query itself is excluded
    assert float(rows[0][1]) == pytest.approx(1.0, abs=1e-4)
    assert float(rows[0][2]) == pytest.approx(1.0, abs=1e-4)  # identical images in any model
    assert float(rows[1][2]) != pytest.approx(float(rows[1][1]), abs=1e-6)
    assert Image.open(out).size[0] > 0


def test_top_pairs_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(53, 8, generator=gen), dim=1)
    full = (z @ z.T).triu(1)
    full[torch.ones_like(full, dtype=torch.bool).tril()] = float("-inf")
    want, flat = full.flatten().topk(20)
    want_pairs = [(int(f) // 53, int(f) % 53) for f in flat]
    for chunk in (1, 7, 53, 100):
        scores, i, j = top_pairs(z, 20, chunk_size=chunk)
        assert torch.allclose(scores, want)
        assert list(zip(i.tolist(), j.tolist(), strict=True)) == want_pairs
    scores, i, j = top_pairs(z[:3], 10, chunk_size=2)  # fewer pairs than asked: all 3 of them
    assert len(scores) == 3 and bool((i < j).all())


def test_faiss_pair_search_equals_the_exact_torch_search():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen), dim=1)
    want_scores, want_i, want_j = top_pairs(z, 25, chunk_size=64)
    scores, i, j = top_pairs_faiss(z, 25)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == list(
        zip(want_i.tolist(), want_j.tolist(), strict=True)
    )
    scores, i, j = top_pairs_faiss(z[:3], 10)  # fewer pairs than asked: all 3 of them
    assert len(scores) == 3 and bool((i < j).all())


def test_nearest_excludes_the_query_row():
    z = torch.eye(4)
    z[1] = z[0]
    scores, index = nearest(z, z[0], k=2, exclude=0)
    assert index[0] == 1 and scores[0] == 1.0 and 0 not in index.tolist()


def test_similar_compares_with_a_clip_model_from_the_registry(
    ckpt, folder, tmp_path, capsys, tiny_checkpoint
):
    """``--compare_ckpt open_clip:NAME --compare_pretrained WEIGHTS``: the second column is the
    cosine of that model's image embeddings, at its own image size and normalisation."""
    model, weights = tiny_checkpoint
    out = tmp_path / "pairs.png"
    _cli("similar", "--ckpt", str(ckpt), "--images", str(folder), "--top", "2", "--out", str(out),
         "--compare_ckpt", "open_clip:Tiny-Test-ViT", "--compare_pretrained", weights)  # fmt: skip
    rows = _table(capsys.readouterr().out)
    assert len(rows) == 2 and len(rows[0]) == 5

    def clip_image(path):  # the model's own preprocessing, by hand: 32 px, its mean and std
        image = Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255
        mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            return torch.nn.functional.normalize(model.encode_image((x - mean) / std), dim=1)[0]

    a, b = clip_image(rows[1][3]), clip_image(rows[1][4])
    assert float(rows[1][2]) == pytest.approx(float(a @ b), abs=0.02)  # resampling differs
    with pytest.raises(SystemExit):
        _cli("similar", "--ckpt", str(ckpt), "--images", str(folder), "--out",
             str(tmp_path / "x.png"), "--compare_ckpt", "open_clip:ViT-B-23")  # fmt: skip
    assert "close matches: open_clip:ViT-B-32" in capsys.readouterr().err


# ---- outputs: checked before any work, never overwritten -----------------------------------


@contextlib.contextmanager
def _not_root():
    """Permissions as a user other than root sees them (root writes in read-only folders)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)  # nobody
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("command", ["embed", "similar"])
@pytest.mark.parametrize("where", ["read-only folder", "under a file", "a folder"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    command, where, ckpt, folder, tmp_path, capsys
):
    if where == "read-only folder":
        target = Path(tempfile.mkdtemp())  # in /tmp: others may enter its parents
        (target / "keep.txt").write_text("kept")
        target.chmod(0o555)
        out, expected = target / "out.png", f"cannot write in the folder {target}"
    elif where == "under a file":
        (tmp_path / "a_file").write_text("kept")
        out, expected = tmp_path / "a_file" / "sub" / "out.png", "a_file is a file, not a folder"
    else:
        (tmp_path / "out.png").mkdir()
        out, expected = tmp_path / "out.png", "is a folder"
    before = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None
    try:
        as_user = _not_root() if where == "read-only folder" else contextlib.nullcontext()
        with as_user, pytest.raises(SystemExit) as exit_info:
            _cli(command, "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out))
    finally:
        if where == "read-only folder":
            target.chmod(0o755)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0, err  # before embedding: no "embedded"
    after = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None
    assert after == before  # nothing written, nothing replaced
    if where == "read-only folder":
        assert (target / "keep.txt").read_text() == "kept"
        shutil.rmtree(target)


def test_a_newline_in_a_file_name_keeps_one_id_per_row(ckpt, folder, tmp_path, capsys):
    odd = folder / "two\nlines.png"
    shutil.copy(folder / "img1.png", odd)
    shutil.copy(folder / "img3.png", folder / "tab\there.png")
    out = tmp_path / "emb.npy"
    _cli("embed", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out))
    ids = read_ids(tmp_path / "emb.ids.jsonl")
    z = np.load(out)
    assert len(ids) == len(z) == 9 and str(odd) in ids
    assert len((tmp_path / "emb.ids.jsonl").read_text().splitlines()) == len(z)
    # the ids file is a manifest the next command reads back, row for row
    again = tmp_path / "again.npy"
    _cli("embed", "--ckpt", str(ckpt), "--images", str(tmp_path / "emb.ids.jsonl"),
         "--out", str(again))  # fmt: skip
    assert read_ids(tmp_path / "again.ids.jsonl") == ids
    np.testing.assert_allclose(np.load(again), z, atol=1e-6)
    capsys.readouterr()
    _cli("similar", "--ckpt", str(ckpt), "--images", str(folder), "--top", "20",
         "--out", str(tmp_path / "pairs.png"))  # fmt: skip
    stdout = capsys.readouterr().out
    table = _table(stdout)
    # 9 images, 3 of them copies: the 6 distinct ones make 15 pairs, one line of 4 cells each.
    assert len(table) == 15 and all(len(row) == 4 for row in table)
    dups = [line.split("\t")[1:] for line in stdout.splitlines() if line.startswith("dup")]
    assert len(dups) == 3 and all(len(group) == 2 for group in dups)  # one line a group
    shown = {json.loads(c) if c.startswith('"') else c for group in dups for c in group}
    assert str(odd) in shown and str(folder / "tab\there.png") in shown
