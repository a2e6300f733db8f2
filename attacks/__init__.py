"""The attacks suite: attacks that read exactly what one threat model's server saw, and the grid of
cells and rules that turns their results into claim checks (see attacks/grid.py)."""
