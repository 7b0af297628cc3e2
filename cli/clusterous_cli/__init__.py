"""clusterous-k8s command-line client: the laptop half of the tool."""

__version__ = "0.1.0"
