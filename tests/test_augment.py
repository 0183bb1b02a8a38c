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
