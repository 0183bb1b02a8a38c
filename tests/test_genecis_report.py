"""``contrastive test ... --data GeneCISDataModule`` end to end through ``contrastive.cli.main``:
a Conditional checkpoint (all four scorers), a CLIP config with no checkpoint (the three
baselines) and a registry open_clip pair scored untrained as open_clip itself scores, on
GeneCIS-format fixtures with a record skipped."""

from __future__ import annotations

import lightning as L
import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY

from contrastive.cli import main
from contrastive.datamodules import GeneCISDataModule
from contrastive.evaluation import GeneCISEvaluation
from contrastive.evaluation.genecis_benchmark import gallery_scores, target_ranks
from contrastive.methods import Conditional
from contrastive.text import OpenCLIPText
from tests.test_clip_pretrained import _clip, _open_clip_views, pretrained  # noqa: F401 (a fixture)
from tests.test_genecis_benchmark import redness  # noqa: F401 (a fixture)

TEXT = {
    "class_path": "contrastive.text.OpenCLIPText",
    "init_args": {"model": "ViT-B-32", "width": 32, "layers": 1, "heads": 2,
                  "context_length": 16, "embed_dim": 24},
}  # fmt: skip
CALLBACKS = [  # a config's usual callbacks: the others stay quiet on GeneCIS data
    {"class_path": "contrastive.evaluation.EmbeddingReport"},
    {"class_path": "contrastive.evaluation.GeneCISEvaluation"},
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run with no logger saves its config in the working folder


def _config(tmp_path, method: str, **init_args) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {"logger": False, "enable_progress_bar": False, "callbacks": CALLBACKS},
        "model": {
            "class_path": f"contrastive.methods.{method}",
            "init_args": {
                "backbone": "small_cnn",
                "backbone_kwargs": {"width": 4},
                "text_tower": TEXT,
                **init_args,
            },
        },  # fmt: skip
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _data_args(data) -> list[str]:
    return [
        "--data=GeneCISDataModule", "--data.task=focus_object", "--data.image_size=16",
        f"--data.annotations={data.annotations[0]}", f"--data.images={data.images[0]}",
    ]  # fmt: skip


def _rows(out: str) -> dict[str, list[float]]:
    head, *lines = out[out.index("GeneCIS (Vaze") :].splitlines()[3:8]
    rows = {}
    for line in [head, *lines]:
        if line.split() and line.split()[0] in ("conditioned", "image", "text", "image+text"):
            rows[line.split()[0]] = [float(v) for v in line.split()[1:]]
    return rows


def test_a_conditional_checkpoint_prints_all_four_scorers(redness, tmp_path, capsys):  # noqa: F811
    config = _config(tmp_path, "Conditional", embed_dim=8, conditioning_kwargs={"hidden_dim": 16})
    model = Conditional(
        text_tower=OpenCLIPText(**TEXT["init_args"]), backbone="small_cnn",
        backbone_kwargs={"width": 4}, embed_dim=8, conditioning_kwargs={"hidden_dim": 16},
    )  # fmt: skip
    trainer = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[GeneCISEvaluation()])
    trainer.test(model, redness)
    ckpt = tmp_path / "conditional.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)  # the test's own file
    del saved["hyper_parameters"]  # built in Python: the config says what the model is
    torch.save(saved, ckpt)
    capsys.readouterr()
    main(["test", "--config", config, "--ckpt_path", str(ckpt), *_data_args(redness)])
    out = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows) == ["conditioned", "image", "text", "image+text"]
    assert "records scored: focus_object 1 of 2 (1 skipped" in out
    batch = next(iter(redness.test_dataloader()))  # the one record scored, by hand
    with torch.no_grad():
        scores = gallery_scores(model.eval(), batch["image"], batch["text"], batch["gallery"],
                                batch["gallery_mask"])  # fmt: skip
    for scorer, s in scores.items():
        rank = target_ranks(s).item()
        assert rows[scorer] == [float(rank < k) for k in (1, 2, 3)], scorer


def test_a_clip_config_with_no_checkpoint_prints_the_baselines(redness, tmp_path, capsys):  # noqa: F811
    config = _config(tmp_path, "CLIP", embed_dim=16)
    main(["test", "--config", config, *_data_args(redness)])
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["image", "text", "image+text"]
    assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for v in rows.values())


def test_a_method_without_text_is_one_clear_line(redness, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["test", "--model=SimCLR", "--trainer.logger=false",
              "--trainer.callbacks+=GeneCISEvaluation", *_data_args(redness)])  # fmt: skip
    assert "SimCLR has no encode_image and encode_text" in capsys.readouterr().err


def test_a_registry_open_clip_pair_is_scored_untrained_as_open_clip_scores(
    redness,  # noqa: F811
    pretrained,  # noqa: F811
    tmp_path,
    capsys,
):
    reference, path = pretrained
    tiny = {"model": TINY, "pretrained": path}
    config = {
        "trainer": {"logger": False, "enable_progress_bar": False, "callbacks": CALLBACKS},
        "model": {
            "class_path": "contrastive.methods.CLIP",
            "init_args": {
                "backbone": f"open_clip:{TINY}",
                "backbone_kwargs": {"pretrained": path},
                "text_tower": {"class_path": "contrastive.text.OpenCLIPText", "init_args": tiny},
                "embed_dim": None,  # the pair's own projections into its joint space
            },
        },
    }
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(config))
    args = [a for a in _data_args(redness) if not a.startswith("--data.image_size")]
    main(["test", "--config", str(tmp_path / "pair.yaml"), *args, "--data.image_size=32"])
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["image", "text", "image+text"]
    # The one record scored, by hand with open_clip's own towers and normalisation.
    data = GeneCISDataModule("focus_object", redness.annotations[0], redness.images[0], 32)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    tokens = open_clip.get_tokenizer(TINY)(batch["text"])
    with torch.no_grad():
        image, gallery = (
            F.normalize(reference.encode_image(_open_clip_views(reference, x)), dim=-1)
            for x in (batch["image"], batch["gallery"][0][batch["gallery_mask"][0]])
        )  # (1, E) and (G, E)
        text = F.normalize(reference.encode_text(tokens), dim=-1)  # (1, E)
        ours = gallery_scores(_clip(path), batch["image"], batch["text"], batch["gallery"],
                              batch["gallery_mask"])  # fmt: skip
    queries = {"image": image, "text": text, "image+text": F.normalize(image + text, dim=-1)}
    for scorer, query in queries.items():
        torch.testing.assert_close(ours[scorer][0], (query @ gallery.T)[0], msg=scorer)
        rank = target_ranks(query @ gallery.T).item()
        assert rows[scorer] == [float(rank < k) for k in (1, 2, 3)], scorer
