"""securefed: privacy-hardened clustered federated personalization (CFFL)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
