"""jaxicl: in-context learning of regression by attention models, in JAX/Flax."""

__version__ = "0.1.0"
