import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def fmnist_available():
    """The tests that train on Fashion-MNIST need its files (``make data`` puts them in place)."""
    from g2sd_lib.fmnist import DatasetNotFoundError, find_fashion_mnist
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
