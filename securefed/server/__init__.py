"""What the coordinator runs: open and collect the sites' sealed releases (:mod:`.collect`), fit
the paper's clustering on them and seal the fitted model to each site (:mod:`.cluster_model`)."""
