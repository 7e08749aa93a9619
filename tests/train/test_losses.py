"""Loss functions against values computed by hand."""

import math

import pytest
import torch

from starft_pipeline.train.losses import (
    MASK_VALUE,
    clip_contrastive_loss,
    diminishing_weight,
    multi_positive_contrastive_loss,
    same_class_mask,
    spuriosity_alignment_loss,
    star_regulariser,
)


def test_contrastive_loss_of_orthogonal_pairs():
    # logits = I, so each row's CE is -log(e / (e + 1)) = log(1 + e^-1) = 0.313262
    features = torch.eye(2)
    loss = clip_contrastive_loss(features, features, torch.tensor(1.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_contrastive_loss_is_symmetric_in_the_two_directions():
    # image→text rows [[2, 0], [1, 1]]: CE = log(1+e^-2) and log 2; text→image columns: [2,1] and [0,1]
    image = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0]]) * torch.tensor([[1.0], [1.0]])
    logits = 2.0 * image @ text.T  # [[2, 2], [1, 2]]
    expected_i2t = (
        -(logits[0, 0] - torch.logsumexp(logits[0], 0)) - (logits[1, 1] - torch.logsumexp(logits[1], 0))
    ) / 2
    expected_t2i = (
        -(logits[0, 0] - torch.logsumexp(logits[:, 0], 0)) - (logits[1, 1] - torch.logsumexp(logits[:, 1], 0))
    ) / 2
    # by hand: rows: [2,2] → log 2 = 0.693147; [1,2] → log(1+e^-1) = 0.313262 → i2t = 0.503205
    assert expected_i2t.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-1))) / 2, abs=1e-6)
    loss = clip_contrastive_loss(image, text, torch.tensor(2.0))
    assert loss.item() == pytest.approx(((expected_i2t + expected_t2i) / 2).item(), abs=1e-6)


def test_multi_positive_loss_by_hand():
    # logits = I; both captions describe both images, so each row's target is [1/2, 1/2]:
    # CE = -(1/2)(1 - L) - (1/2)(-L) = L - 1/2 with L = log(1 + e) = 1.313262, the same in both directions
    features = torch.eye(2)
    positives = torch.ones(2, 2, dtype=torch.bool)
    loss = multi_positive_contrastive_loss(features, features, torch.tensor(1.0), positives)
    assert loss.item() == pytest.approx(math.log(1 + math.e) - 0.5, abs=1e-6)


def test_multi_positive_loss_spreads_each_direction_over_its_own_positives():
    # image 0 is described by captions 0 and 1, image 1 by caption 1 only (caption 1 names one concept):
    # image→caption rows: [1/2, 1/2] and [0, 1]; caption→image rows: [1, 0] and [1/2, 1/2]
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    positives = torch.tensor([[True, True], [False, True]])
    logits = 3.0 * image @ text.T
    log_i2t, log_t2i = logits.log_softmax(1), logits.T.log_softmax(1)
    i2t = -(0.5 * log_i2t[0, 0] + 0.5 * log_i2t[0, 1] + log_i2t[1, 1]) / 2
    t2i = -(log_t2i[0, 0] + 0.5 * log_t2i[1, 0] + 0.5 * log_t2i[1, 1]) / 2
    loss = multi_positive_contrastive_loss(image, text, torch.tensor(3.0), positives)
    assert loss.item() == pytest.approx(((i2t + t2i) / 2).item(), abs=1e-6)


def test_multi_positive_loss_with_one_positive_each_is_clips():
    image, text = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    identity = torch.eye(5, dtype=torch.bool)
    expected = clip_contrastive_loss(image, text, torch.tensor(7.0))
    assert multi_positive_contrastive_loss(image, text, torch.tensor(7.0), identity).item() == pytest.approx(
        expected.item(), abs=1e-6
    )


def test_multi_positive_loss_refuses_an_image_without_its_own_caption():
    with pytest.raises(ValueError, match="own caption"):
        multi_positive_contrastive_loss(
            torch.eye(2), torch.eye(2), torch.tensor(1.0), torch.zeros(2, 2, dtype=torch.bool)
        )


def test_same_class_mask_includes_the_diagonal():
    mask = same_class_mask(torch.tensor([0, 0, 1]))
    assert mask.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_masked_kl_by_hand():
    # labels [0, 0, 1]: rows 0 and 1 keep only column 2 (one entry → identical one-hot → KL 0);
    # row 2 keeps columns 0, 1: p = softmax([0, ln 3]) = [1/4, 3/4], q = softmax([0, 0]) = [1/2, 1/2]
    # KL(p‖q) = 1/4·ln(1/2) + 3/4·ln(3/2) = 0.130812; batchmean over 3 rows = 0.043604
    teacher = torch.tensor([[5.0, 1.0, 0.3], [2.0, 7.0, -1.0], [0.0, math.log(3), 9.0]])
    student = torch.tensor([[0.0, 4.0, 1.0], [1.0, 1.0, 2.0], [0.0, 0.0, -3.0]])
    loss = spuriosity_alignment_loss(student, teacher, torch.tensor([0, 0, 1]))
    expected = (0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_unmasked_kl_by_hand_and_direction():
    # p = softmax([ln 3, 0]) = [3/4, 1/4] (teacher), q = [1/2, 1/2] (student): KL(p‖q) = 0.130812
    teacher = torch.tensor([[math.log(3), 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    forward = spuriosity_alignment_loss(student, teacher, None)
    assert forward.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    # the reverse direction KL(q‖p) = 1/2 ln(2/3) + 1/2 ln 2 = 0.143841 is a different number
    backward = spuriosity_alignment_loss(teacher, student, None)
    assert backward.item() == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2), abs=1e-6)


def test_single_class_batch_gives_zero():
    logits = torch.randn(4, 4)
    assert spuriosity_alignment_loss(logits, logits.flip(0), torch.zeros(4, dtype=torch.long)).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_star_regulariser_uses_the_teacher_scale_for_both():
    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    s_img, s_txt, t_img, t_txt = unit(4, 8), unit(4, 8), unit(4, 8), unit(4, 8)
    labels = torch.tensor([0, 1, 0, 2])
    loss = star_regulariser(s_img, s_txt, t_img, t_txt, teacher_scale=50.0, labels=labels)
    mask = labels[:, None] == labels[None, :]
    s = (50.0 * s_img @ s_txt.T).masked_fill(mask, MASK_VALUE)
    t = (50.0 * t_img @ t_txt.T).masked_fill(mask, MASK_VALUE)
    p = torch.softmax(t, -1)
    expected = (p * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum() / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_variant_by_hand_the_teacher_scale_on_both_and_no_mask():
    # The official SpuriousKLReg: both logits scaled by the teacher's τ₀ = 2, every pair kept.
    # Row j of a text tensor is description j. Teacher: image [1, 0], descriptions [ln 3 / 2, 0] and
    # [0, 0] → logits 2·[ln 3 / 2, 0] = [ln 3, 0], p = [3/4, 1/4]. Student: descriptions [0, 0] and
    # [ln 3 / 2, 0] → logits [0, ln 3], q = [1/4, 3/4] (at scale 1 it would be softmax([0, ln 3 / 2])).
    # KL(p‖q) = 3/4·ln 3 + 1/4·ln(1/3) = ln 3 / 2 = 0.549306 for each of the two rows.
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    teacher_text = torch.tensor([[math.log(3) / 2, 0.0], [0.0, 0.0]])
    student_text = teacher_text.flip(0)
    same_class = torch.tensor([0, 0])
    loss = star_regulariser(image, student_text, image, teacher_text, 2.0, same_class, kind="kl")
    assert loss.item() == pytest.approx(math.log(3) / 2, abs=1e-6)
    # star on the same inputs masks every pair (one class), so the loss vanishes: the mask is the only difference.
    assert star_regulariser(image, student_text, image, teacher_text, 2.0, same_class).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_regulariser_is_fp32_under_cpu_bf16_autocast():
    torch.manual_seed(2)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    features = [unit(6, 16).to(torch.bfloat16) for _ in range(4)]
    labels = torch.tensor([0, 1, 2, 0, 1, 3])
    for kind in ("star", "kl"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = star_regulariser(*features, 14.0, labels, kind=kind)
        reference = star_regulariser(*(f.float() for f in features), 14.0, labels, kind=kind)
        assert under_autocast.dtype == torch.float32
        assert under_autocast.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-7)


def test_regulariser_gradient_reaches_both_student_towers():
    s_img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    s_txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    star_regulariser(s_img, s_txt, t, t, 30.0, torch.tensor([0, 1, 2, 3])).backward()
    assert s_img.grad.abs().sum() > 0 and s_txt.grad.abs().sum() > 0


def test_unknown_regulariser_kind_is_named():
    x = torch.eye(2)
    with pytest.raises(ValueError, match="'star' or 'kl'.*'l2'"):
        star_regulariser(x, x, x, x, 1.0, torch.tensor([0, 1]), kind="l2")


@pytest.mark.parametrize(("epoch", "expected"), [(0, 0.5 * 2 / 3), (1, 0.5 * 1 / 3), (2, 0.0)])
def test_diminishing_schedule(epoch, expected):
    # λ_e = λ(1 − (e+1)/E) with λ = 0.5, E = 3
    assert diminishing_weight(0.5, epoch, 3) == pytest.approx(expected)


def test_schedule_off_and_bad_epochs():
    assert diminishing_weight(0.5, 2, 3, diminishing=False) == 0.5
    with pytest.raises(ValueError, match="epoch must be in"):
        diminishing_weight(0.5, 3, 3)
