"""Shared test fixtures: paths of the TF1 reference files copied into tests/data/reference,
and a file size limit that makes writes fail as on a full disk."""

import os
import resource
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"
TRAJECTORY_FIXTURES = ("mt_mse.npz", "mt_mse__post.npz", "mt_two_logits.npz", "pi_model.npz")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE_DIR


def load_reference(name: str) -> dict:
    with np.load(REFERENCE_DIR / name) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture
def file_size_limit():
    """Sets RLIMIT_FSIZE (a file may not grow past it: EFBIG, as on a full disk) for a block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    class Limit:
        def __enter__(self):
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, hard))

        def __exit__(self, *exc_info):
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

        def __call__(self, size):
            self.size = size
            return self

    yield Limit()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
