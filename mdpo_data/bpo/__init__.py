"""Bootstrapped rejected responses (BPO): specs, generation, the answer cache, the stage."""
