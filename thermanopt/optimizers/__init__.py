"""thermanopt.optimizers."""
