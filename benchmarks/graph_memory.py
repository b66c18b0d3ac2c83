"""Bytes of memory per spatial edge that each route building a radius graph needs.

Usage (from the repository root, with utag installed)::

    python benchmarks/graph_memory.py --out docs/generated/graph_memory.md

Each run is a fresh process holding one uniform slide (150 um^2 per cell, 40 markers); it
resets the kernel's peak-memory mark (``/proc/self/clear_refs``), runs one route and reads
the peak (``VmHWM``) minus the memory held before the call. A least-squares fit over
cells and edges gives bytes per edge and per cell; ``utag.graph``'s memory check uses
constants at or above these. Routes: ``utag()``'s graph and message passing
(``message_passing.pass_messages``), ``graph.spatial_neighbors`` (connectivities and
distances stored) and ``analysis.domain_connectivity`` with ``max_dist`` (an edge list).
Linux only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import version

import numpy as np
from measure import provenance

ROUTES = ("message passing", "spatial_neighbors", "domain_connectivity")
N_FEATURES = 40

_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from anndata import AnnData
import utag.graph, utag.analysis, utag.message_passing

route, n_cells, max_dist = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
side = (n_cells * 150.0) ** 0.5
coords = rng.uniform(0, side, size=(n_cells, 2))
features = rng.gamma(1.0, size=(n_cells, %(features)d)).astype(np.float32)
codes = np.zeros(n_cells, dtype=np.int64)
adata = AnnData(features, obsm={"spatial": coords})
adata.obs["domain"] = (coords[:, 0] // (side / 4)).astype(int).astype(str)
utag.graph.radius_graph(coords[:10], max_dist)  # squidpy imported before measuring

def status(key):
    with open("/proc/self/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as file:
    file.write("5")
before = status("VmRSS")
if route == "message passing":
    _, n_edges, _ = utag.message_passing.pass_messages(coords, features, codes, max_dist, parallel=False)
elif route == "spatial_neighbors":
    utag.graph.spatial_neighbors(adata, max_dist=max_dist, slide_key=None)
    n_edges = (adata.obsp["spatial_connectivities"].nnz - n_cells) // 2
else:
    utag.analysis.domain_connectivity(adata, "domain", max_dist=max_dist)
    n_edges = None
peak = status("VmHWM") - before
if n_edges is None:
    n_edges = len(utag.graph.slide_pairs(coords, codes, max_dist))
print(json.dumps({"bytes": peak, "edges": int(n_edges)}))
""" % {"features": N_FEATURES}


def measure(route: str, n_cells: int, max_dist: float) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, route, str(n_cells), str(max_dist)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", type=float, default=[1e5, 3e5])
    parser.add_argument("--max-dist", nargs="+", type=float, default=[20, 40, 80])
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    import utag.graph as graph

    constants = {  # (per edge, per cell) the memory check uses, with N_FEATURES features
        "message passing": (graph.MESSAGE_PASSING_BYTES_PER_PAIR, graph.MESSAGE_PASSING_BYTES_PER_CELL
                            + graph.MESSAGE_PASSING_BYTES_PER_FEATURE * N_FEATURES),
        "spatial_neighbors": (graph.SPATIAL_GRAPH_BYTES_PER_PAIR, graph.GRAPH_BYTES_PER_CELL),
        "domain_connectivity": (graph.EDGE_LIST_BYTES_PER_PAIR, graph.GRAPH_BYTES_PER_CELL),
    }
    runs = "| route | cells | max_dist | edges | peak above start (MB) |\n| --- | ---: | ---: | ---: | ---: |"
    fits = ["| route | bytes per edge | bytes per cell | largest residual | the memory check uses (edge, cell) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for route in ROUTES:
        rows = []
        for n_cells in map(int, args.cells):
            for max_dist in args.max_dist:
                measured = measure(route, n_cells, max_dist)
                rows.append((n_cells, measured["edges"], measured["bytes"]))
                runs += (f"\n| {route} | {n_cells:,} | {max_dist:g} | {measured['edges']:,} "
                         f"| {measured['bytes'] / 1e6:,.0f} |")
                print(runs.splitlines()[-1], flush=True)
        cells, edges, peak = (np.array(column, dtype=float) for column in zip(*rows))
        (per_edge, per_cell), *_ = np.linalg.lstsq(np.column_stack([edges, cells]), peak, rcond=None)
        residual = np.abs(peak - per_edge * edges - per_cell * cells) / peak
        per_edge_used, per_cell_used = constants[route]
        fits.append(f"| {route} | {per_edge:.0f} | {per_cell:.0f} | {residual.max():.1%} "
                    f"| {per_edge_used}, {per_cell_used} |")
    header = (f"One slide of uniform cells, {N_FEATURES} markers, each run in a fresh process; {provenance()}, "
              f"scikit-learn {version('scikit-learn')} (`python benchmarks/graph_memory.py`)")
    text = header + "\n\n" + "\n".join(fits) + "\n\n" + runs + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
