"""info_nce_tiled against the dense info_nce: values and gradients, gradcheck, memory."""

import functools

import pytest
import torch

from contrastive.losses import info_nce, info_nce_tiled


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _case(name: str):
    """(anchor rows, candidates, anchor labels, candidate labels, positions) for one setup."""
    if name == "nt_xent":  # 2 views of 7 images, anchors == candidates
        ids = torch.arange(7).repeat(2)
        return slice(None), 14, ids, ids, torch.arange(14)
    if name == "supcon":  # class 2 has a single member: anchor 5 has no positive
        labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 1])
        return slice(None), 11, labels, labels, torch.arange(11)
    if name == "distributed":  # this rank's anchors are rows 4:8 of 13 gathered candidates
        labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 9])
        return slice(4, 8), 13, labels[4:8], labels, torch.arange(4, 8)
    if name == "clip":  # 9 images against their 9 captions, anchors not among candidates
        return None, 9, torch.arange(9), torch.arange(9), None
    raise ValueError(name)


def _inputs(name: str, dtype: torch.dtype, seed: int = 0):
    rows, m, anchor_labels, candidate_labels, positions = _case(name)
    candidates = _randn(m, 5, seed=seed, dtype=dtype).requires_grad_()
    if rows is None:
        anchors = _randn(m, 5, seed=seed + 1, dtype=dtype).requires_grad_()
        leaves = (anchors, candidates)
    else:
        anchors, leaves = candidates[rows], (candidates,)
    return anchors, candidates, anchor_labels, candidate_labels, positions, leaves


def _loss_and_grads(fn, name, dtype, **kw):
    a, c, al, cl, pos, leaves = _inputs(name, dtype)
    t = torch.tensor(0.2, dtype=dtype, requires_grad=True)  # a learnable temperature
    loss = fn(a, c, al, cl, t, pos, **kw)
    return loss, torch.autograd.grad(loss, (*leaves, t))


@pytest.mark.parametrize("name", ["nt_xent", "supcon", "distributed", "clip"])
@pytest.mark.parametrize("block_size", [1, 3, 7, 14, 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_equal_the_dense_loss(name, block_size, dtype):
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    loss, grads = _loss_and_grads(info_nce_tiled, name, dtype, block_size=block_size)
    ref, ref_grads = _loss_and_grads(info_nce, name, dtype)
    assert loss.dtype == ref.dtype == dtype
    torch.testing.assert_close(loss, ref, **tol)
    for g, r in zip(grads, ref_grads, strict=True):  # anchors/candidates, then temperature
        torch.testing.assert_close(g, r, **tol)
    assert grads[-1].abs() > 0


def test_float_temperature_and_unnormalised_scale():
    a, c, al, cl, pos, leaves = _inputs("supcon", torch.float64)
    a = a * 30  # normalisation happens inside, with ordinary autograd
    loss = info_nce_tiled(a, c, al, cl, 0.07, pos, block_size=4)
    ref = info_nce(a, c, al, cl, 0.07, pos)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    grads = torch.autograd.grad(loss, leaves, retain_graph=True)  # the two share a * 30
    torch.testing.assert_close(grads, torch.autograd.grad(ref, leaves), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["supcon", "distributed", "clip"])
def test_gradcheck(name):
    a, c, al, cl, pos, leaves = _inputs(name, torch.float64, seed=3)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    if len(leaves) == 1:
        rows = _case(name)[0]

        def f(c, t):
            return info_nce_tiled(c[rows], c, al, cl, t, pos, block_size=3)
    else:

        def f(a, c, t):
            return info_nce_tiled(a, c, al, cl, t, pos, block_size=4)

    assert torch.autograd.gradcheck(f, (*[x.detach().requires_grad_() for x in leaves], t))


def test_no_positive_anywhere_is_zero_with_finite_gradients():
    z = _randn(8, 4, seed=5, dtype=torch.float32).requires_grad_()
    ids = torch.arange(8)  # every anchor alone
    loss = info_nce_tiled(z, z, ids, ids, 0.1, torch.arange(8), block_size=3)
    loss.backward()
    assert loss.item() == 0 and loss.dtype == torch.float32
    assert torch.isfinite(z.grad).all()


def test_tiny_temperature_stays_finite_and_matches():
    z = _randn(8, 4, seed=6, dtype=torch.float32).mul(100).requires_grad_()
    ids = torch.arange(4).repeat(2)
    loss = info_nce_tiled(z, z, ids, ids, 1e-4, torch.arange(8), block_size=3)
    (grad,) = torch.autograd.grad(loss, z)
    ref = info_nce(z, z, ids, ids, 1e-4, torch.arange(8))
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)


def _float32_errors(n: int, noise: float, temperature: float, block: int, seed: int):
    """Relative errors of the float32 loss and gradient against float64, dense and tiled, on
    two views that nearly agree (the near-zero losses where a rounded log-sum-exp costs most)."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, 128, generator=g, dtype=torch.float64)
    z = torch.cat([z1, z1 + noise * torch.randn(n, 128, generator=g, dtype=torch.float64)])
    labels, positions = torch.arange(n).repeat(2), torch.arange(2 * n)
    tiled = functools.partial(info_nce_tiled, block_size=block)
    results = {}
    for name, loss_fn, dtype in [
        ("reference", info_nce, torch.float64),
        ("dense", info_nce, torch.float32),
        ("tiled", tiled, torch.float32),
    ]:
        x = z.to(dtype).detach().requires_grad_()
        loss = loss_fn(x, x, labels, labels, temperature, positions)
        loss.backward()
        results[name] = (loss.double(), x.grad.double())
    ref_loss, ref_grad = results.pop("reference")
    return {
        name: (
            (loss - ref_loss).abs() / ref_loss,
            (grad - ref_grad).abs().max() / ref_grad.abs().max(),
        )
        for name, (loss, grad) in results.items()
    }


@pytest.mark.parametrize(
    "n, noise, block",
    [(8, 0.01, 4), (512, 0.04, 128)],  # losses ~2e-5 and ~7e-4 at scale 1 / 0.07
)
def test_float32_tiled_is_at_least_as_accurate_as_dense_near_a_zero_loss(n, noise, block):
    errors = [_float32_errors(n, noise, 0.07, block, seed) for seed in range(3)]
    for kind in (0, 1):  # loss value, gradient
        dense = torch.stack([e["dense"][kind] for e in errors]).median()
        tiled = torch.stack([e["tiled"][kind] for e in errors]).median()
        assert tiled <= dense, (kind, tiled.item(), dense.item())


def test_float32_under_bf16_autocast():
    z = _randn(8, 4, seed=7, dtype=torch.float32)
    ids = torch.arange(4).repeat(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = info_nce_tiled(z.bfloat16(), z.bfloat16(), ids, ids, 0.1, torch.arange(8), 3)
        ref = info_nce(z.bfloat16(), z.bfloat16(), ids, ids, 0.1, torch.arange(8))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)


def test_errors_say_what_was_expected():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="expected labels"):
        info_nce_tiled(z, z, torch.arange(3), torch.arange(4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce_tiled(z, z, torch.arange(4), torch.arange(4), temperature=0.0)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        info_nce_tiled(z, z, torch.arange(4), torch.arange(4), block_size=0)


def _saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and total the bytes of every tensor saved for backward while it ran."""
    total = 0

    def pack(x: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    return out, total


@pytest.fixture
def one_thread():
    # Hundreds of small tiles: on a shared 2-core machine, intra-op threads wait on each other
    # (36 s with 2 threads against 1 s with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_saved_memory_is_linear_not_quadratic(one_thread):
    n, d, block = 4096, 32, 256
    z = _randn(n, d, seed=8, dtype=torch.float32).requires_grad_()
    ids = torch.arange(n // 2).repeat(2)
    positions = torch.arange(n)
    quadratic = n * n * 4  # one float32 (N, M) matrix: 64 MiB
    loss, tiled = _saved_bytes(lambda: info_nce_tiled(z, z, ids, ids, 0.1, positions, block))
    ref, dense = _saved_bytes(lambda: info_nce(z, z, ids, ids, 0.1, positions))
    assert tiled < quadratic / 10, f"tiled saved {tiled} bytes"
    assert dense >= quadratic, f"dense saved {dense} bytes"
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all()


def test_simclr_tiled_gives_the_same_loss_and_gradients():
    from contrastive.methods import SimCLR

    torch.manual_seed(0)
    # float64: through BatchNorm, float32 rounding in the loss shows in near-zero gradients
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, tiled=True, tile_size=5)
    model = model.double()  # 5 does not divide the 12 views
    g = torch.Generator().manual_seed(9)
    views = [torch.rand(6, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)]
    results = []
    for tiled in (False, True):
        model.tiling = model.tiling._replace(always=tiled)
        model.zero_grad()
        loss = model.training_loss({"views": views})
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (dense, dense_grads), (tiled, tiled_grads) = results
    torch.testing.assert_close(tiled, dense, rtol=1e-12, atol=0)
    for t, d in zip(tiled_grads, dense_grads, strict=True):
        torch.testing.assert_close(t, d, rtol=1e-9, atol=1e-12)


def test_methods_tile_automatically_above_a_global_batch(monkeypatch):
    from contrastive.losses import clip as clip_losses
    from contrastive.methods import global_batch, simclr

    calls = []
    tiled = global_batch.info_nce_tiled

    def spy(*args, **kwargs):
        calls.append(len(args[1]))
        return tiled(*args, **kwargs)

    monkeypatch.setattr(global_batch, "info_nce_tiled", spy)
    monkeypatch.setattr(clip_losses, "info_nce_tiled", spy)  # clip_loss's
    torch.manual_seed(0)
    views = [torch.rand(6, 3, 32, 32) for _ in range(2)]
    model = simclr.SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, tile_above=12)
    model.training_loss({"views": views})
    assert calls == []  # 12 candidates: not above
    model.tiling = model.tiling._replace(above=11)
    model.training_loss({"views": views})
    assert calls == [12]

    from contrastive.methods import CLIP
    from contrastive.text import OpenCLIPText

    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=8, embed_dim=8)
    clip = CLIP(text_tower=text, embed_dim=8, backbone_kwargs={"width": 4}, tile_above=5)
    batch = {"image": (views[0] * 255).byte(), "caption": [f"a {i}" for i in range(6)]}
    clip.training_loss({**batch, "views": clip.make_views(batch)})
    assert calls == [12, 6, 6]  # both directions of the symmetric loss
