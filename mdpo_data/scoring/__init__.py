"""Reference scoring: the one log-prob computation, prefix packing, model loading, the score stage."""
