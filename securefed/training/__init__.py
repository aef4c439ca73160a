"""Local training without Flower: datasets and transforms, the local train/evaluate loops, DP-SGD
(Opacus), round checkpoints and the paper's baselines. Nothing here talks to another party; what a
site sends of the results is decided by :mod:`securefed.federation`."""
