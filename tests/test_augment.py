import pytest
import torch

from contrastive.augment import Augment, SimCLRAugment


def _same_images(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=g)
    return one.expand(n, -1, -1, -1).contiguous()


def test_random_parameters_are_drawn_per_sample_not_per_batch():
    torch.manual_seed(0)
    views = SimCLRAugment(blur=0.5)(_same_images())  # (16, 3, 32, 32) from 16 copies of one image
    distinct = {tuple(v.flatten()[:64].tolist()) for v in views}
    assert len(distinct) == len(views)


@pytest.mark.parametrize("probability", ["hflip", "color_jitter", "grayscale", "blur", "solarize"])
def test_each_transform_is_used_and_switchable(probability):
    torch.manual_seed(0)
    images = _same_images(8)
    off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
    off.update(grayscale=0.0, blur=0.0, solarize=0.0)
    identity = SimCLRAugment(**off)(images)
    torch.testing.assert_close(identity, Augment().normalize(images))
    changed = SimCLRAugment(**{**off, probability: 1.0})(images)
    assert not torch.allclose(changed, identity)


def test_output_size_and_normalisation():
    images = _same_images(4)
    assert SimCLRAugment(size=24)(images).shape == (4, 3, 24, 24)
    out = Augment(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).normalize(images)
    torch.testing.assert_close(out, images.float() / 255)


def test_any_kornia_list_composes():
    import kornia.augmentation as K

    torch.manual_seed(0)
    augment = Augment([K.RandomHorizontalFlip(p=1.0)], mean=(0, 0, 0), std=(1, 1, 1))
    images = _same_images(2)
    torch.testing.assert_close(augment(images), images.flip(-1).float() / 255)


def test_bad_probabilities_and_stats_are_named():
    with pytest.raises(ValueError, match="grayscale"):
        SimCLRAugment(grayscale=1.5)
    with pytest.raises(ValueError, match="mean and std"):
        Augment(mean=(0.5,), std=(0.2, 0.2))


def test_multi_crop_makes_two_global_views_then_local_views_of_both_sources():
    from contrastive.augment import MultiCropAugment

    torch.manual_seed(0)
    crops_only = dict(hflip=0.0, color_jitter=0.0, grayscale=0.0)  # a view shows its source
    augment = MultiCropAugment(num_local=4, local_size=8, size=16, **crops_only)
    black = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    white = torch.full((6, 3, 32, 32), 255, dtype=torch.uint8)
    views = augment.views([black, white])  # the image and its generator view
    assert [tuple(v.shape) for v in views] == [(6, 3, 16, 16)] * 2 + [(6, 3, 8, 8)] * 4
    means = [v.mean().item() for v in views]  # normalised: black -2, white +2
    assert means == pytest.approx([-2, 2, -2, 2, -2, 2])  # local view i crops source i % 2
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=g)
    local = augment.views([image.expand(8, -1, -1, -1)] * 2)[2]  # crops drawn per sample
    assert len({tuple(v.flatten()[:32].tolist()) for v in local}) == 8


def test_multi_crop_arguments_are_checked():
    from contrastive.augment import MultiCropAugment

    with pytest.raises(ValueError, match="num_local"):
        MultiCropAugment(num_local=-1)
    with pytest.raises(ValueError, match="solarize"):
        MultiCropAugment(solarize=2.0)
