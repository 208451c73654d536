"""What runs on a client node: the ClientApp, its local training and its answers to query rounds."""
