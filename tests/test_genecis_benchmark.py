"""GeneCIS's score on fixtures written in GeneCIS's own format (tests/test_genecis.py), with a
constructed model whose answers are known; the metric over batches and over 2 processes."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from contrastive.datamodules.genecis import GeneCISDataModule
from contrastive.evaluation import GeneCISEvaluation
from contrastive.evaluation.conditional_benchmark import ConditionalModel
from contrastive.evaluation.genecis_benchmark import (
    GeneCISRecall,
    average_recall,
    gallery_scores,
    genecis_recall,
    scorers_of,
    target_ranks,
)
from contrastive.evaluation.retrieval import rank_relevant
from tests.ddp import run_ddp
from tests.test_genecis import object_record, write_jpeg

WORDS = ("red", "green", "blue")  # text i is the one-hot of channel i


class Palette(L.LightningModule):
    """A constructed text-conditioned model: an image is its mean colour, centred (3-d); the
    condition "red" keeps the red channel alone, so images match in redness only."""

    def encode_image(self, images):
        return images.float().mean((2, 3)) / 255 - 0.5  # (B, 3)

    def encode_text(self, texts):
        return torch.eye(3)[[WORDS.index(t) for t in texts]]  # (N, 3), in the image space

    def condition_inputs(self, images):
        return self.encode_image(images)

    def condition_from(self, inputs, text):
        return F.normalize(inputs * text, dim=-1)

    def test_step(self, batch, batch_idx):
        return {"embedding": self.encode_image(batch["image"])}


class Towers(Palette):
    """The same towers without the conditioning (CLIP's interface)."""

    condition_inputs = condition_from = None


@pytest.fixture()
def redness(tmp_path):
    """focus_object in GeneCIS's format: the reference is red and not green, its target red and
    green, the 14 distractors neither red nor green: by colour alone every distractor is closer
    than the target; in redness only the target matches. A second record names an image that
    is not there."""
    images = tmp_path / "val2017"
    images.mkdir()
    write_jpeg(images / f"{1:012d}.jpg", (230, 20, 128))  # the reference
    write_jpeg(images / f"{2:012d}.jpg", (230, 235, 128))  # the target: red, and green
    for i in range(3, 17):
        write_jpeg(images / f"{i:012d}.jpg", (30 + 2 * i, 20, 128))  # not red, not green
    records = [
        object_record("red", 1, 2, list(range(3, 17))),
        object_record("red", 1, 2, [99, *range(3, 16)]),  # 99: missing, the record skipped
    ]
    annotations = tmp_path / "focus_object.json"
    annotations.write_text(json.dumps(records))
    data = GeneCISDataModule("focus_object", str(annotations), str(images), 16, batch_size=2)
    data.setup("test")
    return data


def test_the_conditioned_scorer_ranks_the_target_first_where_image_only_does_not(redness):
    assert isinstance(Palette(), ConditionalModel) and not isinstance(Towers(), ConditionalModel)
    batch = next(iter(redness.test_dataloader()))
    assert len(batch["text"]) == 1 and batch["skipped"]  # the record with a missing image
    scores = gallery_scores(
        Palette(), batch["image"], batch["text"], batch["gallery"], batch["gallery_mask"]
    )
    ranks = {s: target_ranks(v).item() for s, v in scores.items()}
    assert ranks["conditioned"] == 0  # red and red: only the target
    assert ranks["image"] == 14  # every distractor's colour is closer than the target's
    assert ranks["text"] == 0 and ranks["image+text"] == 0  # "red" names what the target has
    image = F.normalize(Palette().encode_image(batch["image"]), dim=-1)  # the image scorer
    gallery = F.normalize(Palette().encode_image(batch["gallery"][0]), dim=-1)
    torch.testing.assert_close(scores["image"][0], gallery @ image[0])
    towers = gallery_scores(
        Towers(), batch["image"], batch["text"], batch["gallery"], batch["gallery_mask"]
    )
    assert list(towers) == ["image", "text", "image+text"]


def test_padding_is_never_ranked_and_ties_count_against_the_model():
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.0], [0.2, 0.2, 0.1, 0.0]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    ranks = target_ranks(scores.masked_fill(~mask, float("-inf")))
    assert ranks.tolist() == [1, 1]  # the tie with a distractor ranks the target second
    relevant = torch.zeros(2, 4, dtype=torch.bool)
    relevant[:, 0] = True
    assert ranks.tolist() == rank_relevant(scores, relevant).first.tolist()


def test_recall_per_task_and_the_average():
    ranks = torch.tensor([[0, 3], [1, 0], [2, 2], [0, 0]])  # (N, S): conditioned, image
    tasks = torch.tensor([0, 0, 0, 1])
    out = genecis_recall(ranks, tasks, ["focus_object", "change_object"], ["c", "i"])
    assert out[("focus_object", "c")] == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    assert out[("focus_object", "i")] == pytest.approx({"R@1": 1 / 3, "R@2": 1 / 3, "R@3": 2 / 3})
    assert out[("change_object", "i")]["R@1"] == 1.0
    assert average_recall(out, ["c", "i"]) == pytest.approx({"c": 2 / 3, "i": 2 / 3})
    assert genecis_recall(ranks, tasks, ["focus_object", "x", "y"], ["c", "i"]).keys() == {
        ("focus_object", "c"), ("focus_object", "i"), ("x", "c"), ("x", "i")
    }  # fmt: skip


def _records(n: int = 9) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ranks = {s: torch.randint(0, 5, (n,), generator=g) for s in scorers_of(Palette())}
    return ranks, torch.randint(0, 2, (n,), generator=g), torch.arange(n)


def _ddp_recall(rank: int, world_size: int) -> tuple[dict, dict]:
    ranks, tasks, ids = _records()
    rows = torch.cat([torch.arange(9), torch.tensor([0])])[rank::2]  # a sampler pads 9 to 10
    metric = GeneCISRecall(["a", "b"], list(ranks))
    for part in rows.split(3):
        metric.update({s: r[part] for s, r in ranks.items()}, tasks[part], ids[part])
    return metric.compute()


def test_the_metric_equals_the_functional_form_on_one_process_and_on_two():
    ranks, tasks, ids = _records()
    stacked = torch.stack(list(ranks.values()), 1)
    expected = genecis_recall(stacked, tasks, ["a", "b"], list(ranks))
    metric = GeneCISRecall(["a", "b"], list(ranks))
    for part in torch.arange(9).split(4):
        metric.update({s: r[part] for s, r in ranks.items()}, tasks[part], ids[part])
    counts = {"a": int((tasks == 0).sum()), "b": int((tasks == 1).sum())}
    assert metric.compute() == (expected, counts)
    for result, scored in run_ddp(_ddp_recall):
        assert result == expected and scored == counts  # the padded record counted once


def test_a_trainer_prints_the_table_with_the_skipped_records(redness, tmp_path, capsys):
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[GeneCISEvaluation()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.test(Palette(), redness)  # (a ContrastiveMethod also warns, naming the file)
    out = capsys.readouterr().out
    assert "GeneCIS (Vaze et al. 2023)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["conditioned"] == ["1.000", "1.000", "1.000"]
    assert rows["image"] == ["0.000", "0.000", "0.000"]
    assert "records scored: focus_object 1 of 2 (1 skipped: missing or unreadable" in out
    assert trainer.callback_metrics["test/genecis/focus_object/conditioned/R@1"] == 1.0
    assert trainer.callback_metrics["test/genecis/average/image/R@1"] == 0.0
