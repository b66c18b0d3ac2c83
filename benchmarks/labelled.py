"""Every labelled dataset the benchmarks score against, in one place.

``labelled_datasets(...)`` yields ``Dataset`` records: a name, the AnnData (features in
``X``, centroids in ``obsm['spatial']``, truth in ``obs['domain']``), its slide column and
a ``max_dist`` in its units. The real sections come from the project's ``shared/`` folder
when it is there (``--shared``), and are skipped with a message when it is not.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
from measure import revision

import utag
from utag.datasets import codex_mouse_spleen, synthetic_tissue

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLEEN = SHARED / "codex_mouse_spleen" / "codex_mouse_spleen.h5ad"
MERFISH = SHARED / "merfish_hypothalamus" / "merfish_hypothalamus.h5ad"


@dataclass
class Dataset:
    name: str
    adata: anndata.AnnData
    slide_key: str
    max_dist: float
    truth_key: str = "domain"

    def truth(self) -> np.ndarray:
        return self.adata.obs[self.truth_key].astype(str).to_numpy()


def labelled_datasets(kinds=("subset", "spleen", "merfish", "synthetic"), synthetic_seeds=(0, 1),
                      synthetic_domains=(5,), synthetic_cells=20_000, spleen_max_dist=150.0,
                      merfish_max_dist=75.0, synthetic_layouts=("voronoi",), pooled_spleen=False):
    """The datasets, lazily (one in memory at a time); ``pooled_spleen``: both spleen
    sections together as one more dataset, after each alone."""
    if "subset" in kinds:
        yield Dataset("spleen subset (bundled)", codex_mouse_spleen(), "slide", 200.0)
    if "spleen" in kinds:
        if SPLEEN.exists():
            full = codex_mouse_spleen(SPLEEN)
            for section in full.obs["slide"].cat.categories:
                yield Dataset(f"spleen {section}", full[full.obs["slide"] == section].copy(), "slide",
                              spleen_max_dist)
            if pooled_spleen:
                yield Dataset("spleen, both sections", full, "slide", spleen_max_dist)
        else:
            print(f"# skipped the full spleen sections: {SPLEEN} not found", file=sys.stderr)
    if "merfish" in kinds:
        if MERFISH.exists():
            merfish = anndata.read_h5ad(MERFISH)
            for slide in merfish.obs["slide"].astype("category").cat.categories:
                yield Dataset(f"MERFISH {slide.replace('Animal1_', '')}",
                              merfish[merfish.obs["slide"] == slide].copy(), "slide", merfish_max_dist)
        else:
            print(f"# skipped the MERFISH slides: {MERFISH} not found", file=sys.stderr)
    if "synthetic" in kinds:
        for layout in synthetic_layouts:
            for n_domains in synthetic_domains:
                for seed in synthetic_seeds:
                    kind = "" if layout == "voronoi" else f" {layout}"
                    yield Dataset(f"synthetic{kind} K={n_domains} seed={seed}",
                                  synthetic_tissue(n_cells=synthetic_cells, n_slides=2, n_domains=n_domains,
                                                   random_state=seed, layout=layout), "roi", 20.0)


def markdown(rows: list[dict], digits: int = 3) -> str:
    """A markdown table of ``rows`` (dicts with the same keys)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v)
                                       for v in row.values()) + " |")
    return "\n".join(lines)


def write_generated(path: str | None, script: str, text: str) -> None:
    """Write ``text`` for the docs to ``path`` (if given), headed by the script, date, machine and utag commit."""
    if not path:
        return
    commit = revision(Path(utag.__file__).resolve().parent)
    header = (f"<!-- written by benchmarks/{script} on {datetime.date.today()}, {platform.machine()} with "
              f"{os.cpu_count()} cores, utag at {commit}; do not edit by hand -->\n")
    with open(path, "w") as handle:
        handle.write(header + text + "\n")


def publish(path: str | None, script: str, text: str, failure: str | None = None) -> None:
    """Print ``text``, write it for the docs (:func:`write_generated`), then exit with
    ``failure`` as the message if the run found a fault (e.g. results that depend on the
    number of threads), so that the table still records what was measured."""
    print("\n" + text)
    write_generated(path, script, text)
    if failure:
        raise SystemExit(failure)


def parser(description: str) -> argparse.ArgumentParser:
    """Command-line options every accuracy benchmark takes: ``--kinds`` and ``--out``."""
    options = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--kinds", nargs="+", default=["subset", "spleen", "merfish", "synthetic"],
                         help="which labelled datasets (subset, spleen, merfish, synthetic)")
    options.add_argument("--out", help="also write the tables (markdown, with machine and date) to this file")
    return options
