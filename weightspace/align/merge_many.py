"""Git Re-Basin MergeMany: bring N models into one frame and average them.

Reference: Ainsworth et al. 2023, "Git Re-Basin", Algorithm 3 (MergeMany).
Starting from identity permutations, repeat: for every model ``i`` (random,
seeded order) match it by weight matching to the mean of the *other* models
in their current frames, ``θ' = 1/(N-1) Σ_{j≠i} π_j(θ_j)``, and update
``π_i``; stop after a round in which no permutation changed. The result is
the average ``1/N Σ_j π_j(θ_j)``. The common frame also gives cycle-consistent
pairwise alignments of the N models (:meth:`MergeManyResult.relative`).

BatchNorm running statistics are permuted with their channels and averaged
like everything else; the average of statistics is not the statistics of the
averaged network, so re-estimate them on data (a BN reset / REPAIR) before
evaluating a merged BatchNorm model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from weightspace.align.weight_matching import check_states, weight_matching
from weightspace.errors import WeightspaceError
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation

__all__ = ["MergeManyResult", "merge_many"]


@dataclass(frozen=True)
class MergeManyResult:
    """The outcome of :func:`merge_many`.

    Attributes:
        permutations: ``π_i`` for every input model: ``spec.permute(states[i],
            permutations[i])`` is model ``i`` in the common frame.
        merged: the average of the permuted models (every key of the spec,
            each in its input dtype; integer entries such as
            ``num_batches_tracked`` are taken from the first model).
        iterations: rounds run (each matches every model once).
        converged: ``True`` when the last round changed no permutation.
    """

    permutations: list[Permutation]
    merged: dict[str, Tensor]
    iterations: int
    converged: bool

    def relative(self, target: int, source: int) -> Permutation:
        """The permutation that brings model ``source`` into model
        ``target``'s frame through the common frame:
        ``spec.permute(states[source], result.relative(target, source))``.

        Pairwise alignments made this way are *cycle-consistent* (as in
        Crisostomi et al., "C2M3: Cycle-Consistent Multi-Model Merging",
        2024, which also goes through a universe frame):
        ``relative(i, i)`` is the identity and ``relative(j, i)`` followed by
        ``relative(k, j)`` is ``relative(k, i)`` for every ``i, j, k`` —
        unlike ``N(N-1)`` separate weight matchings, whose compositions
        around a cycle are generally not the identity.
        """
        n = len(self.permutations)
        for label, index in (("target", target), ("source", source)):
            if not 0 <= index < n:
                raise IndexError(f"{label} model {index} is not one of the {n} merged models")
        return self.permutations[source].then(self.permutations[target].inverse())


def merge_many(
    states: Sequence[Mapping[str, Tensor]],
    spec: WeightSpaceSpec,
    *,
    max_iterations: int = 100,
    seed: int = 0,
    max_sweeps: int = 100,
    include_buffers: bool = False,
    progress: bool = False,
) -> MergeManyResult:
    """Align ``states`` to a common frame with MergeMany and average them.

    Args:
        states: two or more state dicts of the architecture of ``spec``.
        spec: their weight-space spec.
        max_iterations: the most rounds (each round matches every model once).
        seed: seeds the model order of every round and the space order of the
            weight matchings; the result is deterministic for a seed.
        max_sweeps, include_buffers: passed to :func:`weight_matching`.
        progress: show a progress bar of the rounds.

    Raises:
        ValueError: fewer than two models; NaN/infinite weights (names the
            model and the parameter).
        StateDictMismatchError: a state dict does not match the spec.
    """
    states = list(states)
    if len(states) < 2:
        raise WeightspaceError(f"merge_many needs at least two models, got {len(states)}")
    if max_iterations < 0:
        raise WeightspaceError(f"max_iterations must be >= 0, got {max_iterations}")
    check_states(spec, **{f"states[{i}]": s for i, s in enumerate(states)})
    n = len(states)
    floats = [p.name for p in spec.parameters if states[0][p.name].is_floating_point()]
    # Detached copies: the result must not depend on (or hold) autograd graphs.
    states = [{k: v.detach() for k, v in s.items()} for s in states]

    perms = [spec.identity_permutation() for _ in range(n)]
    current = [dict(s) for s in states]
    # float64 running sum of the models in their current frames
    total = {k: sum(s[k].double() for s in current) for k in floats}

    rng = np.random.default_rng(seed)
    iterations, converged = 0, False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iterations, desc="merge many", unit="round")
    try:
        while iterations < max_iterations:
            changed = False
            for i in rng.permutation(n):
                i = int(i)
                others = dict(current[i])  # non-float entries: any model's
                for k in floats:
                    others[k] = ((total[k] - current[i][k].double()) / (n - 1)).to(
                        current[i][k].dtype)
                result = weight_matching(
                    others, states[i], spec, init=perms[i], max_sweeps=max_sweeps,
                    seed=int(rng.integers(2**31)), include_buffers=include_buffers,
                )
                if result.permutation.equal(perms[i]):
                    continue
                changed = True
                perms[i] = result.permutation
                new = spec.permute(states[i], perms[i])
                for k in floats:
                    total[k] += new[k].double() - current[i][k].double()
                current[i] = new
            iterations += 1
            if bar is not None:
                bar.update(1)
            if not changed:
                converged = True
                break
    finally:
        if bar is not None:
            bar.close()

    merged = {}
    for p in spec.parameters:
        k = p.name
        if k in total:
            acc = current[0][k].double()
            for s in current[1:]:
                acc = acc + s[k].double()
            merged[k] = (acc / n).to(states[0][k].dtype)
        else:
            merged[k] = current[0][k].clone()
    return MergeManyResult(permutations=perms, merged=merged, iterations=iterations,
                           converged=converged)
