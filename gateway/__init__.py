"""ALEPH ⇄ CaiaSoft gateway: request files to CaiaSoft, item status back to ALEPH."""

__version__ = "0.1.0"
