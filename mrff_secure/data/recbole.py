"""RecBole atomic files: NAME.inter plus optional NAME.item / NAME.user.

Header cells are `field:type` with type token, token_seq or float; cells are
tab-separated and token_seq cells hold space-separated tokens. Item and user
attributes become attribute embeddings (a token_seq field embeds as the mean
of its tokens; a float attribute is cut into quantile buckets and embedded as
a token). Without NAME.item the item id is the only item attribute; without
NAME.user the user id is the only user attribute (it stays on the device:
user attributes are private). The click label is a label column (0/1) or
`rating >= threshold`; the split is the same leave-one-out by timestamp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.data.csv_table import float_column, read_table
from mrff_secure.data.split import leave_one_out
from mrff_secure.errors import DataFormatError

FIELD_TYPES = ("token", "token_seq", "float")
FLOAT_BUCKETS = 8


def _typed_header(path: Path, header: list[str]) -> tuple[list[str], list[str]]:
    names, types = [], []
    for cell in header:
        name, sep, ftype = cell.partition(":")
        if not sep or ftype not in FIELD_TYPES or not name:
            raise DataFormatError(
                f"{path}: header cell '{cell}' must be 'name:type' with type one of {', '.join(FIELD_TYPES)}"
            )
        names.append(name)
        types.append(ftype)
    if len(set(names)) != len(names):
        raise DataFormatError(f"{path}: duplicate field names in header")
    return names, types


def _require(path: Path, names: list[str], types: list[str], field: str, allowed: tuple[str, ...]) -> int:
    if field not in names:
        raise DataFormatError(f"{path}: missing column '{field}' (columns: {', '.join(names)})")
    idx = names.index(field)
    if types[idx] not in allowed:
        raise DataFormatError(f"{path}, column '{field}': type {types[idx]} is not one of {', '.join(allowed)}")
    return idx


def _attributes(
    path: Path,
    names: list[str],
    types: list[str],
    rows: list[list[str]],
    key: str,
    order: dict[str, int],
    num_rows: int,
    pad_row_zero: bool,
) -> AttributeTable:
    """Attribute table with one row per entity in `order` (entity token -> row index)."""
    key_idx = names.index(key)
    row_of = np.full(len(rows), -1, np.int64)
    for i, row in enumerate(rows):
        row_of[i] = order.get(row[key_idx].strip(), -1)
    keep = row_of >= 0
    present = np.zeros(num_rows, bool)
    present[row_of[keep]] = True
    if pad_row_zero:
        present[0] = True
    if not present.all():
        missing = int(np.flatnonzero(~present)[0])
        token = next(t for t, r in order.items() if r == missing)
        raise DataFormatError(f"{path}, column '{key}': no row for '{token}', which appears in the interactions")
    field_names, vocab, spans, blocks = [], [], [], []
    col = 0
    for j, (name, ftype) in enumerate(zip(names, types)):
        if name == key:
            continue
        cells = [rows[i][j].strip() for i in range(len(rows))]
        if ftype == "float":
            values = float_column(path, names, rows, name)
            edges = np.unique(np.quantile(values, np.linspace(0, 1, FLOAT_BUCKETS + 1)[1:-1]))
            token_lists = [[int(b)] for b in np.searchsorted(edges, values, side="right")]
            size = len(edges) + 1
        else:
            split = [c.split() if ftype == "token_seq" else ([c] if c else []) for c in cells]
            vocab_map = {t: k for k, t in enumerate(sorted({t for s in split for t in s}))}
            token_lists = [[vocab_map[t] for t in s] for s in split]
            size = len(vocab_map)
        width = max(1, max((len(s) for s in token_lists), default=1))
        pad = size  # padding index = vocab size - 1 after adding it
        block = np.full((num_rows, width), pad, np.int64)
        for i, s in enumerate(token_lists):
            if keep[i] and s:
                block[row_of[i], : len(s)] = s
        field_names.append(name)
        vocab.append(size + 1)
        spans.append((col, col + width))
        blocks.append(block)
        col += width
    if not field_names:
        raise DataFormatError(f"{path}: has no attribute columns besides '{key}'")
    return AttributeTable(tuple(field_names), tuple(vocab), tuple(spans), np.concatenate(blocks, axis=1))


def _id_table(field: str, num_rows: int, pad_row_zero: bool) -> AttributeTable:
    """The entity id itself as the only attribute."""
    tokens = np.arange(num_rows, dtype=np.int64)[:, None]
    vocab = num_rows + 1
    if pad_row_zero:
        tokens[0, 0] = vocab - 1
    return AttributeTable((field,), (vocab,), ((0, 1),), tokens)


def load_recbole(
    data_dir: str | Path,
    name: str | None = None,
    maxlen: int = 50,
    label_field: str | None = "label",
    rating_field: str = "rating",
    rating_threshold: float = 4.0,
) -> ClientData:
    """Load atomic files `data_dir/NAME.{inter,item,user}` (NAME defaults to the folder name).

    The label is `label_field` (0/1) when that column exists, else
    `rating_field >= rating_threshold`.
    """
    data_dir = Path(data_dir)
    name = name or data_dir.name
    inter_path = data_dir / f"{name}.inter"
    header, rows = read_table(inter_path, delimiter="\t")
    names, types = _typed_header(inter_path, header)
    u_idx = _require(inter_path, names, types, "user_id", ("token",))
    i_idx = _require(inter_path, names, types, "item_id", ("token",))
    _require(inter_path, names, types, "timestamp", ("float",))
    timestamps = float_column(inter_path, names, rows, "timestamp")
    if label_field and label_field in names:
        labels = float_column(inter_path, names, rows, label_field)
        if not np.isin(labels, (0.0, 1.0)).all():
            bad = int(np.flatnonzero(~np.isin(labels, (0.0, 1.0)))[0])
            raise DataFormatError(
                f"{inter_path}, line {bad + 2}, column '{label_field}': label {labels[bad]} is not 0 or 1"
            )
    elif rating_field in names:
        labels = (float_column(inter_path, names, rows, rating_field) >= rating_threshold).astype(np.float64)
    else:
        raise DataFormatError(
            f"{inter_path}: needs a '{label_field}' column or a '{rating_field}' column for the click label"
        )

    user_tokens = [r[u_idx].strip() for r in rows]
    item_tokens = [r[i_idx].strip() for r in rows]
    for field, toks in (("user_id", user_tokens), ("item_id", item_tokens)):
        if any(not t for t in toks):
            line = next(k for k, t in enumerate(toks) if not t) + 2
            raise DataFormatError(f"{inter_path}, line {line}, column '{field}': empty id")
    user_order = {t: k for k, t in enumerate(sorted(set(user_tokens)))}
    item_order = {t: k + 1 for k, t in enumerate(sorted(set(item_tokens)))}  # 0 = padding
    users = np.array([user_order[t] for t in user_tokens], np.int64)
    items = np.array([item_order[t] for t in item_tokens], np.int64)

    item_path = data_dir / f"{name}.item"
    if item_path.exists():
        header, item_rows = read_table(item_path, delimiter="\t")
        inames, itypes = _typed_header(item_path, header)
        _require(item_path, inames, itypes, "item_id", ("token",))
        item_attrs = _attributes(item_path, inames, itypes, item_rows, "item_id", item_order, len(item_order) + 1, True)
        item_attrs.tokens[0] = np.concatenate(
            [np.full(hi - lo, v - 1) for v, (lo, hi) in zip(item_attrs.vocab_sizes, item_attrs.spans)]
        )
    else:
        item_attrs = _id_table("item_id", len(item_order) + 1, True)
    user_path = data_dir / f"{name}.user"
    if user_path.exists():
        header, user_rows = read_table(user_path, delimiter="\t")
        unames, utypes = _typed_header(user_path, header)
        _require(user_path, unames, utypes, "user_id", ("token",))
        user_attrs = _attributes(user_path, unames, utypes, user_rows, "user_id", user_order, len(user_order), False)
    else:
        user_attrs = _id_table("user_id", len(user_order), False)

    seqs = leave_one_out(np.array(sorted(user_order)), users, items, labels, timestamps, maxlen, str(inter_path))
    return ClientData(
        name=name,
        user_attributes=user_attrs,
        item_attributes=item_attrs,
        user_ids=np.arange(len(user_order), dtype=np.int64),
        **seqs,
    )
