"""The gRPC wire protocol of `mrff server` / `mrff client`.

v1/ holds the code generated from proto/mrff_secure/v1/*.proto by
proto/generate.py (never edited by hand); the modules here are the few
helpers both sides share: tensors (parameters <-> protobuf, model digest),
signing (Ed25519 over signed bodies), limits (message sizes, metadata keys).
"""
