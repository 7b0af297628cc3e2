"""The in-cluster operator: ClusterApp spec, pure object builders and kopf handlers.

Must not import clusterous_cli or boto3: it runs in the cluster with only kopf and kubernetes.
"""
