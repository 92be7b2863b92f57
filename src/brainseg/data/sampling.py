"""Tumour-weighted slice sampling: show the model tumour slices more often than empty ones.

About two thirds of LGG slices have no tumour; drawing tumour slices `weight` times as often
balances the classes without duplicating files. Draws are with replacement and reproducible:
epoch e uses a generator seeded from (seed, e), so a resumed run sees the same slices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from brainseg.errors import BrainsegError


class TumourWeightedSampler(Sampler[int]):
    """Indices drawn with replacement, tumour slices `weight` times as likely as empty ones.

    With `num_replicas` > 1 (DistributedDataParallel), every rank draws the same global sequence
    and keeps every `num_replicas`-th index starting at `rank`, so ranks see disjoint shares.

    Args:
        has_tumour: bool per dataset item (`SliceDataset.has_tumour`).
        weight: relative probability of a tumour slice (1 = uniform); must be > 0.
        num_samples: indices per epoch over all ranks; default len(has_tumour).
        seed: base seed; `set_epoch(e)` selects the draw of epoch e.
        rank, num_replicas: this process's share in distributed training.
    """

    def __init__(
        self,
        has_tumour: np.ndarray,
        *,
        weight: float,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        num_replicas: int = 1,
    ) -> None:
        has_tumour = np.asarray(has_tumour, dtype=bool)
        if has_tumour.ndim != 1 or len(has_tumour) == 0:
            raise BrainsegError(f"tumour-weighted sampler needs a non-empty 1-D has_tumour, got shape {has_tumour.shape}")
        if not weight > 0:
            raise BrainsegError(f"tumour weight must be > 0, got {weight}")
        if not 0 <= rank < num_replicas:
            raise BrainsegError(f"rank {rank} is not in [0, {num_replicas})")
        self.weights = torch.from_numpy(np.where(has_tumour, float(weight), 1.0))
        self.total = int(num_samples) if num_samples is not None else len(has_tumour)
        if self.total < 1:
            raise BrainsegError(f"num_samples must be at least 1, got {num_samples}")
        self.seed = int(seed)
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        # mix seed and epoch through SeedSequence so nearby (seed, epoch) pairs are unrelated
        g.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1))
        draw = torch.multinomial(self.weights, self.total, replacement=True, generator=g)
        return iter(draw[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.num_replicas))


def tumour_weighted_sampler(
    has_tumour: np.ndarray, *, weight: float, num_samples: int | None = None, seed: int = 0
) -> TumourWeightedSampler:
    """A sampler drawing tumour slices `weight` times as often as empty ones (see the class)."""
    return TumourWeightedSampler(has_tumour, weight=weight, num_samples=num_samples, seed=seed)
