#!/usr/bin/env python
"""Train a metanetwork on a zoo: the same as ``weightspace train`` (see
``python tools/train_metanet.py --help``), as a script ``torchrun`` can start.

Examples::

    python tools/train_metanet.py --config configs/digits-inr-gmn.yaml
    python tools/train_metanet.py --zoo digits-inr.h5 --model statnn epochs=30
    torchrun --nproc_per_node 2 tools/train_metanet.py --config configs/digits-inr-gmn.yaml
"""

import sys

from weightspace.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
