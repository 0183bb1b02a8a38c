"""Gradient caching (gradcache.py) through SimCLR, SupCon and CLIP: a step in chunks equals the
plain step; dropout is replayed; BatchNorm is normalised per chunk and updated once per chunk;
under DDP, with a queue, it equals one process, all-reduces once per step, and every rank
queues the same rows."""

import pytest
import torch
from ddp import run_ddp
from lightning.pytorch import Trainer, seed_everything
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from contrastive import distributed, gradcache
from contrastive.backbones import register_backbone
from contrastive.datamodules import ShapesDataModule
from contrastive.gradcache import by_sample, by_view, split_rows
from contrastive.methods import CLIP, SimCLR, SupCon


@register_backbone("test_groupnorm_cnn")
def _groupnorm_cnn(*, pretrained: bool = False, width: int = 4, dropout: float = 0.0) -> nn.Module:
    """A CNN whose norm layers do not mix the batch, with optional dropout on its features."""
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1),
        nn.GroupNorm(2, width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.GroupNorm(2, 2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
    )
    model.num_features = 2 * width
    return model


GN = dict(backbone="test_groupnorm_cnn")
SIMCLR = dict(**GN, projector_hidden_dim=16, projector_layers=1)  # one Linear: no BatchNorm


def _clip(**kwargs) -> CLIP:
    from contrastive.text import OpenCLIPText  # here: the DDP workers need no open_clip

    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=8, embed_dim=8)
    return CLIP(text_tower=text, embed_dim=8, **GN, **kwargs)


METHODS = {
    "SimCLR": lambda **kw: SimCLR(**SIMCLR, **kw),
    "SupCon": lambda **kw: SupCon(**SIMCLR, **kw),
    "CLIP": _clip,
    # Generator views with captions of their own (2 pairs per sample) and SLIP's image loss.
    "CLIP pairs + SLIP": lambda **kw: _clip(ssl_weight=0.5, ssl_projector_dim=8, **kw),
}


def _model(method: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return METHODS[method](**kwargs)


def _batch(n: int = 10, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    return {
        "views": views,
        "labels": {"shape": torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 0, 1, 2])[:n]},
        "caption": [f"a {c} {s}" for c in ("red", "blue", "green") for s in "abcd"][:n],
        "view_caption": [f"the other {i}" for i in range(n)],
    }


def _for(method: str, batch: dict) -> dict:
    """The batch as the method sees it: CLIP has one view unless the pairs are its own."""
    if method == "CLIP":
        return {**batch, "views": batch["views"][:1]}
    return batch


def _step(model: nn.Module, batch: dict, loss_fn=None) -> tuple[torch.Tensor, dict, dict]:
    """One SGD step: the loss, the gradients and the parameters after the step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    optimizer.zero_grad()
    loss = (loss_fn or model.training_loss)(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Equal to 1e-5 of the tensor's largest entry: float32 sums taken in another order (and
    CLIP's logit scale of 14 multiplies that noise) move small entries by more than 1e-5 of
    themselves."""
    atol = 1e-5 * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def _assert_same_step(got, want) -> None:
    """Same loss, gradients and parameters after the step."""
    (loss, grads, params), (want_loss, want_grads, want_params) = got, want
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=0)
    assert grads.keys() == want_grads.keys()
    for name, g in grads.items():
        _assert_close(g, want_grads[name], f"grad {name}")
    for name, p in params.items():
        _assert_close(p, want_params[name], name)


@pytest.fixture
def count_chunks(monkeypatch) -> list:
    """The number of checkpointed chunks run: the test is vacuous if nothing was chunked."""
    calls = []
    checkpoint = gradcache.checkpoint

    def spy(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(gradcache, "checkpoint", spy)
    return calls


@pytest.mark.parametrize("method", list(METHODS))
def test_a_step_in_chunks_equals_the_plain_full_batch_step(method, count_chunks):
    batch = _for(method, _batch())
    initial = _model(method).state_dict()
    want = _step(_model(method), batch)
    got = _step(_model(method, chunk_size=3), batch)  # 10 samples: chunks of 3, 3, 3 and 1
    assert len(count_chunks) == 4
    _assert_same_step(got, want)
    assert all(not torch.equal(p, initial[n]) for n, p in got[2].items()), "a parameter stayed"


def _in_chunks_with_graph(model: nn.Module, chunk_size: int):
    """The reference: each chunk embedded with its graph kept, one after the other."""

    def loss(batch: dict) -> torch.Tensor:
        parts = [model.training_embeddings(c) for c in split_rows(batch, chunk_size)]
        embeddings = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return model.loss_from_embeddings(embeddings, batch)

    return loss


def test_dropout_draws_the_same_masks_in_the_re_run():
    def run(chunk_size: int | None, seed: int, reference: bool = False):
        model = _model("SimCLR", backbone_kwargs={"dropout": 0.5}, chunk_size=chunk_size)
        torch.manual_seed(seed)
        return _step(model, _batch(), _in_chunks_with_graph(model, 4) if reference else None)

    want = run(None, seed=1, reference=True)
    _assert_same_step(run(4, seed=1), want)
    assert not torch.equal(run(4, seed=2)[0], want[0])  # the masks do change the loss


def test_batchnorm_normalises_per_chunk_and_updates_running_statistics_once_per_chunk():
    def model(chunk_size=None):
        torch.manual_seed(0)  # small_cnn and the projector's hidden layer: BatchNorm
        return SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, chunk_size=chunk_size)

    chunked, reference = model(4), model()
    got = _step(chunked, _batch())
    _assert_same_step(got, _step(reference, _batch(), _in_chunks_with_graph(reference, 4)))
    assert not torch.allclose(got[0], _step(model(), _batch())[0])  # not the full batch's
    norms = [m for m in chunked.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    references = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    for norm, ref in zip(norms, references, strict=True):
        assert norm.num_batches_tracked.item() == 3  # chunks of 4, 4, 2; not again in re-runs
        torch.testing.assert_close(norm.running_mean, ref.running_mean)
        torch.testing.assert_close(norm.running_var, ref.running_var)


def test_chunks_cut_every_per_sample_field():
    batch = {
        "views": [torch.arange(5), torch.arange(5) + 10],
        "caption": list("abcde"),
        "tokens": {"input_ids": torch.arange(10).view(5, 2)},
        "labels": {"shape": torch.arange(5)},
        "scale": torch.tensor(2.0),
    }
    first, second = split_rows(batch, 3)
    assert second["views"][1].tolist() == [13, 14] and second["caption"] == ["d", "e"]
    assert first["tokens"]["input_ids"].shape == (3, 2) and first["labels"]["shape"].tolist() == [
        0,
        1,
        2,
    ]
    assert second["scale"] is batch["scale"]
    x = torch.arange(12).view(6, 2)  # 2 views of 3 samples, stacked view by view
    assert by_sample(x, 3).shape == (3, 2, 2) and torch.equal(by_view(by_sample(x, 3)), x)
    assert torch.equal(by_sample(x, 3)[1], x[[1, 4]])  # sample 1's two views


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size must be >= 1 or None"):
        SimCLR(**SIMCLR, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1 or None"):
        _clip(chunk_size=-1)


def test_fit_in_chunks_takes_the_steps_of_a_plain_fit_with_clipping_and_accumulation():
    def fit(chunk_size):
        seed_everything(0)
        model = SimCLR(**SIMCLR, chunk_size=chunk_size, warmup_epochs=0.5)
        trainer = Trainer(
            max_steps=2,
            accumulate_grad_batches=2,
            gradient_clip_val=0.05,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        data = ShapesDataModule(num_train=64, num_val=32, num_test=32, num_bank=64, batch_size=16)
        trainer.fit(model, data)
        return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}

    (trainer, got), (_, want) = fit(chunk_size=5), fit(chunk_size=None)
    assert trainer.global_step == 2 and "train/loss" in trainer.callback_metrics
    for name, p in got.items():
        _assert_close(p, want[name], name)


# ---- DDP ----------------------------------------------------------------------------------


class _Loss(nn.Module):
    """What Lightning's DDP wrapper does: the wrapped module's forward is the training loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.training_loss(batch)


def _counting_allreduce(calls: list, bucket):
    """DDP's default all-reduce, counted (the hook's state is the list of calls)."""
    calls.append(bucket.index())
    return default_hooks.allreduce_hook(None, bucket)


def _ddp_rank(rank: int, world_size: int) -> dict:
    """Three DDP steps of SimCLR with a queue, without and with chunks: the parameters, the
    all-reduces counted, the queue, and the gathered embeddings each step should have queued."""
    results = {}
    for chunk_size in (None, 3):
        model = _model("SimCLR", chunk_size=chunk_size, queue_size=32)  # 16 rows a step
        # No buffer broadcast: each rank's queue must come out the same on its own.
        ddp = DistributedDataParallel(_Loss(model), broadcast_buffers=False)
        calls, pushed = [], []
        ddp.register_comm_hook(calls, _counting_allreduce)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(3):  # a global batch of 8, 4 per rank: chunks of 3 and 1
            batch = split_rows(_batch(8, seed=step), 8 // world_size)[rank]
            with torch.no_grad():
                z = by_view(model.training_embeddings(batch)["z"])  # (8, D) this rank's
                pushed.append(distributed.gather_no_grad(z))  # (16, D) what all ranks queue
            optimizer.zero_grad()
            ddp(batch).backward()
            optimizer.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        results[chunk_size] = params, len(calls), model.queue.negatives(), torch.cat(pushed)
    return results


def test_under_ddp_chunks_and_the_queue_equal_one_process_with_one_all_reduce_per_step():
    ranks = run_ddp(_ddp_rank)
    model = _model("SimCLR", chunk_size=3, queue_size=32)
    for step in range(3):  # one process, the global batch (its queue holds the same rows)
        _, _, want = _step(model, _batch(8, seed=step))
    for results in ranks:
        (params, calls, queue, pushed), (_, plain_calls, _, _) = results[3], results[None]
        assert calls == plain_calls == 3  # one all-reduce per step (one bucket), as unchunked
        for name, p in params.items():
            _assert_close(p, want[name], name)
        assert len(queue) == 32 and len(pushed) == 48  # it wrapped
        torch.testing.assert_close(queue, pushed[-32:])  # the last K gathered rows, in order
    torch.testing.assert_close(ranks[0][3][2], ranks[1][3][2], rtol=0, atol=0)  # same queues
