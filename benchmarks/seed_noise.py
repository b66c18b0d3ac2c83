"""Is a change to utag() within seed noise? ARI against the experts over seeds, before and after.

Usage (from the repository root, with utag installed from it)::

    python benchmarks/seed_noise.py --before 400ecda --seeds 8 --out docs/generated/seed_noise.md

Runs ``utag()`` on the bundled spleen subset (Leiden at resolutions 0.05 and 0.1,
``max_dist=200``, as ``utag demo``) with seeds ``0 .. seeds-1``, on the ``--before``
commit (a temporary git worktree) and on the working tree, and prints the ARI of every
seed with the mean and standard deviation of each. A change that only re-draws the
random choices (another order of the cells, other rounding) moves the means by less than
their spread.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from measure import checkout, run_script

RESOLUTIONS = (0.05, 0.1)


def scores(n_seeds: int) -> list[list[float]]:
    """ARI of each seed (rows) at each resolution (columns), with the utag on ``sys.path``."""
    import logging

    from sklearn.metrics import adjusted_rand_score

    from utag import utag
    from utag.datasets import codex_mouse_spleen

    logging.getLogger("utag").setLevel(logging.ERROR)
    adata = codex_mouse_spleen()
    truth = adata.obs["domain"].astype(str).to_numpy()
    scored = truth != "NoAnnotation"
    rows = []
    for seed in range(n_seeds):
        result = utag(adata, slide_key="slide", max_dist=200, clustering_method="leiden",
                      resolutions=list(RESOLUTIONS), random_state=seed, progress=False)
        rows.append([adjusted_rand_score(truth[scored], result.obs[f"UTAG Label_leiden_{r}"].to_numpy()[scored])
                     for r in RESOLUTIONS])
    return rows


def _run(label: str, n_seeds: int, source: Path | None) -> str:
    return run_script(Path(__file__).resolve(), ["--seeds", str(n_seeds), "--measure", label], source=source,
                      capture=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="commit to compare the working tree with (required)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", help="also write the table (with where and when it was measured) to this file")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure this code, print rows
    args = parser.parse_args()
    if args.measure:
        import numpy as np

        rows = np.array(scores(args.seeds))
        for seed, row in enumerate(rows):
            print(f"| {args.measure} | {seed} | " + " | ".join(f"{value:.3f}" for value in row) + " |")
        print(f"| {args.measure} | mean +- sd | "
              + " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(rows.mean(axis=0), rows.std(axis=0))) + " |")
        return
    if not args.before:
        parser.error("--before is required")
    lines = ["| code | seed | " + " | ".join(f"ARI leiden {r}" for r in RESOLUTIONS) + " |",
             "|---|---|" + "---|" * len(RESOLUTIONS)]
    with checkout(args.before) as before:
        lines.append(_run(f"before ({args.before})", args.seeds, before).rstrip())
    lines.append(_run("after (working tree)", args.seeds, None).rstrip())
    table = "\n".join(lines)
    print(table)
    if args.out:
        from measure import provenance

        Path(args.out).write_text(
            f"ARI against the experts on the bundled spleen subset (Leiden, `max_dist=200`) over "
            f"{args.seeds} seeds, before ({args.before}) and after; {provenance()}.\n\n{table}\n")


if __name__ == "__main__":
    main()
