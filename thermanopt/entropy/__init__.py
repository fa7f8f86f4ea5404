"""thermanopt.entropy."""
