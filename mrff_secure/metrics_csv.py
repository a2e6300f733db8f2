"""A run's per-round metrics as CSV, for plotting with standard tools (pandas.read_csv, a spreadsheet, gnuplot).

metrics.csv holds the rows of the metrics.jsonl beside it, flattened: one line per round, one column per
scalar value, named as in the JSON line; a nested object's values get dotted names (`phases.update.survivors`)
and lists (the per-group counts) are left out. An empty cell is a value the round does not have (a round
without evaluation); epsilon "inf" is no guarantee; booleans are True / False.

The file is rewritten whole and atomically from the rows the run holds, so an interrupted run leaves a
valid file and a resumed run (which keeps only its checkpointed rounds' rows) repeats no row.

Columns, in this order, then any others in alphabetical order (only those some row has):

  round                  the round, from 0
  completed              network: the round completed (False: aborted, with `reason`)
  participants           train: the clients sampled; network: the clients that started the round
  dropped                network: distinct clients that dropped out in any phase
  seconds                network: wall time of the round
  train_seconds          train: wall time of the round's local training and aggregation
  eval_seconds           train: wall time of the round's evaluation (operator only)
  epsilon                the epsilon spent so far ("inf": no guarantee)
  delta                  network: its delta (train: summary.json privacy.delta)
  adjacency              network: the adjacency of the epsilon
  private                train: the run carries a DP guarantee
  evaluations_accounted  network: federated evaluations counted in the epsilon
  val_auc, val_logloss   validation AUC and LogLoss (train: operator only; network: federated, noisy under DP)
  test_auc, test_logloss the same on test
  clipped_fraction       train: the fraction of clipped uploads (operator only)
  evaluation_clients     network: the clients whose held-out items the evaluation summed
  evaluated_after_round  network: the evaluation scored the model after this round
  evaluation_noise_std   network: the noise on the evaluation's sums
  evaluation_in_epsilon  network: the evaluation is counted in the epsilon
  bytes_per_participant  network: bytes on the wire per participant
  phases.P.survivors     network: survivors of phase P (counts, update, ...)
  phases.P.dropouts      network: clients that dropped out in phase P
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mrff_secure.atomic import write_bytes_atomic

COLUMN_ORDER = (
    "round",
    "completed",
    "participants",
    "dropped",
    "seconds",
    "train_seconds",
    "eval_seconds",
    "epsilon",
    "delta",
    "adjacency",
    "private",
    "evaluations_accounted",
    "val_auc",
    "val_logloss",
    "test_auc",
    "test_logloss",
    "clipped_fraction",
    "evaluation_clients",
    "evaluated_after_round",
    "evaluation_noise_std",
    "evaluation_in_epsilon",
    "bytes_per_participant",
)


def flatten_row(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalar values of `row`, nested objects' under dotted names; lists and tuples left out."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_row(value, prefix=f"{name}."))
        elif not isinstance(value, (list, tuple)):
            flat[name] = value
    return flat


def csv_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The columns of flattened `rows`: COLUMN_ORDER's first (those present), then the others sorted."""
    present: set[str] = set()
    for row in rows:
        present.update(row)
    known = [c for c in COLUMN_ORDER if c in present]
    return known + sorted(present - set(COLUMN_ORDER))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # every digit, and inf / nan as pandas reads them
    return str(value)


def metrics_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The CSV text of metrics rows (see the module docstring)."""
    flat = [flatten_row(r) for r in rows]
    columns = csv_columns(flat)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in flat:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def write_metrics_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write `rows` to `path` as metrics CSV, atomically (the whole file each time)."""
    write_bytes_atomic(Path(path), metrics_csv(rows).encode())
