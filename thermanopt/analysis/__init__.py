"""thermanopt.analysis."""
