"""Segmentation losses on logits, and a small parser that composes them from a spec string.

Every loss takes the model's raw logits `(N, 1, H, W)` and a float target of the same shape
with values in {0, 1}, and returns a scalar tensor. Models return logits (`brainseg.models.base`), so the
sigmoid lives here, where it can be fused with the log for a numerically safe BCE/focal term.
All arithmetic runs in float32 with autocast switched off: under fp16/bf16 autocast the sums
over a whole batch of pixels in a soft Dice lose too much precision.

Compose losses with `CombinedLoss` or `build_loss("0.5*bce+1*dice")`, rather than flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainseg.config import parse_loss_spec
from brainseg.errors import BrainsegError

__all__ = [
    "LOSSES",
    "BCELoss",
    "CombinedLoss",
    "DiceLoss",
    "FocalLoss",
    "TverskyLoss",
    "build_loss",
]


@contextlib.contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    """Switch autocast off for the enclosed ops (only where the device type supports autocast)."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support: nothing to switch off
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _check(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate shapes and return both tensors as float32 on the logits' device."""
    if logits.shape != target.shape:
        raise BrainsegError(
            f"loss: logits have shape {tuple(logits.shape)} but the target has {tuple(target.shape)}; "
            "expected the same shape (N, 1, H, W)"
        )
    if logits.dim() < 2:
        raise BrainsegError(f"loss: expected (N, C, ...) tensors, got shape {tuple(logits.shape)}")
    return logits.float(), target.to(device=logits.device, dtype=torch.float32)


def _reduce_dims(x: Tensor, batch: bool) -> list[int]:
    # batch=True: the whole batch is one set of pixels (a "volume"); else one set per sample.
    # The channel axis (size 1 here) is always summed with the pixels.
    start = 0 if batch else 1
    return list(range(start, x.dim()))


def _soft(logits: Tensor, target: Tensor, batch: bool) -> tuple[Tensor, Tensor, list[int]]:
    """Checked sigmoid probabilities, target and the dimensions to sum over (Dice, Tversky)."""
    x, t = _check(logits, target)
    p = torch.sigmoid(x)
    return p, t, _reduce_dims(p, batch)


class DiceLoss(nn.Module):
    """Soft Dice loss on sigmoid probabilities (Milletari et al. 2016, V-Net).

    loss = 1 - (2·Σ p·t + smooth) / (Σ p + Σ t + smooth)

    Args:
        smooth: added to numerator and denominator; keeps the loss defined (and 0) when both the
            prediction and the target are empty.
        batch: True sums over the whole batch as if it were one volume (stable when most slices
            are empty, as in LGG); False computes one Dice per sample and averages them.
    """

    def __init__(self, smooth: float = 1.0, batch: bool = True) -> None:
        super().__init__()
        if smooth < 0:
            raise BrainsegError(f"DiceLoss: smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.batch = bool(batch)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with _fp32(logits.device):
            p, t, dims = _soft(logits, target, self.batch)
            inter = (p * t).sum(dim=dims)
            denom = p.sum(dim=dims) + t.sum(dim=dims)
            dice = (2.0 * inter + self.smooth) / (denom + self.smooth).clamp_min(1e-12)
            return (1.0 - dice).mean()

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, batch={self.batch}"


class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al. 2017): Dice with separate weights on false positives/negatives.

    loss = 1 - (TP + smooth) / (TP + α·FP + β·FN + smooth), with soft TP = Σ p·t,
    FP = Σ p·(1-t), FN = Σ (1-p)·t. β > α penalises missed tumour more than over-segmentation;
    α = β = 0.5 is the Dice loss.

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives.
        smooth: added to numerator and denominator.
        batch: sum over the whole batch (True) or per sample then mean (False), as in `DiceLoss`.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0, batch: bool = True) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or smooth < 0:
            raise BrainsegError(f"TverskyLoss: alpha, beta, smooth must be >= 0, got {alpha}, {beta}, {smooth}")
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)
        self.batch = bool(batch)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with _fp32(logits.device):
            p, t, dims = _soft(logits, target, self.batch)
            tp = (p * t).sum(dim=dims)
            fp = (p * (1.0 - t)).sum(dim=dims)
            fn = ((1.0 - p) * t).sum(dim=dims)
            denom = tp + self.alpha * fp + self.beta * fn + self.smooth
            return (1.0 - (tp + self.smooth) / denom.clamp_min(1e-12)).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, smooth={self.smooth}, batch={self.batch}"


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (log-sum-exp form, safe at any logit), mean over pixels.

    Args:
        pos_weight: weight of the positive (tumour) term; > 1 counters the scarcity of tumour
            pixels. None → 1.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        if pos_weight is not None and pos_weight <= 0:
            raise BrainsegError(f"BCELoss: pos_weight must be > 0, got {pos_weight}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with _fp32(logits.device):
            x, t = _check(logits, target)
            pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=x.device)
            return F.binary_cross_entropy_with_logits(x, t, pos_weight=pw)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017, RetinaNet), mean over pixels.

    FL = -α_t · (1 - p_t)^γ · log(p_t), where p_t is the probability given to the true class and
    α_t = α for tumour pixels, 1 - α for background. (1 - p_t)^γ is computed as
    exp(γ · logsigmoid(·)) so that it stays finite, with finite gradients, at extreme logits.

    Args:
        alpha: class balance weight of tumour pixels in [0, 1]; None → no weighting.
        gamma: focusing exponent (0 → plain BCE).
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise BrainsegError(f"FocalLoss: alpha must be in [0, 1] or None, got {alpha}")
        if gamma < 0:
            raise BrainsegError(f"FocalLoss: gamma must be >= 0, got {gamma}")
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with _fp32(logits.device):
            x, t = _check(logits, target)
            ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            # log(1 - p_t) = logsigmoid(-x) for t = 1 and logsigmoid(x) for t = 0.
            log_one_minus_pt = F.logsigmoid(-x * (2.0 * t - 1.0))
            loss = torch.exp(self.gamma * log_one_minus_pt) * ce
            if self.alpha is not None:
                loss = (self.alpha * t + (1.0 - self.alpha) * (1.0 - t)) * loss
            return loss.mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


class CombinedLoss(nn.Module):
    """Weighted sum of losses: Σ wᵢ · lossᵢ(logits, target).

    Args:
        terms: (weight, loss module) pairs, e.g. `[(1.0, BCELoss()), (1.0, DiceLoss())]`.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise BrainsegError("CombinedLoss: needs at least one (weight, loss) term")
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList([m for _, m in terms])

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        total = None
        for w, loss in zip(self.weights, self.terms):
            value = w * loss(logits, target)
            total = value if total is None else total + value
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return "weights=" + repr(self.weights)


#: Names accepted by `build_loss`, each mapped to a constructor with the default settings.
LOSSES: dict[str, Callable[[], nn.Module]] = {
    "bce": BCELoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
}



def build_loss(spec: str = "bce+dice") -> nn.Module:
    """Build a loss from a spec such as "bce+dice", "dice", "0.5*bce+1*dice" or "focal+dice".

    Terms are separated by "+", each optionally prefixed by "weight*"; a missing weight is 1
    (`brainseg.config.parse_loss_spec`, which the config's rule for train.loss uses too).
    A single unweighted term returns that loss module itself; anything else a `CombinedLoss`.
    Known names: see `LOSSES`.

    Raises:
        BrainsegError: unknown name, malformed term, non-positive weight or a repeated term.
    """
    terms = [(weight, LOSSES[name]()) for weight, name in parse_loss_spec(spec)]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return CombinedLoss(terms)
