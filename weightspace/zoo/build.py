"""The build driver behind ``weightspace zoo build``: a recipe's jobs, sharded,
run by worker processes, written by one :class:`ZooWriter`.

Resuming: a job counts as done when the zoo holds a row whose key starts with
``"<job key>/"``; a killed build re-run with the same arguments skips those
jobs and the writer replays what its journal holds, so no finished run is
trained twice and no row is written twice.

Sharding: ``shard=(i, n)`` takes the jobs whose index is ``i`` modulo ``n``;
every shard writes its own file and ``weightspace zoo merge`` joins them. Any
scheduler can start the shards (Slurm array, torchrun ranks, Ray).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from weightspace.zoo.errors import ZooError
from weightspace.zoo.recipes.base import Job, Recipe, load_recipe
from weightspace.zoo.rows import ZooRow
from weightspace.zoo.writer import ZooWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    """What a build did (``--json`` prints it)."""

    path: str
    recipe: str
    size: str
    shard: tuple[int, int]
    jobs_total: int
    jobs_skipped: int
    jobs_run: int
    rows_written: int
    rows_in_zoo: int
    seconds: float
    workers: int

    @property
    def networks_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        out["networks_per_second"] = round(self.networks_per_second, 3)
        return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ZooError(f"shard must look like i/n (for example 0/4), got {text!r}",
                       parameter="shard") from None
    if count < 1 or not 0 <= index < count:
        raise ZooError(f"shard {text!r}: need 0 <= i < n", parameter="shard")
    return index, count


# Worker state: each worker process loads the recipe and data once.
_WORKER: dict[str, Any] = {}


def _worker_init(recipe_source: str, data: str | None, threads: int) -> None:
    torch.set_num_threads(threads)
    recipe = load_recipe(recipe_source)
    _WORKER["recipe"] = recipe
    _WORKER["data"] = recipe.load_data(data)


def _worker_run(job: Job) -> tuple[Job, list[ZooRow]]:
    return job, _WORKER["recipe"].run(job, _WORKER["data"])


def _check_rows(job: Job, rows: list[ZooRow]) -> list[ZooRow]:
    for row in rows:
        if not row.key.startswith(f"{job.key}/"):
            raise ZooError(f"recipe {job.recipe!r}, job {job.key!r}: row key {row.key!r} must "
                           f"start with {job.key + '/'!r} (that is how a resumed build knows "
                           f"the job is done)")
    return rows


def build_zoo(
    recipe: str | os.PathLike[str] | Recipe,
    output: str | os.PathLike[str],
    size: str = "tiny",
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    data: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    threads_per_worker: int = 1,
) -> BuildResult:
    """Build (or resume) a zoo from a recipe.

    Args:
        recipe: a recipe name (``"digits-cnn"``), a YAML path, or a loaded
            :class:`Recipe`.
        output: the zoo file to write; an existing zoo of the same recipe,
            size, data and shard is resumed.
        size: ``tiny``, ``small`` or ``full`` (see the recipe's YAML).
        workers: processes training jobs in parallel (``1``: in this process).
        shard: ``(i, n)``: only the jobs with ``index % n == i``.
        data: an ``.npz`` with ``x_train, y_train, x_test, y_test`` to train
            on instead of scikit-learn's digits.
        overwrite: start over even if ``output`` holds rows.
        progress: show a tqdm bar over jobs.
        threads_per_worker: torch threads of each worker process.

    Raises:
        ZooError: ``output`` was built from another recipe, size, data or
            shard (resuming it would mix zoos); a bad recipe or argument.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if workers < 1:
        raise ZooError(f"workers must be at least 1, got {workers}", parameter="workers")
    index, count = shard
    output = Path(output)
    data_name = str(Path(data).resolve()) if data is not None else "digits"
    identity = {"recipe": recipe.name, "size": size, "data": data_name,
                "shard": f"{index}/{count}"}
    attrs = {**identity, "recipe_config": json.dumps(recipe.config, sort_keys=True,
                                                     default=str)}
    started = time.monotonic()
    jobs = [job for job in recipe.jobs(size) if job.index % count == index]
    if output.exists() and not overwrite:
        _check_resume(output, identity)
    with ZooWriter(output, overwrite=overwrite, attrs=attrs, nonfinite="flag") as writer:
        done = {key.split("/", 1)[0] for key in writer.keys}
        todo = [job for job in jobs if job.key not in done]
        if len(todo) < len(jobs):
            logger.info("%s: resuming; %d of %d jobs already done", output,
                        len(jobs) - len(todo), len(jobs))
        rows_before = writer.num_rows
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="job",
                   desc=f"{recipe.name} ({size})", disable=not progress)
        try:
            for job, rows in _run_jobs(recipe, todo, data, workers, threads_per_worker):
                writer.extend(_check_rows(job, rows))
                bar.update(1)
        finally:
            bar.close()
        rows_written = writer.num_rows - rows_before
        rows_in_zoo = writer.num_rows
    return BuildResult(str(output), recipe.name, size, (index, count), len(jobs),
                       len(jobs) - len(todo), len(todo), rows_written, rows_in_zoo,
                       time.monotonic() - started, workers)


def _check_resume(output: Path, identity: dict[str, str]) -> None:
    from weightspace.zoo.reader import Zoo

    with Zoo(output) as zoo:
        if not len(zoo):
            return
        for name, value in identity.items():
            have = zoo.attrs.get(name)
            if have is not None and have != value:
                raise ZooError(f"{output} holds a zoo with {name}={have!r}, this build has "
                               f"{name}={value!r}; pick another output file, or pass "
                               f"--overwrite to start over")


def _run_jobs(recipe: Recipe, jobs: list[Job], data: Any, workers: int,
              threads: int) -> Iterator[tuple[Job, list[ZooRow]]]:
    if not jobs:
        return
    if workers == 1:
        loaded = recipe.load_data(data)
        # The same thread count as a worker process, so that a build gives
        # the same bits with any number of workers; the caller's is restored.
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in jobs:
                yield job, recipe.run(job, loaded)
        finally:
            torch.set_num_threads(previous)
        return
    if recipe.source is None:
        raise ZooError(f"recipe {recipe.name!r} was not loaded from a YAML file, so worker "
                       f"processes cannot load it; use workers=1 or load_recipe(path)")
    # spawn, not fork: a forked child of a process that already ran torch's
    # thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    init = (str(recipe.source), None if data is None else str(data), threads)
    with context.Pool(workers, initializer=_worker_init, initargs=init) as pool:
        yield from pool.imap_unordered(_worker_run, jobs)
