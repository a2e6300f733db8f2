"""Model parameters <-> protobuf `Tensor` messages, and the model digest.

Little-endian float32/float64 only; shapes and sizes are checked on the way
in, so a malformed announcement raises DataFormatError instead of reaching torch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from mrff_secure.errors import DataFormatError
from mrff_secure.wire.v1 import coordinator_pb2 as pb

_DTYPES: dict[str, np.dtype[np.floating[Any]]] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


def _name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise DataFormatError(f"parameters must be float32 or float64, got {dtype}")
    return name


def to_proto(params: Mapping[str, torch.Tensor]) -> list[pb.Tensor]:
    out: list[pb.Tensor] = []
    for name, tensor in params.items():
        array = tensor.detach().cpu().contiguous().numpy()
        dtype = _name(tensor.dtype)
        out.append(
            pb.Tensor(
                name=name, shape=list(array.shape), dtype=dtype, data=array.astype(_DTYPES[dtype], copy=False).tobytes()
            )
        )
    return out


def from_proto(
    tensors: Iterable[pb.Tensor], expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
) -> dict[str, torch.Tensor]:
    """Decode exactly the expected parameters (name -> (shape, dtype)); anything else is refused."""
    out: dict[str, torch.Tensor] = {}
    for t in tensors:
        if t.name not in expected or t.name in out:
            raise DataFormatError(f"unexpected or repeated parameter {t.name!r}")
        shape, dtype = expected[t.name]
        if tuple(t.shape) != tuple(shape) or t.dtype != _name(dtype):
            raise DataFormatError(f"parameter {t.name!r} is {t.dtype}{tuple(t.shape)}, expected {_name(dtype)}{shape}")
        np_dtype = _DTYPES[t.dtype]
        if len(t.data) != math.prod(shape) * np_dtype.itemsize:
            raise DataFormatError(
                f"parameter {t.name!r} has {len(t.data)} bytes, expected {math.prod(shape) * np_dtype.itemsize}"
            )
        array = np.frombuffer(t.data, dtype=np_dtype).reshape(shape).copy()
        out[t.name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))
    missing = set(expected) - set(out)
    if missing:
        raise DataFormatError(f"parameters missing: {sorted(missing)}")
    return {name: out[name] for name in expected}


def digest(params: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 over (name, dtype, shape, little-endian bytes) in the given order."""
    h = hashlib.sha256(b"mrff-secure/v1/model-digest\x00")
    for name, tensor in params.items():
        array = tensor.detach().cpu().contiguous().numpy()
        dtype = _name(tensor.dtype)
        h.update(f"{name}|{dtype}|{','.join(map(str, array.shape))}|".encode())
        h.update(array.astype(_DTYPES[dtype], copy=False).tobytes())
    return h.digest()
