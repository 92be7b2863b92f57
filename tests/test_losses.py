"""Losses on logits: against MONAI / torch on the same inputs, hand formulas, edge cases, parser."""

from __future__ import annotations

import pytest
import torch
from monai import losses as monai_losses

from brainseg.errors import BrainsegError
from brainseg.losses import LOSSES, BCELoss, CombinedLoss, DiceLoss, FocalLoss, TverskyLoss, build_loss


def _inputs(seed: int = 0, n: int = 3, size: int = 16, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, size, size, generator=g) * scale
    target = (torch.rand(n, 1, size, size, generator=g) < 0.3).float()
    return logits, target


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("smooth", [1.0, 1e-5])
def test_dice_matches_monai(batch: bool, smooth: float) -> None:
    logits, target = _inputs()
    target[0] = 0  # one empty sample: the per-sample (batch=False) path must handle it like MONAI
    ours = DiceLoss(smooth=smooth, batch=batch)(logits, target)
    ref = monai_losses.DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, batch=batch)(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("batch", [True, False])
def test_tversky_matches_monai(batch: bool) -> None:
    logits, target = _inputs(1)
    ours = TverskyLoss(alpha=0.3, beta=0.7, smooth=1.0, batch=batch)(logits, target)
    ref = monai_losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0, batch=batch)(
        logits, target
    )
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_tversky_with_equal_weights_is_dice() -> None:
    logits, target = _inputs(2)
    t = TverskyLoss(alpha=0.5, beta=0.5, smooth=1.0)(logits, target)
    d = DiceLoss(smooth=1.0)(logits, target)
    # Tversky with α=β=½: (TP+s)/(TP+½FP+½FN+s) = (2TP+2s)/(2TP+FP+FN+2s): Dice with smooth 2s.
    d2 = DiceLoss(smooth=2.0)(logits, target)
    assert t.item() == pytest.approx(d2.item(), abs=1e-6)
    assert t.item() != pytest.approx(d.item(), abs=1e-9)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.75, 1.0), (None, 2.0)])
def test_focal_matches_monai_and_formula(alpha: float | None, gamma: float) -> None:
    logits, target = _inputs(3)
    ours = FocalLoss(alpha=alpha, gamma=gamma)(logits, target)
    ref = monai_losses.FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False)(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    # Lin et al. 2017 written out in float64 with plain probabilities.
    p = torch.sigmoid(logits.double())
    t = target.double()
    pt = p * t + (1 - p) * (1 - t)
    a = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    by_hand = (-a * (1 - pt) ** gamma * torch.log(pt)).mean()
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_focal_with_gamma_zero_and_no_alpha_is_bce() -> None:
    logits, target = _inputs(4)
    assert FocalLoss(alpha=None, gamma=0.0)(logits, target).item() == pytest.approx(
        BCELoss()(logits, target).item(), abs=1e-6
    )


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_bce_matches_torch_and_formula(pos_weight: float | None) -> None:
    logits, target = _inputs(5)
    ours = BCELoss(pos_weight=pos_weight)(logits, target)
    pw = None if pos_weight is None else torch.tensor(pos_weight)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    p = torch.sigmoid(logits.double())
    w = 1.0 if pos_weight is None else pos_weight
    by_hand = -(w * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-5)


ALL_SPECS = ["dice", "bce", "focal", "tversky", "bce+dice", "focal+dice", "0.5*bce+1*dice"]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_extreme_logits_give_finite_loss_and_gradient(spec: str) -> None:
    _, target = _inputs(6)
    # Half of the extreme logits are confidently wrong: the worst case for log(sigmoid(·)).
    sign = torch.where(torch.rand_like(target) < 0.5, 1.0, -1.0)
    logits = (50.0 * sign).requires_grad_(True)
    loss = build_loss(spec)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_perfect_prediction_gives_near_zero_loss(spec: str) -> None:
    _, target = _inputs(7)
    logits = torch.where(target > 0, 50.0, -50.0)
    assert build_loss(spec)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_of_empty_target_and_empty_prediction_is_zero() -> None:
    target = torch.zeros(2, 1, 8, 8)
    assert DiceLoss()(torch.full_like(target, -50.0), target).item() == pytest.approx(0.0, abs=1e-6)
    # …and a confident false positive on the empty target is penalised.
    assert DiceLoss()(torch.full_like(target, 50.0), target).item() > 0.9


def test_batch_dice_is_not_the_mean_of_sample_dice() -> None:
    logits, target = _inputs(8)
    target[0] = 0
    assert DiceLoss(batch=True)(logits, target).item() != pytest.approx(
        DiceLoss(batch=False)(logits, target).item(), abs=1e-4
    )


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_autocast_bf16_inputs_are_computed_in_fp32(spec: str) -> None:
    logits, target = _inputs(9)
    loss_fn = build_loss(spec)
    ref = loss_fn(logits.bfloat16().float(), target)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = loss_fn(logits.bfloat16(), target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), abs=1e-6)


def test_build_loss_composes_weighted_terms() -> None:
    logits, target = _inputs(10)
    bce, dice = BCELoss()(logits, target).item(), DiceLoss()(logits, target).item()
    default = build_loss("bce+dice")
    assert isinstance(default, CombinedLoss)
    assert default(logits, target).item() == pytest.approx(bce + dice, abs=1e-6)
    weighted = build_loss("0.5*bce+1*dice")
    assert weighted(logits, target).item() == pytest.approx(0.5 * bce + dice, abs=1e-6)
    assert build_loss(" Focal + 2 * Dice ")(logits, target).item() == pytest.approx(
        FocalLoss()(logits, target).item() + 2 * dice, abs=1e-6
    )
    assert isinstance(build_loss("dice"), DiceLoss)
    assert isinstance(build_loss("tversky"), TverskyLoss)
    assert isinstance(build_loss("2*dice"), CombinedLoss)


@pytest.mark.parametrize("spec", ["", "  ", "cross_entropy", "bce+", "bce*dice", "0*dice", "bce+bce", "-1*dice"])
def test_build_loss_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(BrainsegError) as err:
        build_loss(spec)
    assert repr(spec) in str(err.value) or spec.strip() == ""


def test_unknown_loss_lists_known_names() -> None:
    with pytest.raises(BrainsegError) as err:
        build_loss("bce+lovasz")
    msg = str(err.value)
    assert "lovasz" in msg
    assert all(name in msg for name in LOSSES)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(BrainsegError, match=r"\(2, 1, 8, 8\).*\(2, 8, 8\)"):
        DiceLoss()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))


def test_bad_constructor_arguments_raise() -> None:
    for make in (lambda: DiceLoss(smooth=-1), lambda: FocalLoss(alpha=1.5), lambda: BCELoss(pos_weight=0),
                 lambda: TverskyLoss(alpha=-0.1), lambda: CombinedLoss([])):  # fmt: skip
        with pytest.raises(BrainsegError):
            make()
