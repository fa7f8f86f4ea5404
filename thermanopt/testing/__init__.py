"""thermanopt.testing."""
