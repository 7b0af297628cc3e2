"""The BuildKit Job that builds an image on the cluster: pure builders, no I/O.

Why this shape: no Docker daemon exists on the nodes (k3s runs containerd), and a privileged
builder would be root on a node. BuildKit's rootless image runs `buildctl-daemonless.sh`, which
starts a user-namespaced buildkitd for one build and stops with it; it needs seccomp and
AppArmor unconfined (for its user namespaces) but no privileges. The context is a folder of the
shared volume (uploaded with a delta transfer first), mounted read-only through a claim of the
`clusterous-shared` class in clusterous-system; the image is pushed over plain HTTP to the
cluster registry by the same name pods pull it by.
"""

from __future__ import annotations

import hashlib
import re

from clusterous_operator.images import CLUSTER_REGISTRY

NAMESPACE = "clusterous-system"
BUILDKIT_VERSION = "v0.18.2"
BUILDKIT_IMAGE = f"moby/buildkit:{BUILDKIT_VERSION}-rootless"
CONTEXT_CLAIM = "clusterous-shared"
SHARED_STORAGE_CLASS = "clusterous-shared"
CONTEXT_ROOT = ".clusterous/builds"  # on the shared volume, relative to its root
BUILD_LABEL = "clusterous.io/build"
PART_OF = {"app.kubernetes.io/part-of": "clusterous-k8s"}
CONTAINER = "buildkit"
DEADLINE_SECONDS = 3600
KEEP_FINISHED_SECONDS = 3600


def context_dir(name: str) -> str:
    """Where the build context of image `name` lives on the shared volume."""
    return f"{CONTEXT_ROOT}/{name}"


def job_name(name: str, tag: str) -> str:
    """A DNS label unique per image and tag: readable start, a digest for the rest."""
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{tag}".lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(f"{name}:{tag}".encode()).hexdigest()[:8]
    return f"build-{slug}-{digest}"


def build_context_claim() -> dict:
    """The claim that mounts the shared volume's root in clusterous-system (the class maps every
    claim to the root; the files stay when the claim goes)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CONTEXT_CLAIM, "namespace": NAMESPACE, "labels": dict(PART_OF)},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": SHARED_STORAGE_CLASS,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def build_job(name: str, tag: str, registry: str = CLUSTER_REGISTRY) -> dict:
    """The Job: one pod, never retried (a failed build is shown, not repeated), cleaned up later."""
    destination = f"{registry}/{name}:{tag}"
    labels = {**PART_OF, BUILD_LABEL: job_name(name, tag)}
    container = {
        "name": CONTAINER,
        "image": BUILDKIT_IMAGE,
        "command": ["buildctl-daemonless.sh"],
        "args": [
            "build",
            "--progress=plain",
            "--frontend=dockerfile.v0",
            "--local=context=/workspace",
            "--local=dockerfile=/workspace",
            f"--output=type=image,name={destination},push=true,registry.insecure=true",
        ],
        "env": [{"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"}],
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": True,  # newuidmap/newgidmap are setuid in the image
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
        },
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
        "volumeMounts": [
            {"name": "context", "mountPath": "/workspace", "subPath": context_dir(name), "readOnly": True},
            {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name, tag), "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": KEEP_FINISHED_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "context",
                            "persistentVolumeClaim": {"claimName": CONTEXT_CLAIM, "readOnly": True},
                        },
                        {"name": "buildkitd", "emptyDir": {}},
                    ],
                },
            },
        },
    }
