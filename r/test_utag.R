# R route through reticulate: run utag on the bundled data, check the result in R.
# Usage: Rscript r/test_utag.R [path/to/python]   (default: .venv/bin/python)
# Installs nothing: needs Debian's r-base-core and r-cran-reticulate, and utag installed
# in that Python environment.
args <- commandArgs(trailingOnly = TRUE)
python <- if (length(args) >= 1) args[[1]] else file.path(".venv", "bin", "python")
stopifnot(file.exists(python))
# absolute path without resolving the venv's symlink (that would leave the venv)
python <- file.path(normalizePath(dirname(python)), basename(python))
Sys.setenv(RETICULATE_PYTHON = python)
library(reticulate)
use_python(python, required = TRUE)

# convert = FALSE: keep Python objects and convert explicitly. reticulate 1.28 (Debian 12)
# cannot convert pandas categoricals or object columns under NumPy 2.
utag <- import("utag", convert = FALSE)
datasets <- import("utag.datasets", convert = FALSE)
io <- import("utag.io", convert = FALSE)

# a labelling table from Python (plain strings) to an R data.frame
labels_frame <- function(result, include = list()) {
  table <- io$labels_table(result, include = include)
  columns <- lapply(py_to_r(table$to_dict("list")), unlist)
  frame <- as.data.frame(columns, check.names = FALSE, stringsAsFactors = FALSE)
  rownames(frame) <- unlist(py_to_r(table$index$tolist()))
  frame
}

adata <- datasets$codex_mouse_spleen()
n_cells <- py_to_r(adata$n_obs)
stopifnot(n_cells == 35145L)

# The same call as the Python quick start: an R vector of numbers becomes a Python list.
result <- utag$utag(
  adata,
  slide_key = "slide",
  max_dist = 200,
  clustering_method = "leiden",
  resolutions = c(0.05, 0.1, 0.3),
  progress = FALSE
)

labels <- labels_frame(result, include = list("slide"))
keys <- c("UTAG Label_leiden_0.05", "UTAG Label_leiden_0.1", "UTAG Label_leiden_0.3")
stopifnot(nrow(labels) == n_cells, identical(colnames(labels), c("slide", keys)))
stopifnot(identical(rownames(labels), unlist(py_to_r(adata$obs_names$tolist()))))
for (key in keys) {
  domains <- factor(labels[[key]])
  stopifnot(!anyNA(domains), nlevels(domains) >= 2)
}
# numeric arrays too go through Python lists (NumPy 2 arrays do not convert in reticulate 1.28)
soft <- result$obsm$get("UTAG Label_leiden_0.05_probabilities")
probabilities <- matrix(unlist(py_to_r(soft$ravel()$tolist())), ncol = py_to_r(soft$shape[1]), byrow = TRUE)
stopifnot(nrow(probabilities) == n_cells)
stopifnot(max(abs(rowSums(probabilities) - 1)) < 1e-4)

# slide_key = NULL (Python None): one image, here the first section only
first <- py_to_r(adata$obs[["slide"]]$astype("str")$eq("BALBc-1")$to_numpy())
section <- adata$`__getitem__`(r_to_py(first))$copy()
single <- utag$utag(section, slide_key = NULL, max_dist = 200, clustering_method = "kmeans",
                    resolutions = 0.3, progress = FALSE)
stopifnot(length(unique(labels_frame(single)[["UTAG Label_kmeans_0.3"]])) == 3L)

scores <- utag$evaluate_performance(result, truth_key = "domain")
ari <- unlist(py_to_r(scores[["adjusted_rand"]]$tolist()))
domains_found <- unlist(py_to_r(scores[["n_domains"]]$tolist()))
print(data.frame(labelling = keys, domains = domains_found, adjusted_rand = round(ari, 3)))
stopifnot(max(ari) > 0.4)
cat("R/reticulate: 3 labellings of", n_cells, "cells checked\n")
