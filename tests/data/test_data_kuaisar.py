"""KuaiSAR-R: the paper's preprocessed files, split exactly as the dataset README states."""

import csv
import shutil

import numpy as np
import pytest

from mrff_secure.data import load_kuaisar_r
from mrff_secure.errors import DataFormatError


@pytest.fixture(scope="module")
def kuaisar(kuaisar_dir):
    return load_kuaisar_r(kuaisar_dir)


def test_split_counts(kuaisar):
    assert kuaisar.num_users == 1791
    assert kuaisar.num_train_interactions == 114_008
    first_items = kuaisar.train_seq[0][kuaisar.train_seq[0] != 0]
    assert first_items[0] == 69704  # video 0 moved to max id + 1 (id 0 is padding)
    assert kuaisar.test_label.sum() == 937
    assert kuaisar.maxlen == 65


def test_split_rule_against_raw_file(kuaisar, kuaisar_dir):
    """Re-derive three users' split by hand from df.csv with a stable (user, timestamp) sort."""
    rows = list(csv.DictReader(open(kuaisar_dir / "df.csv")))
    for user in (0, 7, 1790):
        mine = [
            (float(r["timestamp"]), i, int(r["video_id"]) or 69704, int(r["is_click"]))
            for i, r in enumerate(rows)
            if int(r["user_id"]) == user
        ]
        mine.sort(key=lambda x: (x[0], x[1]))
        items = [m[2] for m in mine]
        labels = [m[3] for m in mine]
        assert kuaisar.test_item[user] == items[-1] and kuaisar.test_label[user] == labels[-1]
        assert kuaisar.val_item[user] == items[-2] and kuaisar.val_label[user] == labels[-2]
        train = items[:-2]
        seq = kuaisar.train_seq[user][kuaisar.train_seq[user] != 0].tolist()
        assert seq == train[:-1][-65:]
        assert kuaisar.train_target[user][kuaisar.train_target[user] != 0].tolist() == train[1:][-65:]
        assert kuaisar.test_seq[user][-1] == items[-2]


def test_padding_row_holds_padding_indices(kuaisar):
    table = kuaisar.item_attributes
    assert (table.tokens[0] == np.array(table.vocab_sizes) - 1).all()
    assert (table.tokens[1:] < np.array(table.vocab_sizes) - 1).all()


def _copy(kuaisar_dir, tmp_path):
    for f in kuaisar_dir.iterdir():
        if f.suffix in (".csv", ".txt"):
            shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_missing_column_is_named(kuaisar_dir, tmp_path):
    d = _copy(kuaisar_dir, tmp_path)
    lines = (d / "df.csv").read_text().splitlines()
    (d / "df.csv").write_text("\n".join([lines[0].replace("is_click", "clicked")] + lines[1:]) + "\n")
    with pytest.raises(DataFormatError, match=r"df.csv: missing column 'is_click'"):
        load_kuaisar_r(d)


def test_bad_value_names_file_line_and_column(kuaisar_dir, tmp_path):
    d = _copy(kuaisar_dir, tmp_path)
    lines = (d / "df.csv").read_text().splitlines()
    lines[5] = "0,4,notatime,1" if False else lines[5].rsplit(",", 1)[0] + ",yes"
    (d / "df.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"df.csv, line 6, column 'is_click'"):
        load_kuaisar_r(d)


def test_item_out_of_range(kuaisar_dir, tmp_path):
    d = _copy(kuaisar_dir, tmp_path)
    with open(d / "df.csv", "a") as f:
        f.write("3,999999,1685336204570.0,1\n")
    with pytest.raises(DataFormatError, match=r"column 'video_id'.*999999"):
        load_kuaisar_r(d)
