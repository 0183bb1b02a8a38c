import torch
from ddp import run_ddp

from contrastive import distributed
from contrastive.methods import SimCLR

GLOBAL_BATCH = 8


def _views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g) for _ in range(2)]


def _model() -> SimCLR:
    torch.manual_seed(0)
    # eval(): BatchNorm uses running statistics, so per-rank batches normalise exactly as the
    # global batch does; what is compared is the loss and its gathering.
    return SimCLR(
        backbone="small_cnn", backbone_kwargs={"width": 4}, projector_hidden_dim=16
    ).eval()


def _loss_and_grads(model: SimCLR, views: list[torch.Tensor]):
    loss = model.training_loss({"views": views})
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _simclr_rank(rank: int, world_size: int):
    model = _model()
    local = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    loss, grads = _loss_and_grads(model, [v[local] for v in _views()])
    # What DDP does after backward: average the gradients over ranks.
    for g in grads.values():
        torch.distributed.all_reduce(g)
        g /= world_size
    torch.distributed.all_reduce(loss)
    return loss / world_size, grads


def test_simclr_on_two_processes_equals_one_process_on_the_global_batch():
    expected_loss, expected_grads = _loss_and_grads(_model(), _views())
    for loss, grads in run_ddp(_simclr_rank):
        torch.testing.assert_close(loss, expected_loss)
        for name, g in grads.items():
            torch.testing.assert_close(g, expected_grads[name], msg=name)


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


def test_helpers_are_identities_on_one_process():
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x and distributed.gather_no_grad(x) is x
    assert distributed.rank() == 0 and distributed.world_size() == 1
