"""Command line: ``utag demo`` runs UTAG on the bundled CODEX mouse spleen subset."""
from __future__ import annotations

import argparse
import logging
import sys
import time

EXAMPLES = """examples:
  utag demo                          run on the bundled CODEX spleen subset, print scores
  utag demo --out spleen_utag.h5ad   ... and save the result
"""


def _demo(args: argparse.Namespace) -> int:
    from . import utag
    from .datasets import codex_mouse_spleen
    from .evaluation import evaluate_performance

    adata = codex_mouse_spleen()
    print(f"Bundled CODEX mouse spleen subset: {adata.n_obs:,} cells, {adata.n_vars} features, "
          f"slides {', '.join(adata.obs['slide'].cat.categories)}")
    started = time.perf_counter()
    result = utag(adata, slide_key="slide", max_dist=args.max_dist, clustering_method=args.method,
                  resolutions=args.resolutions, random_state=args.random_state, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    scores = evaluate_performance(result, truth_key="domain")
    table = scores[["pred_key", "n_domains", "adjusted_rand", "nmi"]].round(3)
    print(f"\nUTAG (max_dist={args.max_dist:g} px) took {elapsed:.1f} s. Agreement with the expert compartments:")
    print(table.to_string(index=False))
    if args.out:
        result.write_h5ad(args.out)
        print(f"\nSaved the result to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="utag", description="Find microanatomical domains in single-cell spatial data (UTAG).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"utag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run UTAG on the bundled CODEX mouse spleen subset",
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", help="save the result to this .h5ad file")
    demo.add_argument("--max-dist", type=float, default=200.0, help="neighbourhood radius in pixels (default 200)")
    demo.add_argument("--method", nargs="+", default=["leiden"], choices=["leiden", "parc", "kmeans"],
                      help="clustering method(s) (default leiden)")
    demo.add_argument("--resolutions", nargs="+", type=float, default=[0.05, 0.1, 0.3],
                      help="clustering resolution(s) (default 0.05 0.1 0.3)")
    demo.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
