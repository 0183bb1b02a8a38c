"""The random-init baseline: what the method trains is re-drawn (seeded), what is frozen is kept."""

import torch

from contrastive.evaluation.random_init import random_init
from contrastive.methods import BYOL, CLIP, SimCLR
from contrastive.text import OpenCLIPText


def test_trained_parts_are_redrawn_from_the_registry_seeded_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # "trained" weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = random_init(model), random_init(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])  # the method itself is unchanged
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)  # seeded: every rank and run the same
    torch.manual_seed(0)
    from contrastive.backbones import create_backbone

    fresh = create_backbone("small_cnn", width=4)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(first.backbone.state_dict()[key], value, msg=key)
    mine, theirs = dict(first.projector.named_parameters()), model.projector.state_dict()
    assert all(not torch.equal(value, theirs[key]) for key, value in mine.items())
    assert first._trainer is None and not first.training  # a bare copy, in eval mode


def test_a_frozen_tower_is_kept_and_the_ema_target_too():
    torch.manual_seed(0)
    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=16, embed_dim=16)
    clip = CLIP(text_tower=text, embed_dim=16, freeze_text_tower=True, backbone_kwargs={"width": 4})
    baseline = random_init(clip)
    for key, value in clip.text_tower.state_dict().items():
        torch.testing.assert_close(baseline.text_tower.state_dict()[key], value, msg=key)
    assert not torch.equal(baseline.image_projection.weight, clip.image_projection.weight)
    byol = BYOL(backbone_kwargs={"width": 4}, projector_hidden_dim=16, predictor_hidden_dim=16)
    with torch.no_grad():
        for p in byol.target_backbone.parameters():
            p.add_(1.0)
    kept = random_init(byol)
    for key, value in byol.target_backbone.state_dict().items():
        torch.testing.assert_close(kept.target_backbone.state_dict()[key], value, msg=key)


class _Uncopyable:
    """Stands for a live loader iterator, which deepcopy refuses."""

    def __deepcopy__(self, memo):
        raise NotImplementedError("cannot be pickled")


def test_callables_such_as_a_config_built_optimizer_are_shared_not_copied():
    import functools

    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    # As jsonargparse builds it from a config: a partial holding the CLI (and its loaders).
    model.optimizer = functools.partial(torch.optim.AdamW, _Uncopyable(), lr=0.1)
    baseline = random_init(model)
    assert baseline.optimizer is model.optimizer
    assert baseline.backbone is not model.backbone
