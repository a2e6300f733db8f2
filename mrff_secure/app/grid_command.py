"""`python -m mrff_secure.app.grid_command`: the audit grid alone, for research (`mrff audit` is the product's way).

Runs `attacks.grid` on synthetic data or KuaiSAR-R, writes the grid's JSON and, with --plots, its
plots (`mrff_secure.report.plots`), and prints each rule's verdict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attacks import grid
from mrff_secure.errors import ConfigError
from mrff_secure.report.plots import write_plots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=("synthetic", "kuaisar-r"), default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=None, help="KuaiSAR-R folder (with --dataset kuaisar-r)")
    parser.add_argument("--users", type=int, default=400, help="synthetic users")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--canaries", type=int, default=100)
    parser.add_argument("--clip", type=float, default=1.0, help="the public clip bound C of the DP cells")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.3, 0.5], help="noise multipliers")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.0, 4.0], help="calibrated target epsilons")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sampled-fraction", type=float, default=0.1,
                        help="client fraction of the disaggregation cells (0 = no such cells)")
    parser.add_argument("--out", type=Path, required=True, help="the grid's JSON")
    parser.add_argument("--plots", type=Path, default=None, help="folder for the plots (PNG)")


def grid_main(args: argparse.Namespace) -> int:
    from mrff_secure.data import load_kuaisar_r, make_synthetic

    if args.dataset == "kuaisar-r":
        if args.data_dir is None:
            raise ConfigError("--dataset kuaisar-r needs --data-dir")
        data = load_kuaisar_r(args.data_dir)
    else:
        data = make_synthetic(num_users=args.users)
    cells = grid.default_cells(levels=tuple(args.levels), targets=tuple(args.targets), seeds=tuple(args.seeds),
                          sampled=args.sampled_fraction or None)
    report = grid.run_grid(data, cells, rounds=args.rounds, canaries=args.canaries, clip=args.clip,
                      progress=lambda r: print(f"{r['cell']}: {r['scores']} ({r['seconds']:.1f} s)", flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)  # atomic: a reader never sees half a grid
    if args.plots is not None:
        for path in write_plots(report, args.plots):
            print(f"wrote {path}")
    for name, rule in sorted(report["rules"].items()):
        print(f"{name}: {rule['verdict']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrff_secure.app.grid_command",
                                     description=grid.__doc__.splitlines()[0])
    add_arguments(parser)
    return grid_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
