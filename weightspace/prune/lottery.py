"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding.

References:

* Frankle & Carbin 2019, "The Lottery Ticket Hypothesis: Finding Sparse,
  Trainable Neural Networks" (ICLR 2019), Sec. 1 and Algorithm "iterative
  pruning": train, prune ``p %`` of the remaining weights by magnitude, reset
  the survivors to their initial values, retrain; a *winning ticket* trains
  to the dense accuracy, while the same mask with a random re-initialisation
  does not.
* Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the
  Lottery Ticket Hypothesis" (ICML 2020): for larger networks, rewind the
  survivors to an early iterate ``θ_k`` instead of the initialisation ``θ_0``
  and retrain for the remaining ``T - k`` steps.

One IMP run with rate ``r`` and ``R`` rounds, on a network trained for ``T``
epochs and rewound to epoch ``k``::

    θ_0 → train T epochs (save θ_k)                       round 0 (dense)
    for round j = 1 … R:
        m_j = prune r of the weights m_{j-1} keeps, by |θ_T|   sparsity 1 - (1 - r)^j
        θ = m_j ⊙ θ_k → train epochs k … T-1 with m_j attached

The data order of epoch ``e`` is the same in every run (it only depends on
``seed`` and ``e``), so retraining from ``θ_k`` replays exactly the batches
the dense run saw after its rewind point.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.classify import evaluate
from weightspace.data import Split
from weightspace.prune.magnitude import (
    SCOPES,
    apply_masks,
    attach_masks,
    check_sparsity,
    magnitude_masks,
    prunable_parameters,
)
from weightspace.prune.structured import PruneError
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.trace import trace

logger = logging.getLogger(__name__)

# Offset between the training seed and the seed of the random re-initialisation
# control, so the control never reuses the original initialisation's stream.
_CONTROL_SEED_OFFSET = 7919


@dataclass(frozen=True)
class LotteryRound:
    """The outcome of one IMP round.

    Args:
        round: the round index; ``0`` is the dense network.
        sparsity: fraction of prunable weights pruned by the round's mask,
            ``1 - (1 - rate) ** round`` up to rounding to whole weights.
        test_loss: mean cross-entropy of the retrained ticket on the test set.
        test_accuracy: its test accuracy.
        control_loss: test loss of the random re-initialisation control (the
            same mask on a freshly initialised network, trained the same way);
            ``None`` when no control was run and for round 0.
        control_accuracy: its test accuracy, or ``None``.
    """

    round: int
    sparsity: float
    test_loss: float
    test_accuracy: float
    control_loss: float | None = None
    control_accuracy: float | None = None


@dataclass
class LotteryResult:
    """What :func:`iterative_magnitude_pruning` found.

    Args:
        rounds: one :class:`LotteryRound` per round, the dense round 0 first.
        masks: the final keep-masks (``True`` = kept) of the prunable
            parameters.
        state_dict: the final retrained sparse weights (masked entries zero).
        rewind_state_dict: the dense weights at the rewind point ``θ_k``
            (the initialisation for ``rewind_epoch=0``).
    """

    rounds: list[LotteryRound]
    masks: dict[str, Tensor]
    state_dict: dict[str, Tensor]
    rewind_state_dict: dict[str, Tensor]

    def ticket(self) -> dict[str, Tensor]:
        """The final winning ticket before retraining: ``masks ⊙ θ_k``."""
        return apply_masks(self.rewind_state_dict, self.masks)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fork_rng(device: torch.device):
    """A context that restores the global RNG on exit, so seeding inside it
    (dropout, re-initialisation) does not change the caller's random stream."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _epoch_orders(num_samples: int, epochs: int, seed: int) -> list[Tensor]:
    """The shuffled sample order of every epoch, as
    :func:`weightspace.classify.train_classifier` draws them."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(num_samples, generator=generator) for _ in range(epochs)]


def _train(model: nn.Module, data: Split, *, masks: Mapping[str, Tensor] | None,
           first_epoch: int, epochs: int, lr: float, batch_size: int, seed: int,
           snapshot_epoch: int | None = None) -> dict[str, Tensor] | None:
    """Adam on cross-entropy for epochs ``first_epoch … epochs - 1`` with
    ``masks`` attached; returns the state after ``snapshot_epoch`` epochs
    (``None`` if not asked for). A small loop rather than
    :func:`~weightspace.classify.train_classifier` because IMP needs the
    state at an epoch boundary and retraining that starts mid-schedule."""
    device = next(model.parameters()).device
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    orders = _epoch_orders(len(y_train), epochs, seed)
    snapshot = _state(model) if snapshot_epoch == first_epoch else None
    handle = attach_masks(model, masks) if masks else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    try:
        with _fork_rng(device):
            torch.manual_seed(seed + first_epoch)  # dropout and friends
            model.train()
            for epoch in range(first_epoch, epochs):
                order = orders[epoch].to(device)
                for start in range(0, len(order), batch_size):
                    index = order[start:start + batch_size]
                    loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                if snapshot_epoch == epoch + 1:
                    snapshot = _state(model)
    finally:
        if handle is not None:
            handle.apply()  # the last step is not followed by a forward pass
            handle.remove()
        model.eval()
    return snapshot


def _reinitialise(model: nn.Module, seed: int) -> None:
    """Draw fresh weights from the model's own initialisation scheme: every
    submodule's ``reset_parameters`` under ``seed``. Parameters of modules
    without one (custom initialisations) are shuffled instead, which keeps
    their distribution and breaks the link to the original values."""
    device = next(model.parameters()).device
    with _fork_rng(device), torch.no_grad():
        torch.manual_seed(seed)
        reset: set[int] = set()
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                reset.update(id(p) for p in module.parameters(recurse=False))
        for name, parameter in model.named_parameters():
            if id(parameter) not in reset:
                logger.info("random re-initialisation: %s has no reset_parameters; "
                            "shuffling its initial values instead", name)
                flat = parameter.reshape(-1)
                flat.copy_(flat[torch.randperm(flat.numel(), device=device)])


def _check_positive_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PruneError(f"{name} must be an integer >= {minimum}, got {value!r}",
                         parameter=name)
    return value


def _check_arguments(rounds: int, rate: float, rewind_epoch: int, epochs: int, lr: float,
                     batch_size: int, scope: str) -> float:
    """Check :func:`iterative_magnitude_pruning`'s settings; the rate as a float."""
    _check_positive_int(rounds, "rounds", 0)
    _check_positive_int(epochs, "epochs", 1)
    _check_positive_int(batch_size, "batch_size", 1)
    _check_positive_int(rewind_epoch, "rewind_epoch", 0)
    if rewind_epoch >= epochs:
        raise PruneError(f"rewind_epoch must be smaller than epochs={epochs} (retraining "
                         f"runs epochs rewind_epoch … epochs-1), got {rewind_epoch}",
                         parameter="rewind_epoch")
    rate = check_sparsity(rate, "rate")
    if rate == 0.0:
        raise PruneError("rate must be in (0, 1), got 0: no round would prune anything",
                         parameter="rate")
    if scope not in SCOPES:
        raise PruneError(f"unknown scope {scope!r}; valid values are {', '.join(SCOPES)}",
                         parameter="scope")
    if not lr > 0:
        raise PruneError(f"lr must be positive, got {lr!r}", parameter="lr")
    return rate


def _prunable_spec(work: nn.Module, data: Split, spec: WeightSpaceSpec | None) -> WeightSpaceSpec:
    """``spec`` checked against the network (traced from it when ``None``)."""
    if spec is None:
        spec = trace(work, tuple(data.x_train[:1].shape))
    else:
        spec.check_state_dict(work.state_dict())
    if not prunable_parameters(spec):
        raise PruneError("the model has no prunable weights (no linear/conv weight parameters)",
                         parameter="model")
    return spec


@dataclass(frozen=True)
class _Schedule:
    """How every IMP round trains and evaluates (fixed for one run)."""

    data: Split
    test: tuple[Tensor, Tensor]
    rewind_epoch: int
    train_args: Mapping[str, Any]


def _retrain_round(work: nn.Module, masks: Mapping[str, Tensor], rewind_state: Mapping[str, Tensor],
                   round_index: int, schedule: _Schedule, control_seed: int | None
                   ) -> tuple[LotteryRound, dict[str, Tensor]]:
    """One pruned round on ``work`` (in place): rewind the survivors of
    ``masks`` to ``rewind_state``, retrain, evaluate, and with a
    ``control_seed`` train the same mask from a random re-initialisation.
    Returns the round's record and the retrained weights."""
    work.load_state_dict(apply_masks(rewind_state, masks))
    _train(work, schedule.data, masks=masks, first_epoch=schedule.rewind_epoch,
           **schedule.train_args)
    loss, accuracy = evaluate(work, *schedule.test)
    trained = _state(work)

    control_loss = control_accuracy = None
    if control_seed is not None:
        control = copy.deepcopy(work)
        _reinitialise(control, control_seed + _CONTROL_SEED_OFFSET * round_index)
        _train(control, schedule.data, masks=masks, first_epoch=0, **schedule.train_args)
        control_loss, control_accuracy = evaluate(control, *schedule.test)

    pruned = sum(int((~m).sum()) for m in masks.values())
    sparsity = pruned / sum(m.numel() for m in masks.values())
    logger.info("IMP round %d: sparsity %.4f, test accuracy %.4f%s", round_index,
                sparsity, accuracy,
                "" if control_accuracy is None
                else f", random re-init control {control_accuracy:.4f}")
    return (LotteryRound(round_index, sparsity, loss, accuracy, control_loss, control_accuracy),
            trained)


def iterative_magnitude_pruning(
    model: nn.Module,
    data: Split,
    spec: WeightSpaceSpec | None = None,
    rounds: int = 5,
    rate: float = 0.2,
    rewind_epoch: int = 0,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 64,
    scope: str = "global",
    seed: int = 0,
    random_reinit_control: bool = False,
    progress: bool = False,
) -> LotteryResult:
    """Find a lottery ticket by iterative magnitude pruning with rewinding
    (Frankle & Carbin 2019; Frankle et al. 2020).

    Round 0 trains the dense network for ``epochs`` epochs (Adam, batches in a
    seeded order) and saves its weights after ``rewind_epoch`` epochs. Each
    following round prunes ``rate`` of the weights that are still kept, by
    the magnitude of the previous round's trained weights
    (:func:`~weightspace.prune.magnitude.magnitude_masks` with the previous
    masks), rewinds the survivors to the saved weights and retrains them for
    the remaining ``epochs - rewind_epoch`` epochs with the mask attached
    (:func:`~weightspace.prune.magnitude.attach_masks`). Only weights of role
    ``"weight"``/``"depthwise_weight"`` are pruned.

    With ``random_reinit_control=True`` every pruned round also trains the
    same mask on a random re-initialisation of the network (a different seed,
    the full ``epochs``): the classic control, which should fall behind the
    ticket as the sparsity grows.

    Args:
        model: the network; its current weights are the initialisation
            ``θ_0``. It is not modified (IMP runs on a copy).
        data: the train/test split; the model's input is ``data.x_train``.
        spec: the weight-space spec; traced from ``model`` with the input
            shape ``data.x_train[:1].shape`` when ``None``.
        rounds: number of pruning rounds after the dense round 0.
        rate: fraction of the remaining weights pruned per round,
            ``0 < rate < 1``; round ``j`` has sparsity ``1 - (1 - rate)^j``.
        rewind_epoch: epoch whose weights the survivors are reset to
            (``0`` = the initialisation, as in Frankle & Carbin 2019);
            ``0 <= rewind_epoch < epochs``.
        epochs: training epochs of the dense run.
        lr: Adam learning rate.
        batch_size: mini-batch size.
        scope: ``"global"`` or ``"layer"`` magnitude ranking.
        seed: seed of the data order and dropout; the control is initialised
            from a seed derived from it.
        random_reinit_control: also train the random re-initialisation
            control each pruned round (twice the training time).
        progress: show a tqdm bar over the rounds.

    Returns:
        A :class:`LotteryResult`.

    Shapes:
        - data.x_train: ``[N, *input_shape]``, data.y_train: ``[N]``.
        - result.masks[name]: the parameter's shape, ``torch.bool``.

    Raises:
        PruneError: an argument out of range (the message names it, as does
            the error's ``parameter``) or a model without prunable weights.
        StateDictMismatchError: a ``spec`` that does not match ``model``.

    Example::

        >>> model = build_model("mlp", in_features=64, hidden=(128, 128))
        >>> result = iterative_magnitude_pruning(model, load_digits_split(flat=True),
        ...                                      rounds=3, random_reinit_control=True)
        >>> [(r.sparsity, r.test_accuracy, r.control_accuracy) for r in result.rounds]
    """
    rate = _check_arguments(rounds, rate, rewind_epoch, epochs, lr, batch_size, scope)
    work = copy.deepcopy(model)
    spec = _prunable_spec(work, data, spec)
    device = next(work.parameters()).device
    schedule = _Schedule(data, (data.x_test.to(device), data.y_test.to(device)), rewind_epoch,
                         dict(lr=lr, batch_size=batch_size, seed=seed, epochs=epochs))

    bar = tqdm(total=rounds + 1, desc="IMP", unit="round", disable=not progress)
    rewind_state = _train(work, data, masks=None, first_epoch=0,
                          snapshot_epoch=rewind_epoch, **schedule.train_args)
    assert rewind_state is not None  # rewind_epoch < epochs, so the snapshot was taken
    loss, accuracy = evaluate(work, *schedule.test)
    history = [LotteryRound(0, 0.0, loss, accuracy)]
    logger.info("IMP round 0 (dense): test accuracy %.4f", accuracy)
    bar.update()

    masks: dict[str, Tensor] | None = None
    trained = _state(work)
    for round_index in range(1, rounds + 1):
        target = 1.0 - (1.0 - rate) ** round_index
        masks = magnitude_masks(trained, spec, target, scope=scope, existing=masks)
        record, trained = _retrain_round(work, masks, rewind_state, round_index, schedule,
                                         seed if random_reinit_control else None)
        history.append(record)
        bar.update()
    bar.close()

    if masks is None:  # rounds=0: the dense network, nothing pruned
        masks = {name: torch.ones(spec.parameter(name).shape, dtype=torch.bool, device=device)
                 for name in prunable_parameters(spec)}
    return LotteryResult(history, masks, apply_masks(trained, masks), rewind_state)
