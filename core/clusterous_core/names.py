"""The cluster's names, defined once for the CLI, the provisioner and the operator (the manifests
and the CRD are YAML and spell the same names)."""

from __future__ import annotations

import re

# Where the cluster's own objects live: operator, registry, cluster-info, build Jobs, autoscaler.
NAMESPACE = "clusterous-system"
# The label every node carries with its node group (k3s --node-label at join); apps select on it.
GROUP_LABEL = "clusterous.io/group"
CLUSTER_INFO = "cluster-info"  # ConfigMap in NAMESPACE: what the provisioner recorded at bootstrap
AUTOSCALER_RECORD = "autoscaler"  # ConfigMap in NAMESPACE: elastic groups' bounds, budget, status

# The ClusterApp custom resource (operator/clusterous_operator/crd.yaml).
GROUP, VERSION, PLURAL = "clusterous.io", "v1alpha1", "clusterapps"
API_VERSION = f"{GROUP}/{VERSION}"

# The operating systems a cluster's nodes may run (`os` in the cluster file, `--os`).
SUPPORTED_OS = ("ubuntu-24.04", "al2023")
DEFAULT_OS = SUPPORTED_OS[0]

# Kubernetes' time format (RFC 3339 in UTC, whole seconds), as in metadata.creationTimestamp.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# --- name rules ------------------------------------------------------------------------------
# A DNS label (Kubernetes object names, hostnames) that also fits AWS names built from it
# (IAM role "clusterous-<name>-controller" must stay within 64 characters; tag values allow it).
CLUSTER_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
CLUSTER_NAME_EXPECTED = (
    "a cluster name of 1-40 lowercase letters, digits and '-', starting with a letter and not "
    "ending with '-' (it becomes a DNS label and part of AWS names)"
)
# Node groups are label values (clusterous.io/group=<group>) and tag values, never object or
# host names (AWS only tags instances with them), so Clusterous' `io_master` / `cpu_worker` are valid.
GROUP_NAME = re.compile(r"^[a-z]([a-z0-9_-]{0,20}[a-z0-9])?$")
GROUP_NAME_RULE = "1-22 lower case letters, digits, '-' or '_', starting with a letter"
GROUP_NAME_EXPECTED = f"a node group name: {GROUP_NAME_RULE}"
# Application and component names begin Service names: DNS-1035 labels.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")  # an EC2 instance type: t3.large
# A Kubernetes label value (1-63 characters): what a node group must be on a node
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
