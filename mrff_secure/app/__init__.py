"""The application layer: the `mrff` command line and the commands behind it.

`cli` builds the parser (the shared run configuration comes from `options`) and runs one command:
`train_command` (with `experiment`, a training run and its folder), `privacy_command`,
`audit_command`, `server_command` (`mrff server`, `schema`, `certs`, `audit-log`, `run-local`) and
`client_command` (`mrff client`, `client-key`). The top of the layers that import-linter checks
(pyproject.toml): it may import every package; none imports it.
"""
