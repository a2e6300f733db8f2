"""Strict reading of small CSV / TSV tables into numpy columns; every error names file, column and line."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
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
                    raise DataFormatError(f"{path}, line {line_no}: expected {len(header)} fields, got {len(row)}")
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


def _parsed_column(
    path: Path, header: list[str], rows: list[list[str]], name: str, parse: Callable[[str], float], dtype: type
) -> np.ndarray:
    """Column `name`, each cell through `parse`, which raises ValueError saying what the cell is not."""
    idx = column_index(path, header, name)
    out: np.ndarray = np.empty(len(rows), dtype=dtype)
    for i, row in enumerate(rows):
        text = row[idx].strip()
        try:
            out[i] = parse(text)
        except ValueError as exc:
            raise DataFormatError(f"{path}, line {i + 2}, column '{name}': '{text}' {exc}") from None
    return out


def _integer(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not an integer") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError("is not an integer")
    return int(value)


def _finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not finite")
    return value


def int_column(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    """An integer column; integral floats such as '12.0' are accepted, anything else is refused."""
    return _parsed_column(path, header, rows, name, _integer, np.int64)


def float_column(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    """A column of finite numbers."""
    return _parsed_column(path, header, rows, name, _finite_number, np.float64)


def check_range(path: Path, name: str, values: np.ndarray, low: int, high: int | None = None) -> None:
    """Refuse values below `low` (or above `high`), naming the first offending line."""
    bad = values < low if high is None else (values < low) | (values > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise DataFormatError(f"{path}, line {i + 2}, column '{name}': value {values[i]} must be {bound}")
