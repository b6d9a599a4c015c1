"""The ckd coordinator: membership, round barrier, metrics."""
