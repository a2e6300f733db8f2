"""Transport-agnostic secure aggregation: SecAgg (Bonawitz et al., CCS 2017) with the sparse
neighbour graph of SecAgg+ (Bell et al., CCS 2020). It sums integer vectors mod 2^b; it knows
nothing about models or networks.

Modules, one concept each: primitives (crypto from `cryptography`), shamir, encoding (signed
integers in the ring), packing (bit-packing), graph (neighbours), masking (mask arithmetic),
messages (wire format), stages, client and server (state machines). A whole round in one process, driven by
the stage table, is `mrff_secure.round.inmemory`.
"""

from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig, required_modulus_bits
from mrff_secure.secagg.encoding import InputRangeError, from_ring, to_ring
from mrff_secure.secagg.server import AggregateResult, ServerSession
from mrff_secure.secagg.stages import ShareKind, Stage

__all__ = [
    "AggregateResult",
    "ClientSession",
    "InputRangeError",
    "SecAggConfig",
    "ServerSession",
    "ShareKind",
    "Stage",
    "from_ring",
    "required_modulus_bits",
    "to_ring",
]
