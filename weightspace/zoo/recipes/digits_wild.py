"""``digits-wild``: a CNN Wild Park on digits (Kofinas et al. 2024).

Every run samples an architecture of :class:`~weightspace.models.WildCNN`
(depth, width - one for all layers or one per layer -, kernel size, stride
of the first convolution, residual connections, activation) and training
hyperparameters (see :mod:`weightspace.zoo.recipes.classifier`), and stores
checkpoints at the ``training.checkpoint_epochs``.

The YAML's ``architecture`` section holds the architecture sampling specs:
``n_layers, channels, per_layer_channels`` (bool: draw ``channels`` anew for
every layer), ``kernel_size, first_stride, residual``. One group per distinct
architecture, named
``wild-<activation>-L<n_layers>-c<channels>-k<kernel>-s<first_stride>-<res|plain>``
(channels per layer joined by ``.``; ``-in{C}x{H}x{W}-out{K}`` appended for
data not shaped like digits). Rows also record ``n_layers, channels,
kernel_size, first_stride, residual`` and ``n_skips`` (identity skips the
architecture actually has: a layer with a different width than its input or
a stride > 1 has none). ``residual`` (group name, ModelDef, column) is the
effective flag: ``True`` only if the network has at least one skip, so that
one architecture never gets two names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from weightspace.models.wild import residual_skips
from weightspace.zoo.errors import ZooError
from weightspace.zoo.recipes.base import ImageData, group_name, join_ints, sample_value
from weightspace.zoo.recipes.classifier import ClassifierRecipe
from weightspace.zoo.rows import ModelDef

ARCHITECTURE_KEYS = ("n_layers", "channels", "per_layer_channels", "kernel_size",
                     "first_stride", "residual")


class DigitsWild(ClassifierRecipe):
    name = "digits-wild"
    description = "CNN Wild Park on digits: mixed depth, width, kernel, residual, activation."
    family = "wildcnn"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.architecture = dict(self.section("architecture"))
        missing = [k for k in ARCHITECTURE_KEYS if k not in self.architecture]
        if missing:
            raise ZooError(f"recipe {self.name!r}: architecture lacks {', '.join(missing)}")

    def sample_architecture(self, rng: np.random.Generator) -> dict[str, Any]:
        spec = self.architecture
        n_layers = int(sample_value("n_layers", spec["n_layers"], rng))
        per_layer = bool(sample_value("per_layer_channels", spec["per_layer_channels"], rng))
        if per_layer:
            widths = [int(sample_value("channels", spec["channels"], rng))
                      for _ in range(n_layers)]
            # one width drawn for every layer is the same architecture as one width
            channels: list[int] | int = widths if len(set(widths)) > 1 else widths[0]
        else:
            channels = int(sample_value("channels", spec["channels"], rng))
        return {
            "n_layers": n_layers,
            "channels": channels,
            "kernel_size": int(sample_value("kernel_size", spec["kernel_size"], rng)),
            "first_stride": int(sample_value("first_stride", spec["first_stride"], rng)),
            "residual": bool(sample_value("residual", spec["residual"], rng)),
        }

    def model_def(self, job_config: Mapping[str, Any], data: ImageData) -> ModelDef:
        """The WildCNN definition. ``residual`` is the *effective* flag: a
        sampled ``residual=True`` whose architecture allows no skip (every
        layer changes width) builds the plain network, so it is stored (and
        grouped) as ``residual=False``."""
        c, h, w = data.image_shape
        n = int(job_config["n_layers"])
        stride = int(job_config["first_stride"])
        args = {
            "in_channels": c,
            "num_classes": data.num_classes,
            "n_layers": n,
            "channels": job_config["channels"],
            "kernel_size": int(job_config["kernel_size"]),
            "stride": stride if stride == 1 or n == 1 else [stride] + [1] * (n - 1),
            "residual": bool(job_config["residual"]),
            "activation": str(job_config["activation"]),
        }
        args["residual"] = any(self._skips(args))
        return ModelDef(self.family, args, (1, c, h, w))

    @staticmethod
    def _skips(args: Mapping[str, Any]) -> tuple[bool, ...]:
        return residual_skips(args["in_channels"], args["n_layers"], args["channels"],
                              args["kernel_size"], args["stride"], None, args["residual"])

    def group(self, job_config: Mapping[str, Any], data: ImageData) -> str:
        args = self.model_def(job_config, data).args
        return group_name(
            "wild", args["activation"], f"L{args['n_layers']}",
            f"c{join_ints(args['channels'])}", f"k{args['kernel_size']}",
            f"s{job_config['first_stride']}", "res" if args["residual"] else "plain",
        ) + data.group_suffix()

    def architecture_metadata(self, job_config: Mapping[str, Any],
                              model_def: ModelDef) -> dict[str, Any]:
        args = model_def.args
        return {
            "n_layers": int(args["n_layers"]),
            "channels": join_ints(args["channels"]),
            "kernel_size": int(args["kernel_size"]),
            "first_stride": int(job_config["first_stride"]),
            "residual": bool(args["residual"]),
            "n_skips": sum(self._skips(args)),
        }
