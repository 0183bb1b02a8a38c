"""The online linear probe: trained beside the method, no gradient or statistic into it, its
accuracy at every validation, kept in checkpoints, and 2 processes equal to one."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from contrastive.augment import SimCLRAugment
from contrastive.datamodules import ShapesDataModule
from contrastive.evaluation import OnlineLinearProbe
from contrastive.evaluation.common import check_labels
from contrastive.methods import SimCLR
from tests.ddp import run_ddp


def _data() -> ShapesDataModule:
    return ShapesDataModule(num_train=64, num_val=32, num_test=32, num_bank=64, batch_size=16)


def _simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(
        backbone_kwargs={"width": 4},
        projector_hidden_dim=16,
        augment=SimCLRAugment(crop_scale=(0.5, 1.0)),
    )


def _fit(tmp_path, callbacks: list, steps: int = 3) -> tuple[SimCLR, Trainer]:
    torch.manual_seed(1)
    model = _simclr()
    trainer = Trainer(
        max_steps=steps,
        val_check_interval=steps,
        num_sanity_val_steps=0,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _data())
    return model, trainer


def test_the_probe_trains_beside_the_method_and_sends_nothing_into_it(tmp_path):
    probe = OnlineLinearProbe(lr=1e-2)
    with_probe, trainer = _fit(tmp_path, [probe])
    without, _ = _fit(tmp_path, [])
    # The same method, step for step: no gradient, no BatchNorm statistic, no random draw moved.
    theirs = without.state_dict()
    for name, value in with_probe.state_dict().items():
        torch.testing.assert_close(value, theirs[name], rtol=0, atol=0, msg=name)
    data = _data()
    logged = trainer.callback_metrics
    for field in data.attributes:
        assert 0.0 <= logged[f"val/linear/{field}"] <= 1.0
    assert torch.isfinite(logged["train/linear_loss"])
    assert all(p.grad is not None for p in probe.probes.parameters())  # the probe did learn
    assert "val/linear/shape" in (Path(trainer.logger.log_dir) / "metrics.csv").read_text()


def test_the_probe_is_saved_in_checkpoints_and_scored_at_test(tmp_path):
    probe = OnlineLinearProbe()
    model, trainer = _fit(tmp_path, [probe])
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = OnlineLinearProbe()
    tester = Trainer(logger=False, callbacks=[restored], enable_progress_bar=False)
    results = tester.test(model, _data(), ckpt_path=str(path), weights_only=True)[0]
    saved = restored.probes.state_dict()
    for name, value in probe.probes.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)
    assert 0.0 <= results["test/linear_online/shape"] <= 1.0


def _batch(n: int = 24):
    g = torch.Generator().manual_seed(5)
    features = torch.randn(n, 6, generator=g)
    labels = torch.stack([(features[:, 0] > 0).long(), torch.randint(0, 3, (n,), generator=g)], 1)
    return features, labels


def _probe_after_steps(rank: int, world_size: int) -> dict:
    features, labels = _batch()
    probe = OnlineLinearProbe(lr=0.05)
    probe.fields = {"sign": 2, "noise": 3}
    for _ in range(3):
        rows = slice(rank * 12, rank * 12 + 12) if world_size > 1 else slice(None)
        probe.step(features[rows], labels[rows])
    return probe.probes.state_dict()


def test_two_processes_train_the_probe_one_process_trains_on_the_global_batch():
    features, labels = _batch()
    check_labels("labels", labels, [2, 3], len(features))
    expected = _probe_after_steps(0, 1)
    for state in run_ddp(_probe_after_steps):
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_the_scored_probe_is_the_moving_average_of_the_trained_one():
    features, labels = _batch()
    probe = OnlineLinearProbe(lr=0.05, ema=0.9)
    probe.fields = {"sign": 2, "noise": 3}
    average = None  # a slow loop: the average of the weights written out, step by step
    for _ in range(4):
        probe.step(features, labels)
        weights = {k: v.clone() for k, v in probe.probes.named_parameters()}
        average = weights if average is None else {
            k: 0.9 * average[k] + 0.1 * v for k, v in weights.items()
        }  # fmt: skip
    scored = probe.averaged.module.state_dict()
    assert set(average) == {"sign.1.weight", "sign.1.bias", "noise.1.weight", "noise.1.bias"}
    for key, value in average.items():
        torch.testing.assert_close(scored[key], value, msg=key)
    assert not torch.equal(scored["sign.1.weight"], probe.probes["sign"][1].weight)
    # The standardisation is the trained probe's current one, not an average of its past.
    for key, value in probe.probes.named_buffers():
        torch.testing.assert_close(scored[key], value, rtol=0, atol=0, msg=key)


def test_without_averaging_the_last_weights_are_scored():
    features, labels = _batch()
    probe = OnlineLinearProbe(lr=0.05, ema=0.0)
    probe.fields = {"sign": 2, "noise": 3}
    for _ in range(3):
        probe.step(features, labels)
    scored = probe.averaged.module.state_dict()
    for key, value in probe.probes.state_dict().items():
        torch.testing.assert_close(scored[key], value, msg=key)


def test_the_average_is_saved_in_checkpoints(tmp_path):
    probe = OnlineLinearProbe(ema=0.5)
    model, trainer = _fit(tmp_path, [probe])
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = OnlineLinearProbe(ema=0.5)
    tester = Trainer(logger=False, callbacks=[restored], enable_progress_bar=False)
    tester.test(model, _data(), ckpt_path=str(path), weights_only=True)
    for name, value in probe.averaged.state_dict().items():
        torch.testing.assert_close(value, restored.averaged.state_dict()[name], msg=name)


def test_a_checkpoint_without_an_average_scores_its_trained_probe():
    features, labels = _batch()
    probe = OnlineLinearProbe(lr=0.05)
    probe.fields = {"sign": 2, "noise": 3}
    probe.step(features, labels)
    state = probe.state_dict()
    del state["averaged"]  # as written before the average existed
    restored = OnlineLinearProbe(ema=0.9)
    restored.fields = dict(probe.fields)
    restored.load_state_dict(state)
    restored.build(6, torch.device("cpu"))
    scored = restored.averaged.module.state_dict()
    for key, value in probe.probes.state_dict().items():
        torch.testing.assert_close(scored[key], value, msg=key)


@pytest.mark.parametrize("bad", [{"ema": 1.0}, {"ema": -0.1}, {"lr": 0.0}, {"weight_decay": -1}])
def test_bad_settings_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="need lr > 0"):
        OnlineLinearProbe(**bad)
