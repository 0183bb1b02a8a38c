import torch
from ddp import run_ddp

from contrastive import distributed
from contrastive.ema import ema_update
from contrastive.methods import BYOL, CLIP, SimCLR, SupCon
from contrastive.text import OpenCLIPText

GLOBAL_BATCH = 8
# Classes of one image (its other view is the only positive), two and three images.
LABELS = torch.tensor([0, 1, 1, 2, 2, 2, 3, 4])
METHODS = {
    "SimCLR": SimCLR,
    "SupCon": SupCon,
    # Tiles that divide neither the local (8) nor the gathered (16) rows.
    "SimCLR tiled": lambda **kw: SimCLR(tiled=True, tile_size=3, **kw),
    "CLIP": lambda **kw: _clip(),
    "CLIP tiled": lambda **kw: _clip(tiled=True, tile_size=3),
    "SigLIP": lambda **kw: _clip(loss="siglip"),
}
TINY = dict(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
CAPTIONS = [f"a {c} {s}" for c in ("red", "blue") for s in ("star", "heart", "cross", "square")]


def _clip(**kwargs) -> CLIP:
    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=8, embed_dim=8)
    return CLIP(text_tower=text, embed_dim=8, backbone_kwargs=TINY["backbone_kwargs"], **kwargs)


def _views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g) for _ in range(2)]


def _model(cls):
    torch.manual_seed(0)
    # eval(): BatchNorm uses running statistics, so per-rank batches normalise exactly as the
    # global batch does; what is compared is the loss, its gathering and the updates.
    return cls(**TINY).eval()


def _average_over_ranks(tensors) -> None:
    """What DDP does after backward: average the gradients over ranks."""
    if distributed.is_distributed():
        for t in tensors:
            torch.distributed.all_reduce(t)
            t /= distributed.world_size()


def _loss_and_grads(method: str, local: slice = slice(None)):
    model = _model(METHODS[method])
    batch = {
        "views": [v[local] for v in _views()],
        "labels": {"shape": LABELS[local]},
        "caption": CAPTIONS[local],
    }
    loss = model.training_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss = loss.detach()
    _average_over_ranks([loss, *grads.values()])
    return loss, grads


def _byol_target_after_two_steps(local: slice = slice(None)) -> list[torch.Tensor]:
    """BYOL's target after two DDP-style steps: averaged gradients, SGD, EMA update."""
    model = _model(lambda **kw: BYOL(predictor_hidden_dim=16, **kw))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model.training_loss({"views": [v[local] for v in _views()]}).backward()
        _average_over_ranks([p.grad for p in model.parameters() if p.grad is not None])
        optimizer.step()
        ema_update(model.target_backbone, model.backbone, 0.5)
        ema_update(model.target_projector, model.projector, 0.5)
    return [p.detach().clone() for p in model.target_backbone.parameters()]


def _rank(rank: int, world_size: int) -> dict:
    local = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    results = {method: _loss_and_grads(method, local) for method in METHODS}
    results["byol_target"] = _byol_target_after_two_steps(local)
    return results


def test_methods_on_two_processes_equal_one_process_on_the_global_batch():
    ranks = run_ddp(_rank)
    for method in METHODS:
        expected_loss, expected_grads = _loss_and_grads(method)
        for results in ranks:
            loss, grads = results[method]
            torch.testing.assert_close(loss, expected_loss, msg=method)
            for name, g in grads.items():
                # rtol 1e-4: CLIP's logit scale (14) multiplies float32 summation-order noise.
                torch.testing.assert_close(
                    g,
                    expected_grads[name],
                    rtol=1e-4,
                    atol=1e-5,
                    msg=lambda m, n=f"{method} {name}": f"{n}: {m}",
                )
    # BYOL's target stays identical on every rank, and equal to one process's on the global batch.
    expected_target = _byol_target_after_two_steps()
    initial = _model(lambda **kw: BYOL(predictor_hidden_dim=16, **kw)).target_backbone
    assert not torch.equal(next(initial.parameters()), expected_target[0])  # it did move
    for results in ranks:
        for got, want in zip(results["byol_target"], expected_target, strict=True):
            torch.testing.assert_close(got, want)


def _gather_rank(rank: int, world_size: int):
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = distributed.gather_with_grad(x)
    (gathered * torch.arange(len(gathered)).view(-1, 1)).sum().backward()
    return gathered.detach(), x.grad, distributed.gather_no_grad(torch.tensor([rank]))


def test_gather_with_grad_is_rank_major_and_sums_gradients_from_every_rank():
    results = run_ddp(_gather_rank)
    for rank, (gathered, grad, ranks) in enumerate(results):
        torch.testing.assert_close(gathered, torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
        # Each rank's loss weights row i by i; both ranks' losses reach the owner: 2 * i.
        rows = torch.arange(2 * rank, 2 * rank + 2, dtype=torch.float32)
        torch.testing.assert_close(grad, 2 * rows.view(-1, 1).expand(2, 3))
        assert ranks.tolist() == [0, 1]


def _uneven_rank(rank: int, world_size: int):
    x = torch.full((3 - 2 * rank, 2), float(rank + 1), requires_grad=True)  # 3 rows, then 1
    gathered = distributed.gather_with_grad(x)
    (gathered * torch.arange(len(gathered)).view(-1, 1)).sum().backward()
    labels = distributed.gather_no_grad(torch.arange(len(x)) + 10 * rank)
    return gathered.detach(), x.grad, labels, distributed.offset(len(x))


def test_gathering_handles_ranks_with_fewer_rows_after_skipped_samples():
    results = run_ddp(_uneven_rank)
    for rank, (gathered, grad, labels, offset) in enumerate(results):
        torch.testing.assert_close(gathered, torch.tensor([[1.0] * 2] * 3 + [[2.0] * 2]))
        assert labels.tolist() == [0, 1, 2, 10] and offset == [0, 3][rank]
        rows = torch.arange(offset, offset + len(grad), dtype=torch.float32)
        torch.testing.assert_close(grad, 2 * rows.view(-1, 1).expand(-1, 2))  # no padding leaks


def test_helpers_are_identities_on_one_process():
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x and distributed.gather_no_grad(x) is x
    assert distributed.all_reduce_sum(x) is x  # summed over ranks in test_every_method.py
    assert distributed.rank() == 0 and distributed.world_size() == 1
