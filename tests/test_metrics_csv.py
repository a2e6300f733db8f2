"""metrics.csv: flat columns in a stable order, lists left out, the JSON rows' values read back unchanged."""

import csv
import io
import math

from mrff_secure.metrics_csv import COLUMN_ORDER, csv_columns, flatten_row, metrics_csv, write_metrics_csv


def read(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_nested_values_get_dotted_names_and_lists_are_left_out():
    row = {
        "round": 3,
        "phases": {"update": {"survivors": 9, "dropouts": 1}, "counts": {"survivors": 10}},
        "group_counts_seen_by_server": [[1, 2], [3, 4]],
        "epsilon": "inf",
    }
    assert flatten_row(row) == {
        "round": 3,
        "phases.update.survivors": 9,
        "phases.update.dropouts": 1,
        "phases.counts.survivors": 10,
        "epsilon": "inf",
    }


def test_known_columns_come_first_in_their_order_then_the_rest_sorted():
    rows = [{"zeta": 1, "epsilon": 2.0, "round": 0}, {"round": 1, "val_auc": 0.6, "alpha": "x", "participants": 5}]
    assert csv_columns(rows) == ["round", "participants", "epsilon", "val_auc", "alpha", "zeta"]
    # the order depends on the columns present, never on the rows' key order
    assert csv_columns([dict(reversed(list(r.items()))) for r in reversed(rows)]) == csv_columns(rows)
    assert len(set(COLUMN_ORDER)) == len(COLUMN_ORDER)


def test_values_read_back_exactly_and_missing_ones_are_empty():
    rows = [
        {"round": 0, "participants": 20, "epsilon": 4.606813439340915, "completed": True},
        {"round": 1, "participants": 19, "epsilon": "inf", "val_auc": 0.1 + 0.2, "completed": False, "reason": "a, b"},
    ]
    back = read(metrics_csv(rows))
    assert [r["round"] for r in back] == ["0", "1"]
    assert float(back[0]["epsilon"]) == 4.606813439340915 and math.isinf(float(back[1]["epsilon"]))
    assert float(back[1]["val_auc"]) == 0.1 + 0.2  # every digit
    assert back[0]["val_auc"] == "" and back[0]["reason"] == ""
    assert back[1]["reason"] == "a, b" and back[1]["completed"] == "False"


def test_the_file_is_rewritten_whole(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, [{"round": 0, "epsilon": 1.0}, {"round": 1, "epsilon": 2.0}])
    write_metrics_csv(path, [{"round": 0, "epsilon": 1.0}])  # a resumed run keeps its checkpointed rows only
    assert path.read_text() == "round,epsilon\n0,1.0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind
