"""What the evaluation metrics share: dataset order after a DDP gather, the bank/query store,
and the chance rate of an imbalanced split."""

import pytest
import torch

from contrastive.evaluation.common import BankQueryMetric, MajorityRate, dataset_order


def test_dataset_order_sorts_rows_by_id_and_drops_the_samplers_padding():
    # Two ranks of a DistributedSampler over 5 rows: [0, 2, 4] and [1, 3, 0 (padding)].
    gathered = torch.tensor([0, 2, 4, 1, 3, 0])
    keep = dataset_order(gathered)
    assert gathered[keep].tolist() == [0, 1, 2, 3, 4]
    assert keep.tolist() == [0, 3, 1, 4, 2]  # the first row of each id


def test_the_store_returns_rows_in_dataset_order_and_needs_ids_on_every_update_or_none():
    store = BankQueryMetric([3])
    store.update_bank(
        torch.tensor([[2.0], [0.0]]), torch.tensor([[2], [0]]), ids=torch.tensor([2, 0])
    )
    store.update_bank(
        torch.tensor([[1.0], [2.0]]), torch.tensor([[1], [2]]), ids=torch.tensor([1, 2])
    )
    store.update(torch.tensor([[5.0]]), torch.tensor([[1]]))
    bank, query = store.synced()
    assert bank.features[:, 0].tolist() == [0.0, 1.0, 2.0] and bank.labels[:, 0].tolist() == [
        0,
        1,
        2,
    ]
    assert query.features.tolist() == [[5.0]]
    with pytest.raises(ValueError, match="ids to every bank update"):
        store.update_bank(torch.tensor([[3.0]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="empty bank"):
        BankQueryMetric(2).synced()


def test_the_majority_rate_is_the_chance_of_an_imbalanced_split():
    rate = MajorityRate([2, 3])
    rate.update(torch.tensor([[0, 2], [0, 2], [0, 1], [1, 2]]))  # 3 of 4, 3 of 4
    rate.update(torch.tensor([[1, 0]]))  # 3 of 5, 3 of 5
    torch.testing.assert_close(rate.compute(), torch.tensor([0.6, 0.6]))
    with pytest.raises(ValueError, match=r"attribute 1 in \[0, 3\)"):
        rate.update(torch.tensor([[0, 3]]))
