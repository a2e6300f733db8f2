"""Strict reading of small CSV / TSV tables into numpy columns; every error names file, column and line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mrff_secure.errors import DataFormatError


def read_table(path: Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    """Header and rows of a delimited text file, refusing missing, empty or ragged files."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataFormatError(f"{path}: file is empty (no header line)")
            header = [h.strip() for h in header]
            rows = []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataFormatError(
                        f"{path}, line {line_no}: expected {len(header)} fields, got {len(row)}"
                    )
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise DataFormatError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise DataFormatError(f"{path}: no data rows")
    return header, rows


def column_index(path: Path, header: list[str], name: str) -> int:
    if name not in header:
        raise DataFormatError(f"{path}: missing column '{name}' (columns: {', '.join(header)})")
    return header.index(name)


def int_column(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    """An integer column; integral floats such as '12.0' are accepted, anything else is refused."""
    idx = column_index(path, header, name)
    out = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        text = row[idx].strip()
        try:
            value = float(text)
        except ValueError:
            raise DataFormatError(f"{path}, line {i + 2}, column '{name}': '{text}' is not an integer") from None
        if not np.isfinite(value) or value != int(value):
            raise DataFormatError(f"{path}, line {i + 2}, column '{name}': '{text}' is not an integer")
        out[i] = int(value)
    return out


def float_column(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    idx = column_index(path, header, name)
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        text = row[idx].strip()
        try:
            out[i] = float(text)
        except ValueError:
            raise DataFormatError(f"{path}, line {i + 2}, column '{name}': '{text}' is not a number") from None
        if not np.isfinite(out[i]):
            raise DataFormatError(f"{path}, line {i + 2}, column '{name}': '{text}' is not finite")
    return out


def check_range(path: Path, name: str, values: np.ndarray, low: int, high: int | None = None) -> None:
    """Refuse values below `low` (or above `high`), naming the first offending line."""
    bad = values < low if high is None else (values < low) | (values > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise DataFormatError(f"{path}, line {i + 2}, column '{name}': value {values[i]} must be {bound}")
