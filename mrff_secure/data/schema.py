"""The public schema of a dataset: all the coordinator may know of it.

The coordinator builds the global model, so it needs the item catalogue (item attributes: public,
the same for everyone) and the shape of user data (the user attribute fields and their vocabulary
sizes, the sequence length), but no user's rows. `PublicSchema.of(data)` strips a loaded dataset
down to that; `mrff schema` writes it to a JSON file that `mrff server --schema FILE` reads, so a
server process never opens a user's interactions or attributes.

File format (JSON): {"format": "mrff-public-schema", "version": 1, "name", "maxlen", "population",
"items": {"field_names", "vocab_sizes", "spans", "tokens" (rows x width ints)},
"user_fields": {"field_names", "vocab_sizes", "spans"}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.checks import check_int
from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.errors import DataFormatError

FORMAT = "mrff-public-schema"
VERSION = 1


def _span(span: Any) -> tuple[int, int]:
    """A field's [start, end) columns from the document (ValueError unless exactly two values)."""
    lo, hi = span
    return int(lo), int(hi)


@dataclass(frozen=True)
class PublicSchema:
    """name, item_attributes (the catalogue, row 0 = padding), user_attributes (fields and vocabularies,
    zero rows), maxlen and population (the number of users: the deployment's size, which sets the default
    delta 1/n^1.1). It has the two attribute tables `build_model` reads, like ClientData."""

    name: str
    item_attributes: AttributeTable
    user_attributes: AttributeTable
    maxlen: int
    population: int

    def __post_init__(self) -> None:
        if self.user_attributes.num_rows != 0:
            raise DataFormatError("a public schema holds no user rows")
        check_int("maxlen", self.maxlen, low=1, error=DataFormatError)
        check_int("population", self.population, low=1, error=DataFormatError)

    @classmethod
    def of(cls, data: ClientData) -> "PublicSchema":
        users = data.user_attributes
        empty = AttributeTable(
            users.field_names, users.vocab_sizes, users.spans, np.zeros((0, users.tokens.shape[1]), dtype=np.int64)
        )
        return cls(data.name, data.item_attributes, empty, data.maxlen, data.num_users)

    def digest(self) -> str:
        """SHA-256 of everything that shapes the model (catalogue, user fields, history length); the
        population is left out, since a client need not know the deployment's size."""
        import hashlib

        body = {k: v for k, v in self.to_json().items() if k not in ("population", "name")}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def describe(self) -> str:
        """One line naming what differs when two schemas do."""
        items, users = self.item_attributes, self.user_attributes
        return (
            f"{self.name}: {items.num_rows - 1} items with fields {list(items.field_names)} (vocabularies "
            f"{list(items.vocab_sizes)}), user fields {list(users.field_names)} (vocabularies "
            f"{list(users.vocab_sizes)}), maxlen {self.maxlen}"
        )

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        items, users = self.item_attributes, self.user_attributes
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "maxlen": self.maxlen,
            "population": self.population,
            "items": {
                "field_names": list(items.field_names),
                "vocab_sizes": list(items.vocab_sizes),
                "spans": [list(s) for s in items.spans],
                "tokens": items.tokens.tolist(),
            },
            "user_fields": {
                "field_names": list(users.field_names),
                "vocab_sizes": list(users.vocab_sizes),
                "spans": [list(s) for s in users.spans],
            },
        }

    def save(self, path: Path) -> None:
        write_bytes_atomic(Path(path), json.dumps(self.to_json(), separators=(",", ":")).encode())

    @classmethod
    def load(cls, path: Path) -> "PublicSchema":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{path}: cannot read the public schema: {exc}") from exc
        try:
            return cls.from_json(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{path}: not a valid public schema: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "PublicSchema":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataFormatError(f"not an {FORMAT} document")
        if doc.get("version") != VERSION:
            raise DataFormatError(f"schema version {doc.get('version')!r} is not supported (expected {VERSION})")
        items, users = doc["items"], doc["user_fields"]
        tokens = np.asarray(items["tokens"], dtype=np.int64)
        if tokens.ndim != 2:
            raise DataFormatError("item tokens must be a table of rows")
        width = int(users["spans"][-1][1]) if users["spans"] else 0
        return cls(
            name=str(doc["name"]),
            item_attributes=AttributeTable(
                tuple(map(str, items["field_names"])),
                tuple(map(int, items["vocab_sizes"])),
                tuple(_span(s) for s in items["spans"]),
                tokens,
            ),
            user_attributes=AttributeTable(
                tuple(map(str, users["field_names"])),
                tuple(map(int, users["vocab_sizes"])),
                tuple(_span(s) for s in users["spans"]),
                np.zeros((0, width), dtype=np.int64),
            ),
            maxlen=int(doc["maxlen"]),
            population=int(doc["population"]),
        )

    @property
    def num_users(self) -> int:
        """The population (as ClientData.num_users), for the defaults that depend on it."""
        return self.population
