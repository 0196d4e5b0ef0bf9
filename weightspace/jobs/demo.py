"""The main job, end to end on built-in data (``weightspace demo``).

Builds a tiny zoo of small CNNs trained on scikit-learn's digits (the
``digits-cnn`` recipe: sampled hyperparameters, several checkpoints per run);
shows it and verifies its checksums; converts its rows to parameter graphs in
one batched gather; saves and reloads the graphs; and checks the two promises
everything else rests on: the graph round trip is exact, and a random
permutation of the hidden neurons leaves a network's predictions unchanged
while relabelling its graph. Then the other jobs on small inputs: align and
merge two MLPs, train metanetworks on digit INRs, prune an MLP.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from weightspace.classify import evaluate, train_classifier
from weightspace.data import load_digits_split
from weightspace.graph import GraphTemplate, load_graphs, save_graphs
from weightspace.io import save_state_dict
from weightspace.jobs.interpolate import interpolate_checkpoints
from weightspace.jobs.merge import merge_checkpoints
from weightspace.jobs.prune import PruneOptions, PruneReport, prune_checkpoint
from weightspace.jobs.report import report_dict
from weightspace.models import build_model
from weightspace.spec import WeightSpaceSpec, trace
from weightspace.zoo import Zoo, build_zoo, verify_zoo, zoo_info
from weightspace.zoo.build import BuildResult
from weightspace.zoo.convert import convert_zoo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PermutationCheck:
    """A random permutation of every hidden space of the best network.

    Args:
        checkpoint: its zoo key.
        recorded_accuracy: its test accuracy recorded in the zoo.
        accuracy: its test accuracy, measured again.
        accuracy_permuted: the permuted network's (must equal ``accuracy``).
        values_moved: weight values the permutation changed.
        graph_relabelled: the permuted network's graph is the original one
            with its nodes relabelled.
    """

    checkpoint: str
    recorded_accuracy: float
    accuracy: float
    accuracy_permuted: float
    values_moved: int
    graph_relabelled: bool


@dataclass(frozen=True)
class DemoReport:
    """What :func:`run_demo` did and found (``--json`` prints :meth:`to_dict`).

    Args:
        workdir: the folder of the outputs (``None`` for a temporary one,
            deleted at the end; so are the other paths then).
        zoo: the CNN zoo file.
        build: what building it did.
        info: its description (:func:`~weightspace.zoo.zoo_info`).
        verified: its checksums verified.
        group: the group converted to graphs.
        spec: that group's spec (not in :meth:`to_dict`, which has
            ``spec_hash``).
        template: its graph template (not in :meth:`to_dict`).
        batch: the batched graphs of the group (not in :meth:`to_dict`).
        convert_seconds: the conversion's wall time.
        graph_file: the saved graphs.
        round_trip_exact: graphs -> parameters gave back every zoo row.
        permutation: the symmetry check.
        merging: two MLPs aligned and merged: ``models``, ``scores``,
            ``naive_merged``, ``barriers``, ``plot``.
        metanetworks: GMN and StatNN on the digits-INR zoo: ``zoo``,
            ``rows``, ``models`` (``test``, ``parameters``,
            ``graphs_per_second``, ``seconds``, ``rows`` each).
        pruning: the first MLP pruned ``"structured"`` (2x MACs) and
            ``"unstructured"`` (80 % zeros).
    """

    workdir: str | None
    zoo: str | None
    build: BuildResult
    info: dict[str, Any]
    verified: bool
    group: str
    spec: WeightSpaceSpec
    template: GraphTemplate
    batch: Batch
    convert_seconds: float
    graph_file: str | None
    round_trip_exact: bool
    permutation: PermutationCheck
    merging: dict[str, Any]
    metanetworks: dict[str, Any]
    pruning: dict[str, PruneReport]

    @property
    def ok(self) -> bool:
        """Every promise held: exact round trip, verified checksums, the same
        predictions after a permutation (and a relabelled graph), a lower
        barrier after alignment, finite metanetwork accuracies, and pruned
        MLPs above 50 % accuracy."""
        perm, barriers = self.permutation, self.merging["barriers"]
        return (self.round_trip_exact and perm.graph_relabelled and self.verified
                and perm.accuracy == perm.accuracy_permuted
                and barriers["weight matching"]["loss_barrier"] < barriers["naive"]["loss_barrier"]
                and all(m["test"]["accuracy"] == m["test"]["accuracy"]
                        for m in self.metanetworks["models"].values())
                and all(r.after["accuracy"] > 0.5 for r in self.pruning.values()))

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in ("workdir", "zoo")}
        out["build"] = self.build.to_dict()
        out.update({f: getattr(self, f) for f in ("info", "verified", "group",
                                                  "convert_seconds", "graph_file",
                                                  "round_trip_exact")})
        out["permutation"] = report_dict(self.permutation)
        out["merging"], out["metanetworks"] = self.merging, self.metanetworks
        out["pruning"] = {name: r.to_dict() for name, r in self.pruning.items()}
        out["spec_hash"] = self.spec.hash
        return out


def run_demo(workdir: str | Path | None = None, recipe: str = "digits-cnn", size: str = "tiny",
             progress: bool = True) -> DemoReport:
    """Run the main job; returns a report (the CLI prints it).

    1. build a ``tiny`` zoo from a recipe (networks trained on digits);
    2. describe it (:func:`~weightspace.zoo.zoo_info`) and verify its checksums;
    3. convert its largest group to one batched graph, save and reload it, and
       check the round trip graph -> parameters against the zoo rows;
    4. permute the hidden neurons of the best network: same predictions, and
       its graph is the original one with nodes relabelled;
    5. train two MLPs from different seeds, align them by weight matching,
       merge them, and write the loss/accuracy barrier plot (naive against
       aligned);
    6. build the ``tiny`` digits-INR zoo (one SIREN per digits image) and
       train a GMN (with probe features) and StatNN to classify the INRs
       (``configs/digits-inr-gmn.yaml`` / ``digits-inr-statnn.yaml``);
    7. prune the first MLP: remove neurons for a 2x reduction of
       multiply-accumulates, and zero 80 % of its weights, each fine-tuned
       briefly; accuracy, size and latency before and after.

    Args:
        workdir: keep the outputs here (default: a temporary folder).
        recipe: the zoo recipe of steps 1-4.
        size: its size (``"tiny"``, ``"small"``, ``"full"``).
        progress: tqdm progress bars.
    """
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="weightspace-demo-")
        workdir = tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keep = tmp is None
    try:
        zoo_path = workdir / f"{recipe}-{size}.h5"
        build = build_zoo(recipe, zoo_path, size=size, progress=progress, overwrite=True)
        info = zoo_info(zoo_path)
        verified = verify_zoo(zoo_path)
        with Zoo(zoo_path) as zoo:
            group = max(zoo.groups.values(), key=lambda g: g.num_rows)
            t0 = time.perf_counter()
            batch, template, sources = convert_zoo(zoo_path, group=group.name, progress=progress)
            convert_seconds = time.perf_counter() - t0
            graph_path = save_graphs(workdir / "graphs.pt", batch, template, sources)
            loaded = load_graphs(graph_path)
            exact = torch.equal(template.from_batch(loaded.batch),
                                zoo.params(zoo.select(group=group.name)))
            permutation = _permutation_check(zoo, group, template)
        merging = _align_and_merge(workdir)
        return DemoReport(
            workdir=str(workdir) if keep else None, zoo=str(zoo_path) if keep else None,
            build=build, info=info, verified=verified.ok, group=group.name, spec=group.spec,
            template=template, batch=batch, convert_seconds=convert_seconds,
            graph_file=str(graph_path) if keep else None, round_trip_exact=exact,
            permutation=permutation, merging=merging,
            metanetworks=_metanetworks(workdir, progress),
            pruning=_prune(workdir, merging["models"][0]))
    finally:
        if tmp is not None:
            tmp.cleanup()


def _permutation_check(zoo: Zoo, group, template: GraphTemplate) -> PermutationCheck:
    """A random permutation changes the weights, not the function; the
    permuted network's graph is the original with nodes relabelled."""
    spec = group.spec
    final = zoo.select(group=group.name, last_checkpoint=True)
    best = int(final[np.argmax(zoo.column("test_accuracy", final))])
    model = zoo.model(best)
    state = zoo.state_dict(best)
    data = load_digits_split(flat=group.model_def.family == "mlp")
    perm = spec.random_permutation(torch.Generator().manual_seed(0))
    permuted = spec.permute(state, perm)
    g = template.to_data(spec.flatten(state))
    gp = template.to_data(spec.flatten(permuted))
    return PermutationCheck(
        checkpoint=str(zoo.column("key", [best])[0]),
        recorded_accuracy=float(zoo.column("test_accuracy", [best])[0]),
        accuracy=evaluate(model, data.x_test, data.y_test, state)[1],
        accuracy_permuted=evaluate(model, data.x_test, data.y_test, permuted)[1],
        values_moved=sum(int((state[k] != permuted[k]).sum()) for k in state),
        graph_relabelled=torch.equal(gp.x, g.x[template.node_permutation(perm)]))


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (training configurations)."""
    import weightspace

    return Path(weightspace.__file__).resolve().parents[1] / "configs"


def _metanetworks(workdir: Path, progress: bool) -> dict[str, Any]:
    """Tiny digits-INR zoo -> GMN and StatNN classifiers, their test scores."""
    from weightspace.train import load_config, train_metanetwork

    zoo_path = workdir / "digits-inr-tiny.h5"
    build = build_zoo("digits-inr", zoo_path, size="tiny", progress=progress, overwrite=True)
    out: dict[str, Any] = {"zoo": str(zoo_path), "rows": build.rows_written, "models": {}}
    for name in ("gmn", "statnn"):
        config = load_config(configs_dir() / f"digits-inr-{name}.yaml", zoo=str(zoo_path),
                             out=str(workdir / f"digits-inr-{name}"), progress=progress)
        result = train_metanetwork(config)
        out["models"][name] = {"test": result.test, "parameters": result.num_parameters,
                               "graphs_per_second": result.graphs_per_second,
                               "seconds": result.wall_seconds, "rows": result.num_rows}
    return out


def _prune(workdir: Path, checkpoint: str, finetune_epochs: int = 3) -> dict[str, PruneReport]:
    """One digits MLP pruned two ways (structured to a 2x MAC reduction, and
    80 % of its weights zeroed), both fine-tuned: the reports."""
    model = build_model("mlp", hidden=[64, 64])
    spec = trace(model, (1, 64))
    structured = PruneOptions(speedup=2.0, structured=True, finetune_epochs=finetune_epochs)
    sparse = PruneOptions(sparsity=0.8, finetune_epochs=finetune_epochs)
    return {
        "structured": prune_checkpoint(checkpoint, model, spec,
                                       workdir / "mlp-pruned-structured.safetensors", structured),
        "unstructured": prune_checkpoint(checkpoint, model, spec,
                                         workdir / "mlp-pruned-sparse.safetensors", sparse),
    }


def _align_and_merge(workdir: Path, epochs: int = 8) -> dict[str, Any]:
    """Two digits MLPs from different seeds -> aligned, merged, barrier plot."""
    data = load_digits_split(flat=True)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = train_classifier(build_model("mlp", hidden=[64, 64]), data, epochs=epochs,
                                 seed=seed)
        paths.append(save_state_dict(model.state_dict(), workdir / f"mlp-seed{seed}.safetensors"))
    spec = trace(model, (1, 64))
    merged = merge_checkpoints(paths, model, spec, workdir / "mlp-merged.safetensors",
                               data="digits")
    naive = merge_checkpoints(paths, model, spec, workdir / "mlp-merged-naive.safetensors",
                              align="none", data="digits")
    path = interpolate_checkpoints(paths[0], paths[1], model, spec, data="digits",
                                   plot=workdir / "barrier.png", json_path=workdir / "barrier.json")
    return {"models": [str(p) for p in paths], "scores": merged.scores,
            "naive_merged": naive.scores["merged"], "barriers": path.barriers, "plot": path.plot}


__all__ = ["DemoReport", "PermutationCheck", "configs_dir", "run_demo"]
