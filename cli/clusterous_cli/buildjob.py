"""The BuildKit Job that builds an image on the cluster: pure builders, no I/O.

Why this shape: no Docker daemon exists on the nodes (k3s runs containerd), and a privileged
builder would be root on a node. BuildKit's rootless image runs `buildctl-daemonless.sh`, which
starts a user-namespaced buildkitd for one build and stops with it. The pod settings are those
of BuildKit's own examples/kubernetes/job.rootless.yaml (docs/rootless.md): uid 1000, seccomp
and AppArmor `Unconfined` (rootlesskit creates user namespaces and mounts), and
`--oci-worker-no-process-sandbox` (no PID namespace of its own, so no privileges), no
`privileged`. The context is this build's own folder of the shared volume (uploaded with a
delta transfer first), mounted read-only through a claim of the `clusterous-shared` class in
clusterous-system. The image is pushed to the cluster registry by the name pods pull it by,
with the context's digest as a label (what decides a later skip), and a registry cache
(`<name>:buildcache`, mode=max) is exported and imported so an unchanged rebuild reuses every
layer. buildkitd reads a `buildkitd.toml` (a ConfigMap) that marks the cluster registry's names
plain HTTP: BuildKit uses HTTP only for localhost otherwise, and `registry.insecure=true` on the
output covers the push alone, not `FROM registry:5000/base` or the cache import.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from clusterous_cli.registry import PUSH_AUTH_SECRET
from clusterous_core.names import NAMESPACE
from clusterous_operator.images import CLUSTER_REGISTRY, LEGACY_REGISTRY

BUILDKIT_VERSION = "v0.32.2"
# Docker Hub's image index of the tag (every platform), so a node never runs a re-pushed tag.
BUILDKIT_DIGEST = "sha256:504731e577c20559c00f968f33219f30115e70be29ab96728d1d06e963fc494b"
BUILDKIT_IMAGE = f"moby/buildkit:{BUILDKIT_VERSION}-rootless@{BUILDKIT_DIGEST}"
CONTEXT_CLAIM = "clusterous-shared"
SHARED_STORAGE_CLASS = "clusterous-shared"
CONTEXT_ROOT = ".clusterous/builds"  # on the shared volume, relative to its root
BUILD_LABEL = "clusterous.io/build"
PART_OF = {"app.kubernetes.io/part-of": "clusterous-k8s"}
CONTAINER = "buildkit"
DEADLINE_SECONDS = 3600
KEEP_FINISHED_SECONDS = 3600
CONTEXT_DIGEST_LABEL = "io.clusterous.context-digest"  # on the image config: what the skip compares
CACHE_TAG = "buildcache"  # <name>:buildcache holds the registry cache; `images` hides it
BUILDKITD_CONFIG = "buildkitd-config"  # the ConfigMap holding buildkitd.toml
BUILDKITD_CONFIG_DIR = "/etc/clusterous-buildkit"
# Builds push here (htpasswd; registry:5000 serves pulls only): see manifests/registry.yaml.
PUSH_REGISTRY = "registry-push.clusterous-system.svc:5002"
DOCKER_CONFIG_DIR = "/home/user/.docker"


@dataclass(frozen=True)
class Resources:
    """What a build may use. The memory limit turns a runaway build into OOMKilled instead of
    starving the node's apps; the ephemeral-storage request makes the scheduler place the build
    where its layers fit (and the kubelet evict it, not app pods, when it grows past it); the
    emptyDir holding BuildKit's state is capped at the same size."""

    memory: str = "4Gi"
    disk: str = "20Gi"
    cpu: str = "500m"
    memory_request: str = "512Mi"


def context_dir(name: str, tag: str) -> str:
    """This build's own context folder on the shared volume: one flat folder per name and tag
    (named like its Job), so `team` and `team/web`, or two tags of one name, never share files."""
    return f"{CONTEXT_ROOT}/{job_name(name, tag)}"


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


def buildkitd_toml(registry_endpoint: str | None = None) -> str:
    """buildkitd.toml: every name of the cluster registry is plain HTTP (docs/buildkitd.toml.md:
    `[registry."host:port"] http = true`) — its Service name, Clusterous' `registry:5000` (which
    the pod's DNS search path resolves to the same Service in clusterous-system), the push
    endpoint, the controller's endpoint that nodes use and its Docker Hub mirror."""
    names = [CLUSTER_REGISTRY, LEGACY_REGISTRY, PUSH_REGISTRY]
    mirror = ""
    if registry_endpoint:
        from clusterous_provisioner.addons import registry_mirror_endpoint

        # Docker Hub base images through the controller's pull-through cache; BuildKit tries a
        # registry's mirrors in order, then the registry itself.
        mirror_endpoint = registry_mirror_endpoint(registry_endpoint.rpartition(":")[0])
        names += [registry_endpoint, mirror_endpoint]
        mirror = f'[registry."docker.io"]\n  mirrors = ["{mirror_endpoint}"]\n\n'
    return mirror + "".join(f'[registry."{name}"]\n  http = true\n\n' for name in dict.fromkeys(names))


def buildkitd_config_map(registry_endpoint: str | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": BUILDKITD_CONFIG, "namespace": NAMESPACE, "labels": dict(PART_OF)},
        "data": {"buildkitd.toml": buildkitd_toml(registry_endpoint)},
    }


def buildctl_args(name: str, tag: str, context_digest: str, registry: str = CLUSTER_REGISTRY) -> list[str]:
    """`buildctl build` for one image: Dockerfile frontend on the mounted context, the context
    digest as a label, push through the push endpoint (same storage: pods pull it from
    `registry` by the same repository name), registry cache exported there and imported from the
    read-only endpoint (mode=max keeps the layers of every stage, so a multi-stage rebuild is
    cached too)."""
    cache = f"ref={{}}/{name}:{CACHE_TAG}"
    return [
        "build",
        "--progress=plain",
        "--frontend=dockerfile.v0",
        "--local=context=/workspace",
        "--local=dockerfile=/workspace",
        f"--opt=label:{CONTEXT_DIGEST_LABEL}={context_digest}",
        f"--output=type=image,name={PUSH_REGISTRY}/{name}:{tag},push=true,registry.insecure=true",
        f"--export-cache=type=registry,{cache.format(PUSH_REGISTRY)},mode=max,registry.insecure=true",
        f"--import-cache=type=registry,{cache.format(registry)},registry.insecure=true",
    ]


def build_job(
    name: str,
    tag: str,
    context_digest: str = "sha256:" + "0" * 64,
    resources: Resources = Resources(),
    registry: str = CLUSTER_REGISTRY,
) -> dict:
    """The Job: one pod, never retried (a failed build is shown, not repeated), cleaned up later."""
    labels = {**PART_OF, BUILD_LABEL: job_name(name, tag)}
    container = {
        "name": CONTAINER,
        "image": BUILDKIT_IMAGE,
        "command": ["buildctl-daemonless.sh"],
        "args": buildctl_args(name, tag, context_digest, registry),
        "env": [
            {
                "name": "BUILDKITD_FLAGS",
                "value": f"--oci-worker-no-process-sandbox --config={BUILDKITD_CONFIG_DIR}/buildkitd.toml",
            },
            {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR},  # buildctl's registry credentials
        ],
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": True,  # newuidmap/newgidmap are setuid in the image
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
        },
        "resources": {
            "requests": {
                "cpu": resources.cpu,
                "memory": resources.memory_request,
                "ephemeral-storage": resources.disk,
            },
            "limits": {"memory": resources.memory},
        },
        "volumeMounts": [
            {
                "name": "context",
                "mountPath": "/workspace",
                "subPath": context_dir(name, tag),
                "readOnly": True,
            },
            {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"},
            {"name": "config", "mountPath": BUILDKITD_CONFIG_DIR, "readOnly": True},
            {"name": "push-auth", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True},
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
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "context",
                            "persistentVolumeClaim": {"claimName": CONTEXT_CLAIM, "readOnly": True},
                        },
                        {"name": "buildkitd", "emptyDir": {"sizeLimit": resources.disk}},
                        {"name": "config", "configMap": {"name": BUILDKITD_CONFIG}},
                        {
                            "name": "push-auth",
                            "secret": {
                                "secretName": PUSH_AUTH_SECRET,
                                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                            },
                        },
                    ],
                },
            },
        },
    }
