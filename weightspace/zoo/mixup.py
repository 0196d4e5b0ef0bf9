"""Mixup in weight space, optionally after alignment.

Mixup (Zhang et al. 2018) trains on convex combinations of two inputs and of
their targets. In weight space the average of two independently trained
networks is usually a poor network: their hidden neurons are in arbitrary
orders. Aligning the partner to the first network (Git Re-Basin, Ainsworth et
al. 2023) first makes the interpolation meaningful; Neural Graphs (Kofinas et
al. 2024) report that plain weight-space mixup does not help, which is why
the ``align`` hook exists.

:class:`WeightMixup` acts on a batch of rows of one architecture, pairing
each row with another row of the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.spec import WeightSpaceSpec

Aligner = Callable[[Tensor, Tensor, WeightSpaceSpec], Tensor]
"""``align(reference [k, P], partner [k, P], spec) -> partner aligned to reference``."""


@dataclass(frozen=True)
class MixedBatch:
    """The result of :meth:`WeightMixup.__call__`.

    Shapes:
        params: ``[k, P]``; partner: ``[k]`` (position of each row's partner
        in the block); lam: ``[k]`` (weight of the row itself).
    """

    params: Tensor
    partner: Tensor
    lam: Tensor


class WeightMixup:
    """Mix each network with a random partner of the same architecture:
    ``lam * own + (1 - lam) * partner`` with ``lam ~ Beta(alpha, alpha)``
    per row.

    The loss mixes the targets the same way, e.g.
    ``lam * CE(out, y) + (1 - lam) * CE(out, y[partner])``;
    :class:`~weightspace.zoo.dataset.ZooGraphDataset` adds ``y_partner`` and
    ``lam`` to a mixed batch for that.

    Args:
        alpha: Beta distribution parameter (small: mostly near-copies).
        p: probability that a row is mixed at all (else ``lam = 1``).
        align: aligns each partner to its row before mixing (a weight
            matching function, see the alignment module); ``None`` mixes
            the raw weights.
    """

    def __init__(self, alpha: float = 0.2, p: float = 1.0, align: Aligner | None = None) -> None:
        if alpha <= 0:
            raise WeightspaceError(f"WeightMixup alpha must be positive, got {alpha}")
        if not 0.0 <= p <= 1.0:
            raise WeightspaceError(f"WeightMixup p must be in [0, 1], got {p}")
        self.alpha = float(alpha)
        self.p = float(p)
        self.align = align

    def __call__(self, params: Tensor, spec: WeightSpaceSpec,
                 generator: torch.Generator | None = None) -> MixedBatch:
        if params.dim() != 2 or params.shape[1] != spec.num_parameters:
            raise WeightspaceError(f"WeightMixup expects [k, {spec.num_parameters}] parameters, got "
                             f"{list(params.shape)}")
        k = params.shape[0]
        partner = torch.randperm(k, generator=generator)
        beta = torch.distributions.Beta(torch.tensor(self.alpha, dtype=torch.float64),
                                        torch.tensor(self.alpha, dtype=torch.float64))
        # Beta.sample takes no generator: draw from a seed taken from the
        # generator, in a forked RNG so the global random state is untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lam = beta.sample((k,))
            keep = torch.rand(k, dtype=torch.float64) >= self.p
        lam = torch.where(keep | (partner == torch.arange(k)), torch.ones_like(lam), lam)
        others = params[partner]
        if self.align is not None:
            others = self.align(params, others, spec)
        lam_cast = lam.to(params.dtype).unsqueeze(1).to(params.device)
        mixed = lam_cast * params + (1 - lam_cast) * others
        return MixedBatch(mixed, partner, lam.to(torch.float32))

    def __repr__(self) -> str:
        align = "none" if self.align is None else getattr(self.align, "__name__", "custom")
        return f"WeightMixup(alpha={self.alpha}, p={self.p}, align={align})"
