"""Metanetwork-guided structured pruning.

Reference: Liu, Wang, Zhang, "Meta Pruning via Graph Metanetworks: A
Universal Meta Learning Framework for Network Pruning" (arXiv:2506.12041,
2025; code github.com/Yewei-Liu/MetaPruning). A network becomes its parameter graph (channels as nodes, kernels as
edge features), a graph metanetwork with *equivariant* outputs maps it to a
modified network of the same architecture that is easier to prune, and the
metanetwork is meta-trained over many networks with

.. math::
    \\mathcal{L}(\\phi) = \\mathbb{E}_{\\theta \\sim \\text{zoo}}\\Big[
        \\mathcal{L}_{\\text{task}}\\big(f_{M_\\phi(\\theta)}\\big)
        + \\lambda \\sum_{s} \\sum_{i \\in s} \\lVert M_\\phi(\\theta)_{g(s, i)} \\rVert_2 \\Big]

— the task loss of the *output* network (through a functional forward, so
the gradient reaches the metanetwork) plus a group-lasso term over every
neuron's dependency group ``g(s, i)`` (all weights that touch neuron ``i`` of
space ``s``, :func:`~weightspace.prune.group_norms`). A new network is then
mapped once, pruned structurally to a target speed-up by group-L2
importance, and fine-tuned.

The metanetwork is a :class:`~weightspace.nn.GMN` (Lim et al., ICLR 2024)
with its equivariant head: permuting the hidden neurons of the input permutes
those of the output the same way, and its decoder starts at the identity (it
adds zero-initialised changes to the input's values), so an untrained
:class:`MetaPruner` returns its input and meta-training starts from "prune
the network as it is".

Example::

    >>> spec = zoo.group("cnn-silu").spec
    >>> model = zoo.group("cnn-silu").model_def.build()
    >>> pruner = MetaPruner(spec, hidden=64, num_layers=4)
    >>> rows, _ = trained_zoo_rows("digits-cnn.h5", "cnn-silu")
    >>> history = meta_train(pruner, rows, spec, model, load_digits_split(),
    ...                      epochs=100, sparsity_weight=3e-3)
    >>> small, report = meta_prune(pruner, model, spec, state_dict, speedup=2.0,
    ...                            data=load_digits_split(), finetune_epochs=5)

The package, one module per concern:

* :mod:`~weightspace.prune.meta.pruner`: :class:`MetaPruner` (the metanetwork);
* :mod:`~weightspace.prune.meta.selection`: :func:`trained_zoo_rows` (which
  networks of a zoo it trains on);
* :mod:`~weightspace.prune.meta.losses`: :func:`output_logits` (task loss of
  the output networks) and :func:`group_lasso`;
* :mod:`~weightspace.prune.meta.training`: :func:`meta_train`;
* :mod:`~weightspace.prune.meta.pruning`: :func:`prune_to_speedup` (also the
  magnitude baseline) and :func:`meta_prune`;
* :mod:`~weightspace.prune.meta.saving`: :func:`save_meta_pruner`,
  :func:`load_meta_pruner`, :func:`training_notes`.

Meta-training from a zoo file to a saved pruner (``weightspace
train-pruner``) is a job: :func:`weightspace.jobs.meta_pruner.train_meta_pruner`.
"""

from weightspace.prune.meta.losses import group_lasso, output_logits
from weightspace.prune.meta.pruner import MODES, MetaPruner
from weightspace.prune.meta.pruning import meta_prune, prune_to_speedup
from weightspace.prune.meta.saving import (
    CONFIG_METADATA,
    FORMAT_METADATA,
    FORMAT_VERSION,
    GMN_ARGUMENTS,
    SPEC_METADATA,
    TRAINING_METADATA,
    load_meta_pruner,
    save_meta_pruner,
    training_notes,
)
from weightspace.prune.meta.selection import trained_zoo_rows
from weightspace.prune.meta.training import meta_train

__all__ = ["CONFIG_METADATA", "FORMAT_METADATA", "FORMAT_VERSION", "GMN_ARGUMENTS", "MODES",
           "MetaPruner", "SPEC_METADATA", "TRAINING_METADATA", "group_lasso",
           "load_meta_pruner", "meta_prune", "meta_train", "output_logits", "prune_to_speedup",
           "save_meta_pruner", "trained_zoo_rows", "training_notes"]
