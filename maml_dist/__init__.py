"""maml_dist: distributed gradient-based meta-learning (MAML and its family) in JAX."""

__version__ = "0.1.0"
