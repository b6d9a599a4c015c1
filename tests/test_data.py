"""IDX reading and validation, and the real Fashion-MNIST."""

import gzip

import numpy as np
import pytest

from peer.data.fashion import FASHION_CLASSES, find_data_dir, load_fashion_mnist, read_idx
from peer.errors import UsageError
from tests.conftest import write_idx


def test_read_idx_roundtrip_gzipped_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", arr)), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", arr, gz=False)), arr)


def test_truncated_idx_is_refused_naming_the_file(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UsageError, match="x-idx3-ubyte is corrupt"):
        read_idx(path)


def test_bad_magic_and_broken_gzip_are_refused(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 20)
    with pytest.raises(UsageError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(UsageError, match="cannot read IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_data_dir_errors_say_what_is_missing(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        find_data_dir(tmp_path / "nope")
    with pytest.raises(UsageError, match="lacks Fashion-MNIST file"):
        find_data_dir(tmp_path)


def test_small_data_dir_loads(tiny_idx_dir):
    train, test = load_fashion_mnist(tiny_idx_dir)
    assert train.x.shape == (50, 28, 28) and test.x.shape == (20, 28, 28)
    assert train.y.dtype == np.int64 and set(train.y) == set(range(10))


def test_real_fashion_mnist(fmnist):
    train, test = fmnist
    assert train.x.shape == (60000, 28, 28) and train.x.dtype == np.uint8
    assert test.x.shape == (10000, 28, 28)
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert train.classes == FASHION_CLASSES
