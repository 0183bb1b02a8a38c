"""Image-text data: caption tables and webdataset shards, bad pairs, and shard splitting."""

import io
import tarfile
import warnings

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from PIL import Image
from torch.utils.data import DataLoader

from contrastive import distributed
from contrastive.cli import main as cli_main
from contrastive.datamodules import ImageTextDataModule
from contrastive.datamodules.common import Collate, DataError, Skipped
from contrastive.datamodules.image_text import (
    CaptionTable,
    TarShards,
    expand_shards,
    read_caption_table,
    split_plan,
    write_shard,
)
from contrastive.methods import CLIP
from contrastive.text import OpenCLIPText


def _jpeg(value: int, size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size + 4), (value, 255 - value, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def _table(root, separator=",", columns=("image", "caption")):
    """Six good pairs and four bad ones: missing image, empty caption, corrupt image, no path."""
    (root / "img").mkdir()
    lines = [separator.join(columns)]
    for i in range(6):
        (root / "img" / f"{i}.jpg").write_bytes(_jpeg(40 * i))
        lines.append(separator.join([f"img/{i}.jpg", f"a picture number {i}"]))
    (root / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    lines += [
        separator.join(["img/gone.jpg", "a lost picture"]),
        separator.join(["img/0.jpg", "  "]),
        separator.join(["img/bad.jpg", "a broken picture"]),
        separator.join(["", "a caption without an image"]),
    ]
    path = root / ("pairs.tsv" if separator == "\t" else "pairs.csv")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_table_gives_its_pairs_and_skips_bad_rows_with_their_reasons(tmp_path):
    rows = read_caption_table(_table(tmp_path))
    items = [CaptionTable(rows, image_size=16)[i] for i in range(len(rows))]
    good = [item for item in items if not isinstance(item, Skipped)]
    assert [item["caption"] for item in good] == [f"a picture number {i}" for i in range(6)]
    assert good[0]["image"].shape == (3, 16, 16) and good[0]["image"].dtype == torch.uint8
    skipped = {s.reason: s.source for s in items if isinstance(s, Skipped)}
    assert skipped["missing file"].endswith("gone.jpg")
    assert skipped["empty caption"].endswith("pairs.csv:9")  # header is line 1
    assert skipped["corrupt image"].endswith("bad.jpg")
    assert skipped["no image path"].endswith("pairs.csv:11")


def test_column_names_and_separator_are_settings_and_a_wrong_column_is_one_line(tmp_path):
    path = _table(tmp_path, separator="\t", columns=("filepath", "title"))
    rows = read_caption_table(path, image_column="filepath", caption_column="title")
    assert len(rows) == 10 and rows[0][1] == "a picture number 0"  # tab by the .tsv suffix
    with pytest.raises(DataError, match=r"pairs.tsv: no column 'image'.*\['filepath', 'title'\]"):
        read_caption_table(path)
    with pytest.raises(DataError, match="not found"):
        read_caption_table(tmp_path / "nope.csv")


def test_a_table_with_a_byte_order_mark_reads_as_one_without(tmp_path):
    path = _table(tmp_path)
    plain = read_caption_table(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Excel's "CSV UTF-8" saves it
    assert read_caption_table(path) == plain


def test_a_table_that_is_not_utf8_is_one_line_naming_the_file_and_byte(
    tmp_path, monkeypatch, capsys
):
    path = _table(tmp_path)
    data = path.read_bytes().replace(b"number 3", "numéro 3".encode("latin-1"))
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    expected = f"{path}: not UTF-8 text at byte {offset} (0xe9); save it as UTF-8"
    with pytest.raises(DataError) as err:
        read_caption_table(path)
    assert str(err.value) == expected
    monkeypatch.chdir(tmp_path)  # through the command: one line, no traceback
    args = ["fit", "--model=SimCLR", "--data=ImageTextDataModule", f"--data.train={path}"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--model.backbone_kwargs={width: 4}", "--trainer.max_steps=1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: {expected}"


def _shards(root, count: int, per_shard: int = 5) -> list[str]:
    paths = []
    for s in range(count):
        samples = [(f"s{s}/{i:03d}", _jpeg(i * 10 + s), f"pair {s}-{i}") for i in range(per_shard)]
        path = root / f"shard-{s:03d}.tar"
        write_shard(path, samples)
        paths.append(str(path))
    return paths


def test_shards_stream_their_samples_and_skip_bad_ones(tmp_path):
    (path,) = _shards(tmp_path, 1, per_shard=3)
    with tarfile.open(path, "a") as tar:  # a sample without caption, one without image
        for name, data in (("bad/nocap.jpg", _jpeg(1)), ("bad/noimg.txt", b"only words")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(path, "rb").read()[:1500])
    items = list(TarShards([path, str(truncated)], image_size=8))
    good = [i["caption"] for i in items if not isinstance(i, Skipped)]
    assert good[:3] == ["pair 0-0", "pair 0-1", "pair 0-2"]
    reasons = [i.reason for i in items if isinstance(i, Skipped)]
    assert reasons[:2] == ["empty caption", "missing image"]
    assert any(r.startswith("broken shard") for r in reasons)  # and the stream went on


def test_brace_ranges_and_globs_expand(tmp_path):
    assert expand_shards("s/{008..011}.tar") == [f"s/{i:03d}.tar" for i in range(8, 12)]
    assert expand_shards(["a.tar", "pipe:cat b.tar"]) == ["a.tar", "pipe:cat b.tar"]
    paths = _shards(tmp_path, 3, per_shard=1)
    assert expand_shards(str(tmp_path / "shard-*.tar")) == paths


def test_split_plan_deals_shards_then_samples():
    assert split_plan(8, 1, 2, 0, 2) == ([1, 5], [])  # shards by rank, then by worker
    assert split_plan(3, 1, 2, 1, 2) == ([1], [(1, 2)])  # rank 1 has one shard: samples split
    assert split_plan(1, 0, 2, 1, 2) == ([0], [(0, 2), (1, 2)])


@pytest.mark.parametrize("num_shards", [8, 3, 1])
def test_two_ranks_of_two_workers_read_every_sample_exactly_once(tmp_path, monkeypatch, num_shards):
    urls = _shards(tmp_path, num_shards, per_shard=6)
    expected = sorted(f"s{s}/{i:03d}" for s in range(num_shards) for i in range(6))
    seen = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        dataset = TarShards(urls, image_size=8, shuffle=True, shuffle_buffer=4)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=Collate())
        seen += [key for batch in loader for key in batch["key"]]
    assert sorted(seen) == expected  # no duplicate, nothing missing


def test_samples_per_epoch_gives_every_rank_the_same_number_of_samples(tmp_path, monkeypatch):
    urls = _shards(tmp_path, 3, per_shard=5)  # 15 samples: 10 for rank 0, 5 for rank 1
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        dataset = TarShards(urls, image_size=8, samples_per_epoch=7)
        keys = [item["key"] for item in dataset]
        assert len(keys) == 7 == len(dataset)  # rank 1 cycles through its 5 again


class _Keys(Callback):
    def __init__(self):
        self.captions = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.captions += list(batch.get("caption", []))  # {} when all were skipped


@pytest.mark.parametrize("kind", ["table", "shards"])
def test_clip_trains_through_each_source_and_reports_the_skipped_pairs(tmp_path, kind):
    if kind == "table":
        train = str(_table(tmp_path))
        expected = [f"a picture number {i}" for i in range(6)]
    else:
        train = str(tmp_path / "shard-{000..002}.tar")
        _shards(tmp_path, 3, per_shard=2)
        expected = [f"pair {s}-{i}" for s in range(3) for i in range(2)]
    data = ImageTextDataModule(train, image_size=16, batch_size=2, num_workers=1)
    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=16, embed_dim=8)
    model = CLIP(text_tower=text, embed_dim=8, backbone_kwargs={"width": 4})
    keys = _Keys()
    trainer = Trainer(
        max_epochs=1 if kind == "table" else None,
        max_steps=-1 if kind == "table" else 3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[keys],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    if kind == "table":  # every good pair once per epoch (a batch of 2 may lose one to a skip)
        assert set(keys.captions) <= set(expected) and len(keys.captions) >= 4
        report = [str(w.message) for w in caught if "skipped" in str(w.message)]
        assert report and "train epoch 0: skipped" in report[0] and "gone.jpg" in "".join(report)
    else:
        assert sorted(keys.captions) == expected
        assert "tokens" in next(iter(data.train_dataloader()))  # tokenized in the worker
