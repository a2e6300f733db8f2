"""KuaiSAR-R in the MRFF paper's preprocessed format, split exactly as the paper's code does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.data.csv_table import check_range, column_index, int_column, read_table
from mrff_secure.data.split import leave_one_out
from mrff_secure.errors import DataFormatError

NAME = "KuaiSAR-R"


def _feature_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataFormatError(f"{path}: lists no feature names")
    return names


def _feature_rows(path: Path, id_column: str) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, rows and ids of a feature file whose `id_column` numbers its rows 0..n-1, each once."""
    header, rows = read_table(path)
    ids = int_column(path, header, rows, id_column)
    check_range(path, id_column, ids, 0)
    if len(np.unique(ids)) != len(ids) or int(ids.max()) != len(ids) - 1:
        raise DataFormatError(f"{path}, column '{id_column}': ids must be unique and cover 0..{int(ids.max())}")
    return header, rows, ids


def _attribute_table(
    path: Path,
    header: list[str],
    rows: list[list[str]],
    row_ids: np.ndarray,
    names: list[str],
    num_rows: int,
    pad_row_zero: bool,
) -> AttributeTable:
    """One token column per feature; row `row_ids[i]` holds file line i. Padding index = max + 1."""
    tokens = np.zeros((num_rows, len(names)), dtype=np.int64)
    vocab = []
    for j, name in enumerate(names):
        values = int_column(path, header, rows, name)
        check_range(path, name, values, 0)
        tokens[row_ids, j] = values
        vocab.append(int(values.max()) + 2)  # + padding index max+1
    if pad_row_zero:
        tokens[0] = np.array(vocab) - 1  # the padding row holds every field's padding index
    return AttributeTable(tuple(names), tuple(vocab), tuple((j, j + 1) for j in range(len(names))), tokens)


def load_kuaisar_r(data_dir: str | Path, maxlen: int = 65) -> ClientData:
    """Load `df.csv`, the feature tables and the two feature-name files from `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataFormatError(f"{data_dir}: KuaiSAR-R directory not found")
    user_names = _feature_names(data_dir / "KuaiSAR-R_user_feature_dict.txt")
    item_names = _feature_names(data_dir / "KuaiSAR-R_video_feature_dict.txt")

    item_path = data_dir / "video_features.csv"
    header, rows, video_ids = _feature_rows(item_path, "video_id")
    pad_replacement = len(video_ids)  # item 0 is padding; the real item 0 moves here
    video_ids[video_ids == 0] = pad_replacement
    items = _attribute_table(item_path, header, rows, video_ids, item_names, pad_replacement + 1, pad_row_zero=True)

    user_path = data_dir / "user_features.csv"
    header, rows, user_ids = _feature_rows(user_path, "user_id")
    num_users = len(user_ids)
    users = _attribute_table(user_path, header, rows, user_ids, user_names, num_users, pad_row_zero=False)

    inter_path = data_dir / "df.csv"
    header, rows = read_table(inter_path)
    inter_users = int_column(inter_path, header, rows, "user_id")
    check_range(inter_path, "user_id", inter_users, 0, num_users - 1)
    inter_items = int_column(inter_path, header, rows, "video_id")
    check_range(inter_path, "video_id", inter_items, 0, pad_replacement - 1)
    inter_items[inter_items == 0] = pad_replacement
    clicks = int_column(inter_path, header, rows, "is_click")
    check_range(inter_path, "is_click", clicks, 0, 1)
    ts_idx = column_index(inter_path, header, "timestamp")
    try:
        timestamps = np.array([float(r[ts_idx]) for r in rows])
    except ValueError:
        raise DataFormatError(f"{inter_path}, column 'timestamp': non-numeric value") from None
    missing = np.setdiff1d(np.arange(num_users), inter_users)
    if len(missing):
        raise DataFormatError(f"{inter_path}: user {missing[0]} (and {len(missing) - 1} more) has no interactions")

    seqs = leave_one_out(np.arange(num_users), inter_users, inter_items, clicks, timestamps, maxlen, str(inter_path))
    return ClientData(
        name=NAME, user_attributes=users, item_attributes=items, user_ids=np.arange(num_users, dtype=np.int64), **seqs
    )
