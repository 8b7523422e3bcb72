"""Hungarian matching of reconstructions to originals, and multiset label accuracy."""

from __future__ import annotations

import torch

from rgap.evaluation.matching import label_accuracy, match_to_originals


def test_matching_recovers_a_permutation():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 8, 8, generator=gen)
    perm = [3, 0, 4, 1, 2]
    noisy = images[perm] + 0.01 * torch.randn(5, 3, 8, 8, generator=gen)
    assert match_to_originals(noisy, images) == perm


def test_matching_single_image_is_identity():
    x = torch.rand(1, 1, 4, 4)
    assert match_to_originals(x, torch.rand(1, 1, 4, 4)) == [0]


def test_label_accuracy_is_a_multiset_overlap():
    assert label_accuracy(torch.tensor([1, 0, 0]), torch.tensor([0, 1, 0])) == 1.0
    assert label_accuracy(torch.tensor([1, 1, 1]), torch.tensor([0, 1, 0])) == 1 / 3
    assert label_accuracy(torch.tensor([2]), torch.tensor([3])) == 0.0


def test_trial_reorders_a_permuted_batch_onto_the_images():
    from rgap.attack import AttackResult
    from rgap.evaluation.score import evaluate

    images = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    result = AttackResult(reconstruction=images[[2, 0, 3, 1]].double())
    evaluation = evaluate(result, 0.0, images, torch.zeros(4, dtype=torch.long))
    assert torch.equal(evaluation.reconstruction.float(), images)
    assert evaluation.matching == [2, 0, 3, 1] and result.info == {}  # nothing passed back through info
