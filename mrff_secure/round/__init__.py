"""One round of federated training, in one home: its specification, each participant's uploads, the
server's aggregate step, the stage table of the secure sums, and the accountant of what rounds release.

The simulation (`federation`), the network client (`client`), the coordinator (`server`), the audit
(`attacks`) and the benchmarks all call these modules; none of them rebuilds a round by hand.

- `spec`: the round's vocabulary (`Phase`, `ThreatModel`, `SecureAggregation`) and its frozen,
  validated settings (`RoundSpec` for a networked round, `PrivacySettings` for a training run).
- `encoding`: the integer plans of a secure round and one client's ring encoding (clip, rotation,
  rounding, noise share).
- `participant`: a client's local result -> what it uploads in each phase (rotation seed, scaled
  example count, suppressed slots, the generator of its DP randomness).
- `aggregate`: decoded sums -> the global step (suppression, group averaging).
- `stages`: one table of the secure-aggregation stages; `inmemory` runs it in one process.
- `accountant`: what a round releases about one user (`RoundRelease`) and the accountant of a run's
  history of releases.
"""
