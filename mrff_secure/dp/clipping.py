"""L2 clipping of update vectors, for one vector (d,) or a batch of clients (clients, d).

Pure functions over numpy arrays or torch tensors. Norms are computed in float64 and the
returned rows are guaranteed to have a float64-computed L2 norm <= C (a clipped row is shrunk by
a few ulps more if the division alone would land a hair above C).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from mrff_secure.checks import check_int, check_number
from mrff_secure.errors import PrivacyError

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _check_shape(ndim: int) -> None:
    if ndim not in (1, 2):
        raise PrivacyError(f"clip_l2 takes a vector (d,) or a batch (clients, d), got {ndim} dimensions")


def _clip_numpy(x: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    if not np.issubdtype(x.dtype, np.floating):
        raise PrivacyError(f"clip_l2 needs a floating-point array, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise PrivacyError("clip_l2 got a non-finite value (NaN or inf) in the update")
    rows = np.atleast_2d(x).astype(np.float64)  # (clients, d)
    norms = np.linalg.norm(rows, axis=1)  # (clients,)
    factor = np.ones_like(norms)
    over = norms > clip
    factor[over] = clip / norms[over]
    out = (rows * factor[:, None]).astype(x.dtype)
    # Rounding (the product, then the cast back to x.dtype) can leave a norm a few ulps above C.
    for _ in range(64):
        over = np.linalg.norm(out.astype(np.float64), axis=1) > clip
        if not over.any():
            break
        out[over] = out[over] * (1.0 - 4.0 * np.finfo(x.dtype).eps)
    else:  # pragma: no cover - would need a pathological dtype
        raise PrivacyError("could not bring the clipped norm under C")
    out = out.reshape(x.shape)
    return out, norms if x.ndim == 2 else norms.reshape(())


def _clip_torch(x: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_floating_point(x):
        raise PrivacyError(f"clip_l2 needs a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise PrivacyError("clip_l2 got a non-finite value (NaN or inf) in the update")
    rows = torch.atleast_2d(x).to(torch.float64)  # (clients, d)
    norms = torch.linalg.vector_norm(rows, dim=1)  # (clients,)
    factor = torch.where(norms > clip, clip / torch.clamp(norms, min=clip), torch.ones_like(norms))
    out = (rows * factor[:, None]).to(x.dtype)
    shrink = 1.0 - 4.0 * torch.finfo(x.dtype).eps
    for _ in range(64):
        over = torch.linalg.vector_norm(out.to(torch.float64), dim=1) > clip
        if not bool(over.any()):
            break
        out[over] = out[over] * shrink
    else:  # pragma: no cover
        raise PrivacyError("could not bring the clipped norm under C")
    out = out.reshape(x.shape)
    return out, norms if x.ndim == 2 else norms.reshape(())


def clip_l2(x: Array, clip: float) -> tuple[Array, Array]:
    """Scale each row of ``x`` to L2 norm at most ``clip``; return (clipped, original norms).

    ``x`` is (d,) or (clients, d), numpy or torch (same type and dtype come back; norms are
    float64, shape () or (clients,)). Rows already within the bound are returned unchanged.
    """
    clip = check_number("clip bound C", clip, low=0.0, low_open=True, error=PrivacyError)
    if isinstance(x, torch.Tensor):
        _check_shape(x.ndim)
        return _clip_torch(x.detach(), clip)
    if isinstance(x, np.ndarray):
        _check_shape(x.ndim)
        return _clip_numpy(x, clip)
    raise PrivacyError(f"clip_l2 takes a numpy array or a torch tensor, got {type(x).__name__}")


def clip_prefix_l2(x: Array, *, clip: float, prefix_len: int) -> tuple[Array, Array]:
    """Clip only the first ``prefix_len`` coordinates of each row (the delta part) to L2 norm C.

    The update layout is ``[delta part | count one-hots | example count]``; the tail is left
    as it is (its sensitivity is fixed by construction, see ``release.py``). Returns the full
    rows and the delta part's original norms.
    """
    length = x.shape[-1]
    check_int(f"prefix_len (vectors of length {length})", prefix_len, low=1, high=length, error=PrivacyError)
    head, norms = clip_l2(x[..., :prefix_len], clip)
    if isinstance(x, torch.Tensor):
        return torch.cat([head, x[..., prefix_len:].detach()], dim=-1), norms
    return np.concatenate([head, x[..., prefix_len:]], axis=-1), norms
