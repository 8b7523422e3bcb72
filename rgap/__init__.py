"""rgap-bench core: models, data, shared gradients, R-GAP, rank analysis and metrics."""
