"""What every part of clusterous-k8s shares: the error model, the YAML reader, the cluster's names.

Its own package because the CLI, the provisioner and the in-cluster operator all import it (the
operator's code bundle ships it beside clusterous_operator), so it depends on the standard library
only (PyYAML, which every part has, is imported where a file is read) and stays cheap to import.
"""
