"""Shared fixtures: deterministic seeds for every test, and a factory for tiny PhysioNet-layout sets.

Test modules that need synthetic data outside a fixture can import the plain functions directly:
``from helpers import write_physionet_set, raw_data``.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from helpers import write_physionet_set

try:  # torch is a dependency, but keep the seeding fixture usable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

SEED = 0


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed ``random``, numpy's global generator and torch before every test."""
    random.seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002 - seeds the legacy global generator some code still uses
    if torch is not None:
        torch.manual_seed(SEED)
    yield


@pytest.fixture
def physionet_set(tmp_path):
    """Factory writing a PhysioNet 2012 set into its own fresh folder under ``tmp_path``.

    ``physionet_set(stays, **kwargs)`` takes the arguments of :func:`helpers.write_physionet_set` (minus
    ``root``) and returns the set folder, or with ``archive=True`` the ``set-<name>.tar.gz``;
    ``Outcomes-<name>.txt`` lies beside it. Each call writes into a new directory, so a test can build
    several sets (e.g. the same stays as a folder and as an archive).
    """
    counter = itertools.count()

    def make(stays, **kwargs):
        root = tmp_path / f"physionet-{next(counter)}"
        return write_physionet_set(root, stays, **kwargs)

    return make
