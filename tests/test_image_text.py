"""Image-text data (contrastive/datamodules/image_text.py): caption tables, bad pairs, and
training through tables and shards; the shards themselves are in test_shards.py."""

import io
import warnings

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from PIL import Image
from test_shards import write_shards

from contrastive.cli import main as cli_main
from contrastive.datamodules import ImageTextDataModule
from contrastive.datamodules.common import DataError, Skipped
from contrastive.datamodules.image_text import CaptionTable, read_caption_table
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
        write_shards(tmp_path, 3, per_shard=2)
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


def test_simclr_trains_on_image_only_shards_through_the_cli(tmp_path, monkeypatch):
    """Shards of images without captions, as many image collections are packed, are data for
    an image method: every image is trained on, none reported as skipped."""
    write_shards(tmp_path, 2, per_shard=4, captions=False)
    monkeypatch.chdir(tmp_path)
    train = f"{tmp_path}/shard-{{000..001}}.tar"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(
            [
                "fit",
                "--model=SimCLR",
                "--model.backbone_kwargs={width: 4}",
                "--model.projector_hidden_dim=16",
                "--model.projector_dim=8",
                "--data=ImageTextDataModule",
                f"--data.train={train}",
                "--data.image_size=16",
                "--data.batch_size=4",
                "--data.num_workers=0",
                "--trainer.max_epochs=1",
                "--trainer.enable_progress_bar=false",
            ]
        )
    assert not [w for w in caught if "skipped" in str(w.message)]
    checkpoint = next(tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt"))
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2  # 8 images, batches of 4
    data = ImageTextDataModule(train, image_size=16, batch_size=4, num_workers=0)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert [len(b["image"]) for b in batches] == [4, 4] and "caption" not in batches[0]
