"""What runs on the experimenter's machine: the Hydra CLI, the federations it starts or
reaches, the centralized runner, sweeps, plots and tables. Never shipped in the Flower App."""
