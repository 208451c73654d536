"""What runs on the server: the ServerApp, node registry and sampling, the round loop,
aggregation, central evaluation and the results files."""
