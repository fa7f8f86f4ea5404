"""thermanopt.nn."""
