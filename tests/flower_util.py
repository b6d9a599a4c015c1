"""Shared settings of the Flower tests."""

# A small fmnist split on which counterfactuals are made in round 1 (a few seconds in-process).
SMALL = {"peers": 3, "rounds": 1, "epochs": 2, "retrain-epochs": 1, "train-per-peer": 400, "test-limit": 1000}
