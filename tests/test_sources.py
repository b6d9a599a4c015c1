"""Data sources from small files written here: CSV, Parquet, .npz, image folders; bad input refused."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peer.data.sources import holdout, infer_kind, load_source
from peer.errors import UsageError

CSV = """age,colour,income,target
30,red,1000.5,yes
41,blue,2000,no
25,red,1500,yes
52,green,3000,no
"""


def _write(path, text):
    path.write_text(text)
    return path


def test_csv_numeric_and_one_hot_columns(tmp_path):
    train, test = load_source(_write(tmp_path / "t.csv", CSV), label="target")
    assert test is None
    assert train.features == ("age", "colour=blue", "colour=green", "colour=red", "income")
    assert train.classes == ("no", "yes")
    assert train.y.tolist() == [1, 0, 1, 0]
    np.testing.assert_array_equal(train.x[0], np.array([30, 0, 0, 1, 1000.5], np.float32))
    assert train.x.dtype == np.float32


def test_csv_test_set_uses_the_training_encoding(tmp_path):
    _write(tmp_path / "t.csv", CSV)
    _write(tmp_path / "test.csv", "target,income,colour,age\nno,10,purple,3\nyes,20,red,4\n")
    train, test = load_source(tmp_path / "t.csv", label="target", test_path=tmp_path / "test.csv")
    assert test.features == train.features and test.classes == train.classes
    np.testing.assert_array_equal(test.x, [[3, 0, 0, 0, 10], [4, 0, 0, 1, 20]])  # unseen colour: all zeros
    assert test.y.tolist() == [0, 1]


def test_numeric_labels_sort_as_numbers_and_semicolons_are_read(tmp_path):
    train, _ = load_source(_write(tmp_path / "t.csv", "a;b;y\n1;2;10\n3;4;9\n5;6;10\n"), label="y")
    assert train.classes == ("9", "10") and train.y.tolist() == [1, 0, 1]


def test_kind_can_be_given_when_the_suffix_does_not_tell(tmp_path):
    path = _write(tmp_path / "export.dat", CSV)
    with pytest.raises(UsageError, match="pass --data-kind"):
        load_source(path, label="target")
    train, _ = load_source(path, kind="csv", label="target")
    assert len(train) == 4 and train.classes == ("no", "yes")
    with pytest.raises(UsageError, match="unknown --data-kind 'xls'"):
        load_source(path, kind="xls", label="target")


def test_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"f": [1.0, 2.0, 3.0], "kind": ["a", "b", "a"], "label": [0, 1, 1]}), path)
    train, _ = load_source(path, label="label")
    assert infer_kind(path) == "parquet"
    assert train.features == ("f", "kind=a", "kind=b") and train.classes == ("0", "1")
    np.testing.assert_array_equal(train.x, [[1, 1, 0], [2, 0, 1], [3, 1, 0]])


def test_npz_table_and_images(tmp_path):
    np.savez(
        tmp_path / "t.npz",
        x=np.arange(12, dtype=np.float64).reshape(6, 2),
        y=np.array([0, 1] * 3),
        features=np.array(["p", "q"]),
        classes=np.array(["cat", "dog"]),
    )
    train, _ = load_source(tmp_path / "t.npz")
    assert train.features == ("p", "q") and train.classes == ("cat", "dog") and train.x.dtype == np.float32
    np.savez(tmp_path / "i.npz", x=np.full((4, 5, 5), 0.5), y=np.array(["b", "a", "b", "a"]))
    images, _ = load_source(tmp_path / "i.npz")
    assert images.features == () and images.x.dtype == np.uint8 and images.x.shape == (4, 5, 5)
    assert images.classes == ("a", "b") and images.y.tolist() == [1, 0, 1, 0] and images.x.max() == 128


def _image_folder(root, classes=("cat", "dog"), size=(6, 4), n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_with_test_folder(tmp_path):
    train_dir = _image_folder(tmp_path / "train")
    test_dir = _image_folder(tmp_path / "test", classes=("dog",), n=2)
    train, test = load_source(train_dir, test_path=test_dir)
    assert infer_kind(train_dir) == "images"
    assert train.x.shape == (6, 4, 6) and train.x.dtype == np.uint8 and train.classes == ("cat", "dog")
    assert test.classes == ("cat", "dog") and test.y.tolist() == [1, 1]  # matched by name, not by index


def test_holdout_is_seeded_and_stratified(tmp_path):
    rows = "\n".join(f"{i},{i % 3}" for i in range(60))
    data, _ = load_source(_write(tmp_path / "t.csv", "v,y\n" + rows + "\n"), label="y")
    rest, test = holdout(data, 0.2, seed=0)
    assert len(test) == 12 and np.bincount(test.y).tolist() == [4, 4, 4]
    assert not set(rest.x[:, 0]) & set(test.x[:, 0])
    assert np.array_equal(holdout(data, 0.2, seed=0)[1].x, test.x)


@pytest.mark.parametrize(
    "name, text, label, message",
    [
        ("nolabel.csv", CSV, "price", "has no label column 'price'"),
        ("one.csv", "a,y\n1,x\n2,x\n", "y", "label column 'y' has only one class"),
        ("text.csv", "a,y\n1,x\n2,z\nabc,x\n", "y", "numeric column 'a' holds non-numeric value 'abc' in row 3"),
        ("nan.csv", "a,y\n1,x\nNaN,z\n", "y", "column 'a' has a missing value"),
        ("blank.csv", "a,y\n1,x\n,z\n", "y", "column 'a' has a missing value"),
        ("empty.csv", "", "y", "is empty"),
        ("header.csv", "a,y\n", "y", "has a header but no rows"),
        ("ragged.csv", "a,y\n1,x\n2\n", "y", "row 3 has 1 fields"),
        ("nolabelflag.csv", CSV, None, "pass --label COLUMN"),
    ],
)
def test_bad_tables_name_file_and_column(tmp_path, name, text, label, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(UsageError, match="^" + str(path).replace(".", r"\.")) as info:
        load_source(path, label=label)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_npz_and_image_folders(tmp_path):
    np.savez(tmp_path / "nan.npz", x=np.array([[1.0], [np.nan]]), y=np.array([0, 1]))
    np.savez(tmp_path / "one.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    np.savez(tmp_path / "noy.npz", x=np.zeros((3, 2)))
    for name, message in (("nan.npz", "NaN"), ("one.npz", "only one class"), ("noy.npz", "no array 'y'")):
        with pytest.raises(UsageError, match=message):
            load_source(tmp_path / name)
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="noimg holds no images"):
        load_source(tmp_path / "noimg")
    mixed = _image_folder(tmp_path / "mixed")
    _image_folder(tmp_path / "mixed" / "dog" / "..", classes=("owl",), size=(5, 5), n=1)
    with pytest.raises(UsageError, match="all images must have one size"):
        load_source(mixed)
    with pytest.raises(UsageError, match="cannot tell its kind"):
        load_source(_write(tmp_path / "data.xyz", "1"))
