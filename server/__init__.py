"""What is not a peer: the coordinator and the Flower ServerApp (they never see private data)."""
