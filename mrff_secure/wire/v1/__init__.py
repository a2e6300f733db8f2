"""Generated protobuf and gRPC modules of wire protocol version 1 (see proto/generate.py)."""
