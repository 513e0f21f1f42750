"""ollama-sidecar: the proxy, its routing control plane and the command line."""

__version__ = "0.1.0"
