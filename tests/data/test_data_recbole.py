"""RecBole atomic files written by the test itself."""

import numpy as np
import pytest

from mrff_secure.data import load_recbole
from mrff_secure.errors import DataFormatError

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\ti1\t5\t1
u1\ti2\t3\t2
u1\ti3\t4\t3
u1\ti1\t1\t4
u2\ti2\t4\t2
u2\ti3\t5\t1
u2\ti4\t2\t3
"""
ITEM = """item_id:token\tgenre:token_seq\tprice:float\tbrand:token
i1\taction comedy\t1.0\tacme
i2\tdrama\t2.0\tacme
i3\tcomedy\t3.5\tzeta
i4\taction drama comedy\t9.0\tzeta
"""
USER = """user_id:token\tage:token\tcountry:token
u1\t20s\tfr
u2\t30s\tde
"""


def write(tmp_path, inter=INTER, item=ITEM, user=USER, name="toy"):
    d = tmp_path / name
    d.mkdir()
    (d / f"{name}.inter").write_text(inter)
    if item is not None:
        (d / f"{name}.item").write_text(item)
    if user is not None:
        (d / f"{name}.user").write_text(user)
    return d


def test_split_and_rating_threshold(tmp_path):
    data = load_recbole(write(tmp_path), maxlen=4, rating_threshold=4.0)
    assert data.num_users == 2
    # u1 by timestamp: i1(5) i2(3) i3(4) i1(1) -> train i1 i2, val i3 (click), test i1 (no click)
    item_row = {tok: k + 1 for k, tok in enumerate(["i1", "i2", "i3", "i4"])}
    assert data.val_item[0] == item_row["i3"] and data.val_label[0] == 1
    assert data.test_item[0] == item_row["i1"] and data.test_label[0] == 0
    assert data.train_seq[0].tolist() == [0, 0, 0, item_row["i1"]]
    assert data.train_target[0].tolist() == [0, 0, 0, item_row["i2"]]
    assert data.train_label[0].tolist() == [0, 0, 0, 0]
    # u2 by timestamp: i3(5) i2(4) i4(2)
    assert data.test_item[1] == item_row["i4"] and data.val_label[1] == 1
    assert data.num_train_interactions == 3  # u1: i1 i2; u2: i3


def test_token_seq_and_float_attributes(tmp_path):
    data = load_recbole(write(tmp_path), maxlen=4)
    table = data.item_attributes
    assert table.field_names == ("genre", "price", "brand")
    lo, hi = table.spans[0]
    assert hi - lo == 3  # widest genre list has three tokens
    pad = table.vocab_sizes[0] - 1
    genres = table.tokens[:, lo:hi]
    assert (genres[0] == pad).all()  # padding item
    assert sorted(genres[4][genres[4] != pad].tolist()) == [0, 1, 2]  # action comedy drama
    assert (table.tokens[0] == np.repeat(np.array(table.vocab_sizes) - 1, [h - l for l, h in table.spans])).all()
    assert data.user_attributes.field_names == ("age", "country")


def test_label_column_wins(tmp_path):
    inter = "user_id:token\titem_id:token\tlabel:float\ttimestamp:float\n" + "".join(
        f"u{u}\ti{i}\t{(u + i) % 2}\t{i}\n" for u in range(3) for i in range(4)
    )
    data = load_recbole(write(tmp_path, inter=inter, item=None, user=None), maxlen=3)
    assert data.item_attributes.field_names == ("item_id",)
    assert data.user_attributes.field_names == ("user_id",)
    assert data.test_label.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "inter,match",
    [
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n", "needs a 'label' column or a 'rating' column"),
        (
            "user_id\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t1\t1\n",
            "header cell 'user_id' must be 'name:type'",
        ),
        ("user_id:token\titem_id:token\trating:float\nu1\ti1\t1\n", "missing column 'timestamp'"),
        (
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\tfive\t1\n",
            "line 2, column 'rating': 'five' is not a number",
        ),
        (
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t5\t1\nu1\ti2\t5\t2\n",
            "fewer than 3 interactions",
        ),
        ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n", "no data rows"),
        ("user_id:token\titem_id:token\tlabel:float\ttimestamp:float\nu1\ti1\t3\t1\n", "label 3.0 is not 0 or 1"),
    ],
)
def test_bad_inter_files(tmp_path, inter, match):
    with pytest.raises(DataFormatError, match=match):
        load_recbole(write(tmp_path, inter=inter, item=None, user=None))


def test_item_missing_from_item_file(tmp_path):
    item = ITEM.replace("i4\taction drama comedy\t9.0\tzeta\n", "")
    with pytest.raises(DataFormatError, match=r"toy.item, column 'item_id': no row for 'i4'"):
        load_recbole(write(tmp_path, item=item))


def test_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        load_recbole(tmp_path / "nothing")
