import pytest
import torch

from contrastive.cache import FrozenCache, image_keys


def test_each_key_is_computed_once_and_the_cache_is_bounded():
    calls = []

    def compute(rows):
        calls.append(list(rows))
        return torch.tensor([[float(keys[i])] for i in rows])

    cache = FrozenCache(3)
    keys = [5, 7, 5, 9]
    torch.testing.assert_close(cache(keys, compute), torch.tensor([[5.0], [7.0], [5.0], [9.0]]))
    keys = [9, 1, 2, 7]
    torch.testing.assert_close(cache(keys, compute), torch.tensor([[9.0], [1.0], [2.0], [7.0]]))
    assert calls == [[0, 1, 3], [1, 2]]  # 5 once; then only 1 and 2
    assert len(cache) == 3  # 1 and 2 were given but not kept: no room
    assert cache.rows.keys() == {5, 7, 9}


def test_a_cache_of_size_zero_remembers_nothing_and_a_negative_size_is_refused():
    cache = FrozenCache(0)
    cache(["a", "a"], lambda rows: torch.zeros(len(rows), 2))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="cache size must be >= 0, got -1"):
        FrozenCache(-1)


def test_image_keys_are_equal_exactly_when_the_images_are():
    images = torch.rand(4, 3, 8, 8)
    images[2] = images[0]
    keys = image_keys(images)
    assert keys[0] == keys[2] and len(set(keys)) == 3
    assert image_keys(images.contiguous(memory_format=torch.channels_last)) == keys
    nudged = images.clone()
    nudged[1, 2, 7, 7] = torch.nextafter(nudged[1, 2, 7, 7], torch.tensor(2.0))  # one ulp
    assert image_keys(nudged)[1] != keys[1] and image_keys(nudged)[0] == keys[0]
    assert image_keys(images.double())[0] != keys[0]  # the same values in another dtype
    assert image_keys(images.reshape(4, 3, 4, 16))[0] != keys[0]  # another shape
