"""clusterous-k8s command-line client: the laptop half of the tool."""
