"""The largest message each method of this run can legitimately carry (W19 in SECURITY.md).

The server's transport receives no message larger than the largest one a client of this run can honestly
send, and each method refuses (RESOURCE_EXHAUSTED) anything larger than what that method can be. The caps
are computed once at start from the run's public parameters, never constants:

- Submit: the largest stage message of any phase (counts, update, evaluation). MaskedInput is the vector
  of the phase's plan, bit-packed to its ring; ShareKeys and UnmaskResponse carry one entry per
  neighbour, for the largest neighbourhood any round of this run can have (the configured
  --num-neighbours, or the default k for the most clients an id can name); AdvertiseKeys and the
  others are of fixed size.
- EnrolChallenge, Enrol, GetRound, Fetch: fixed fields (ids, keys, signatures, a credential), a few hundred bytes.

MARGIN_BYTES is added to each: the protobuf framing of the request (a few dozen bytes) and room for a
few fixed-size fields a later protocol version may add (a signature, a nonce), never a second vector.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrff_secure.errors import ConfigError
from mrff_secure.federation import evaluation_sum
from mrff_secure.round.encoding import round_plans
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.config import MAX_CLIENT_ID, MAX_MODULUS_BITS, default_num_neighbours
from mrff_secure.secagg.identity import ClientCredential
from mrff_secure.secagg.shamir import SHARE_VALUE_BYTES, Share

MARGIN_BYTES = 4096
"""Added to every cap: request framing and a few fixed-size fields; far below one more vector."""
ENROL_BYTES = 4096 - MARGIN_BYTES // 2
"""EnrolRequest's own fields (id, 32-byte key, 64-byte proof, a credential of about a hundred bytes, flags) are
under 400 bytes; this leaves room for a challenge-response (W18) and stays a few KiB with the margin."""
POLL_BYTES = 64
"""EnrolChallengeRequest, GetRoundRequest and FetchRequest: a handful of integers."""


def _masked_input_bytes(vector_length: int, bits: int) -> int:
    empty = messages.MaskedInput(0, 0, bits, vector_length, b"").to_bytes()
    return len(empty) + packing.packed_size(vector_length, bits)


def _share_keys_bytes(neighbours: int) -> int:
    ciphertext = bytes(messages.SharePayload.SIZE + primitives.NONCE_BYTES + 16)  # AES-GCM: nonce + payload + tag
    one = messages.EncryptedShare(0, 0, ciphertext)
    return len(messages.ShareKeys(0, 0, (one,)).to_bytes()) + (neighbours - 1) * (12 + len(ciphertext))


def _unmask_bytes(neighbours: int) -> int:
    share = messages.OwnedShare(0, Share(1, bytes(SHARE_VALUE_BYTES)))
    return len(messages.UnmaskResponse(0, 0, (share,) * neighbours, ()).to_bytes())


def _advertise_bytes() -> int:
    """Header (10) + id + two public keys + two commitments + the credential + a signature."""
    keys = 2 * primitives.PUBLIC_KEY_BYTES + 2 * messages.COMMITMENT_BYTES
    return 10 + 4 + keys + ClientCredential.SIZE + primitives.SIGNATURE_BYTES


@dataclass(frozen=True)
class MessageCaps:
    """The largest request (bytes, MARGIN_BYTES included) each method accepts."""

    enrol_challenge: int
    enrol: int
    get_round: int
    submit: int
    fetch: int

    def of(self, method: str) -> int:
        return {
            "EnrolChallenge": self.enrol_challenge,
            "Enrol": self.enrol,
            "GetRound": self.get_round,
            "Submit": self.submit,
            "Fetch": self.fetch,
        }[method]

    @property
    def receive(self) -> int:
        """The transport's cap (grpc.max_receive_message_length): the largest of the methods' caps."""
        return max(self.enrol_challenge, self.enrol, self.get_round, self.submit, self.fetch)

    @classmethod
    def for_run(
        cls, layout: UpdateLayout, spec: RoundSpec, *, num_neighbours: int | None, ceiling: int | None = None
    ) -> "MessageCaps":
        """The caps of a run with this model layout and round spec. `num_neighbours`: the configured k (None:
        the default k, sized for the most clients an id can name). `ceiling` (--max-upload-mib): a run whose
        legitimate messages exceed it is refused here, before it starts."""
        plans = round_plans(spec, layout, 3)  # the vector lengths and rings do not depend on the clients
        k = num_neighbours if num_neighbours is not None else default_num_neighbours(MAX_CLIENT_ID + 1)
        vectors = [(plans.update.padded_dim, plans.update.modulus_bits)]
        if plans.counts is not None:
            vectors.append((plans.counts.padded_dim, plans.counts.modulus_bits))
        vectors.append((evaluation_sum.LENGTH, MAX_MODULUS_BITS))  # its ring grows with the clients: bound it
        largest = max(
            max(_masked_input_bytes(n, bits) for n, bits in vectors),
            _share_keys_bytes(k),
            _unmask_bytes(k),
            _advertise_bytes(),
        )
        caps = cls(
            enrol_challenge=POLL_BYTES + MARGIN_BYTES,
            enrol=ENROL_BYTES + MARGIN_BYTES,
            get_round=POLL_BYTES + MARGIN_BYTES,
            submit=largest + MARGIN_BYTES,
            fetch=POLL_BYTES + MARGIN_BYTES,
        )
        if ceiling is not None and caps.receive > ceiling:
            raise ConfigError(
                f"this run's largest legitimate message is {caps.receive:,} bytes (the update vector of "
                f"{plans.update.padded_dim:,} values at {plans.update.modulus_bits} bits), over --max-upload-mib "
                f"({ceiling:,} bytes): raise --max-upload-mib"
            )
        return caps
