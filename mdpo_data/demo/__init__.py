"""Built-in models: the random-weight smoke-test model and the trained demo model."""
