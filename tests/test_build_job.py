"""Image builds: the BuildKit Job manifest (schema-validated), the build context, and bad input.

No BuildKit or container runtime can run on the test machines, so a real build is not
exercised end to end. What is, here: the Job, claim and buildkitd.toml ConfigMap against the
Kubernetes schemas, their security and wiring (BuildKit's rootless example settings, the
buildkitd.toml parsed as TOML, the buildctl arguments, the resources), the context as it is
sent (`.dockerignore` by Docker's rules, the digest, the size limit), pinning a run's images to
digests, bad build input, and that an unreachable registry (looked up in cluster-info, reached
through the SSH connection) fails the build before anything is created.
The registry's skip-if-present answer, `images` and the build flow around the Job run against a
real registry in test_registry.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest

from clusterous_cli import buildcontext, buildjob, builds, registry, tunnels
from clusterous_core.errors import BadInput
from clusterous_operator.images import CLUSTER_REGISTRY, LEGACY_REGISTRY
from tests.harness.tools import validate_k8s
from tests.ssh_support import controller, make_controller, write_k3s_yaml  # noqa: F401


def test_job_claim_and_buildkitd_config_are_valid_kubernetes_objects() -> None:
    objects = [
        buildjob.build_job("basic-python", "latest"),
        buildjob.build_context_claim(),
        buildjob.buildkitd_config_map("10.0.1.10:5000"),
    ]
    assert validate_k8s(objects) == 3


def test_job_runs_rootless_buildkit_as_its_kubernetes_example_does() -> None:
    """BuildKit's examples/kubernetes/job.rootless.yaml: uid 1000, seccomp and AppArmor
    Unconfined, --oci-worker-no-process-sandbox, the state dir an emptyDir; never privileged."""
    job = buildjob.build_job("lab/sim", "1.2")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["namespace"] == "clusterous-system"
    assert re.fullmatch(r"moby/buildkit:v\d+\.\d+\.\d+-rootless@sha256:[0-9a-f]{64}", container["image"])
    assert container["command"] == ["buildctl-daemonless.sh"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 1000 and "privileged" not in security
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert security["appArmorProfile"] == {"type": "Unconfined"}
    (flags,) = [e["value"] for e in container["env"] if e["name"] == "BUILDKITD_FLAGS"]
    assert "--oci-worker-no-process-sandbox" in flags.split()
    state = next(m for m in container["volumeMounts"] if m["mountPath"] == "/home/user/.local/share/buildkit")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == state["name"])
    context = next(m for m in container["volumeMounts"] if m["mountPath"] == "/workspace")
    assert context["subPath"] == buildjob.context_dir("lab/sim", "1.2") and context["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == context["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == buildjob.build_context_claim()["metadata"]["name"]
    assert buildjob.build_context_claim()["spec"]["storageClassName"] == "clusterous-shared"
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"


def test_buildkitd_reads_a_config_that_makes_every_name_of_the_cluster_registry_plain_http() -> None:
    """BuildKit speaks plain HTTP only to localhost unless buildkitd.toml says `http = true` for
    the host (docs/buildkitd.toml.md); `registry.insecure` on the output covers the push alone."""
    job = buildjob.build_job("sim", "1")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (flags,) = [e["value"] for e in container["env"] if e["name"] == "BUILDKITD_FLAGS"]
    (config_flag,) = [f for f in flags.split() if f.startswith("--config=")]
    path = PurePosixPath(config_flag.removeprefix("--config="))
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config_map = buildjob.buildkitd_config_map("10.0.1.10:5000")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    parsed = tomllib.loads(config_map["data"][path.name])
    # Docker Hub base images come through the controller's pull-through cache (registry-mirror).
    assert parsed["registry"].pop("docker.io") == {"mirrors": ["10.0.1.10:5004"]}
    assert set(parsed["registry"]) == {
        CLUSTER_REGISTRY,
        LEGACY_REGISTRY,
        buildjob.PUSH_REGISTRY,
        "10.0.1.10:5000",
        "10.0.1.10:5004",
    }
    assert all(entry == {"http": True} for entry in parsed["registry"].values())


def test_buildctl_labels_the_context_digest_pushes_by_the_pull_name_and_uses_a_registry_cache() -> None:
    digest = "sha256:" + "ab" * 32
    args = buildjob.buildctl_args("lab/sim", "1.2", digest)
    assert args[0] == "build" and "--frontend=dockerfile.v0" in args
    assert f"--opt=label:{buildjob.CONTEXT_DIGEST_LABEL}={digest}" in args
    (output,) = [a for a in args if a.startswith("--output=")]
    # pushed through the push endpoint: same storage, so pods pull it by the same repository name
    assert output.split("=", 1)[1].split(",")[:3] == [
        "type=image",
        f"name={buildjob.PUSH_REGISTRY}/lab/sim:1.2",
        "push=true",
    ]
    (export,) = [a for a in args if a.startswith("--export-cache=")]
    (imported,) = [a for a in args if a.startswith("--import-cache=")]
    assert export.startswith(f"--export-cache=type=registry,ref={buildjob.PUSH_REGISTRY}/lab/sim:buildcache,")
    assert "mode=max" in export.split(",")
    assert imported.startswith(f"--import-cache=type=registry,ref={CLUSTER_REGISTRY}/lab/sim:buildcache")


def test_only_the_build_job_mounts_the_push_credential_as_buildctls_docker_config() -> None:
    """buildctl reads registry credentials from $DOCKER_CONFIG/config.json (BuildKit's
    examples/kubernetes: "create ~/.docker/config.json secret and set $DOCKER_CONFIG")."""
    pod = buildjob.build_job("sim", "1")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["DOCKER_CONFIG"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == registry.PUSH_AUTH_SECRET and mount["readOnly"]
    assert volume["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert pod["automountServiceAccountToken"] is False


def test_build_resources_cap_memory_and_disk_so_neither_the_build_nor_apps_are_evicted() -> None:
    resources = buildjob.Resources(memory="6Gi", disk="30Gi")
    pod = buildjob.build_job("sim", "1", resources=resources)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["memory"] == "6Gi"
    assert container["resources"]["requests"]["ephemeral-storage"] == "30Gi"
    state = next(v for v in pod["volumes"] if "emptyDir" in v)
    assert state["emptyDir"]["sizeLimit"] == "30Gi"


def test_job_names_and_context_folders_are_distinct_per_name_and_tag_and_never_nested() -> None:
    pairs = [("Lab/My_Image" * 5, t) for t in ("1", "2", "latest")] + [("team", "1"), ("team/web", "1")]
    names = {buildjob.job_name(n.lower(), tag) for n, tag in pairs}
    assert len(names) == len(pairs)
    assert all(len(n) <= 63 and n.replace("-", "").isalnum() and n == n.lower() for n in names)
    folders = [buildjob.context_dir(n.lower(), tag) for n, tag in pairs]
    assert len(set(folders)) == len(folders)
    assert not [(a, b) for a in folders for b in folders if a != b and b.startswith(a + "/")]


# -- the context: .dockerignore, digest, size -------------------------------------------------

IGNORE_CASES = [
    # (patterns, path, ignored) — Docker's rules (moby/patternmatcher)
    (["*.pyc"], "a.pyc", True),
    (["*.pyc"], "sub/a.pyc", False),  # `*` does not cross `/`, patterns anchor at the root
    (["**/*.pyc"], "sub/deep/a.pyc", True),
    (["**/*.pyc"], "a.pyc", True),  # `**/` matches no folder too
    ([".git"], ".git/config", True),  # a matched folder takes everything below it
    (["/secrets"], "secrets/key", True),  # a leading slash is dropped
    (["secrets/"], "secrets/key", True),
    (["data", "!data/keep.txt"], "data/keep.txt", False),
    (["data", "!data/keep.txt"], "data/other.txt", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),  # the last match wins
    (["*.md", "!README*.md"], "README.md", False),
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),
    (["[ab].txt"], "b.txt", True),
    (["# a comment", "", "  venv  "], "venv/bin/python", True),
    (["docs/**"], "docs/x/y.md", True),
    (["docs/**"], "docsy.md", False),
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
]


@pytest.mark.parametrize("patterns, path, expected", IGNORE_CASES)
def test_dockerignore_follows_dockers_pattern_rules(patterns, path, expected) -> None:
    assert buildcontext.ignored(buildcontext.parse_ignore("\n".join(patterns)), path) is expected


def test_dockerignore_agrees_with_the_docker_sdks_matcher_where_it_is_installed() -> None:
    """The docker SDK's PatternMatcher is a port of the same Go code; where it is installed,
    every case above must agree with it (a second, independent reading of Docker's rules) —
    except `\\` escapes, which its Python fnmatch cannot express and Go's matcher honours."""
    build = pytest.importorskip("docker.utils.build")
    for patterns, path, expected in [c for c in IGNORE_CASES if not any("\\" in p for p in c[0])]:
        theirs = build.PatternMatcher([p.strip() for p in patterns if p.strip() and not p.startswith("#")])
        assert bool(theirs.matches(path)) is expected, (patterns, path)


def make_context(root, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_context_leaves_out_what_dockerignore_names_and_its_digest_follows_what_is_sent(tmp_path) -> None:
    root = make_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM python:3.12-slim\nCOPY . .\n",
            ".dockerignore": ".git\n**/*.pyc\nvenv\nsecret.env\nDockerfile\n",
            "app.py": "print(1)\n",
            "pkg/mod.py": "x = 1\n",
            "pkg/mod.pyc": "junk",
            ".git/config": "[core]\n",
            "venv/bin/python": "elf",
            "secret.env": "TOKEN=1\n",
        },
    )
    first = buildcontext.load(root)
    # the Dockerfile and .dockerignore are always sent, even when listed (Docker does the same)
    assert first.files == (".dockerignore", "Dockerfile", "app.py", "pkg/mod.py")
    assert first.size == sum((root / f).stat().st_size for f in first.files)
    (root / "secret.env").write_text("TOKEN=2\n")  # ignored: same context
    (root / "venv" / "lib.so").write_text("more")
    assert buildcontext.load(root).digest == first.digest
    (root / "app.py").write_text("print(2)\n")
    assert buildcontext.load(root).digest != first.digest
    (root / "app.py").write_text("print(1)\n")
    assert buildcontext.load(root).digest == first.digest  # content, not mtimes
    (root / "app.py").chmod(0o755)
    assert buildcontext.load(root).digest != first.digest  # the executable bit reaches the image


def test_a_context_over_the_size_limit_is_bad_input_naming_it(tmp_path) -> None:
    root = make_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n", "big.bin": "x" * 3_000_000})
    with pytest.raises(BadInput) as raised:
        buildcontext.load(root, max_bytes=2 * 1024 * 1024)
    assert "2 MiB" in str(raised.value) and str(root) in str(raised.value)
    (root / ".dockerignore").write_text("*.bin\n")
    assert buildcontext.load(root, max_bytes=2 * 1024 * 1024).files == (".dockerignore", "Dockerfile")


# -- pinning what a run deploys ---------------------------------------------------------------


def test_components_that_run_a_built_image_are_pinned_to_its_digest() -> None:
    digest = "sha256:" + "cd" * 32
    built = [
        builds.Built("basic-python", "latest", digest, True),
        builds.Built("lab/sim", "2", digest, False),
    ]
    images = [
        "registry:5000/basic-python",
        "registry:5000/basic-python:latest",
        f"{CLUSTER_REGISTRY}/lab/sim:2",
        "registry:5000/lab/sim:3",  # another tag: not built here
        "basic-python",  # a short name is Docker Hub's
        "docker.io/library/basic-python",
    ]
    app = {
        "metadata": {"name": "demo"},
        "spec": {"components": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]},
    }
    pinned = [c["image"] for c in builds.pin_built_images(app, built)["spec"]["components"]]
    assert pinned == [
        f"registry:5000/basic-python@{digest}",
        f"registry:5000/basic-python@{digest}",
        f"registry:5000/lab/sim@{digest}",
        "registry:5000/lab/sim:3",
        "basic-python",
        "docker.io/library/basic-python",
    ]


@pytest.mark.parametrize(
    "make, argv_tail, expected",
    [
        (lambda d: None, ["nope", "x"], "an existing folder"),
        (lambda d: (d / "ctx").mkdir(), ["ctx", "x"], "holding a Dockerfile"),
        (
            lambda d: ((d / "ctx").mkdir(), (d / "ctx" / "Dockerfile").write_text("FROM scratch\n")),
            ["ctx", "Bad Name"],
            "image name",
        ),
        (
            lambda d: make_context(d / "ctx", {"Dockerfile": "FROM scratch\n", "big": "x" * 2_000_000}),
            ["ctx", "x", "--max-context", "1"],
            "at most 1 MiB",
        ),
        (
            lambda d: make_context(d / "ctx", {"Dockerfile": "FROM scratch\n"}),
            ["ctx", "x", "--memory", "lots"],
            "--memory",
        ),
    ],
)
def test_bad_build_input_is_exit_2(tmp_path, cli, make, argv_tail, expected) -> None:
    """Checked before any cluster is looked up: no cluster exists here at all."""
    make(tmp_path)
    directory, name, *options = argv_tail
    result = cli(["build-image", str(tmp_path / directory), name, *options])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_an_unreachable_registry_fails_the_build_before_anything_is_created(
    sshd, k8s_api, cli, tmp_path
) -> None:
    k3s_yaml = write_k3s_yaml(sshd.workdir / "k3s.yaml")
    made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml))
    closed = tunnels.free_port()  # nothing listens here: the registry is down
    k8s_api.create("v1/namespaces", {"metadata": {"name": "clusterous-system"}})
    k8s_api.create(
        "v1/configmaps",
        {"metadata": {"name": "cluster-info"}, "data": {"registryEndpoint": f"127.0.0.1:{closed}"}},
        namespace="clusterous-system",
    )
    context = tmp_path / "image"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM python:3.12-slim\n")
    try:
        result = cli(["build-image", str(context), "sim:1"])
    finally:
        tunnels.stop_supervisor(made.ref)
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{closed}" in result.stderr and "/v2/sim/manifests/1" in result.stderr
    assert k8s_api.list("batch/v1/jobs", namespace="clusterous-system") == []
    assert list(made.shared.iterdir()) == []  # the context was not uploaded either


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_a_context_upload_is_exact_with_either_transfer_method(controller, tmp_path, method) -> None:  # noqa: F811
    """transfer.put(only=..., delete=True) over the harness sshd: the destination ends up holding
    exactly the context's files — ignored ones never sent, deleted ones removed (also in folders
    that become empty), a name with rsync wildcard characters sent literally."""
    from clusterous_cli import ssh, transfer

    root = make_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM scratch\n",
            ".dockerignore": "secret.env\n.git\n",
            "app/main.py": "print(1)\n",
            "app/[weird]*?.txt": "literal\n",
            "old/gone.txt": "bye\n",
            "secret.env": "TOKEN=1\n",
            ".git/config": "[core]\n",
        },
    )
    remote = buildjob.context_dir("sim", "1")
    target = controller.shared / remote

    def upload():
        ctx = buildcontext.load(root)
        with ssh.connect_cluster(controller.ref) as conn:
            return ctx, transfer.put(conn, root, remote, method=method, only=list(ctx.files), delete=True)

    def on_volume():
        return sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())

    ctx, first = upload()
    assert on_volume() == list(ctx.files) and "secret.env" not in ctx.files
    assert (target / "app/[weird]*?.txt").read_text() == "literal\n"
    (target / "stray.txt").write_text("left by someone\n")  # not in the context: must go
    (root / "old" / "gone.txt").unlink()
    (root / "old").rmdir()
    ctx, second = upload()
    assert on_volume() == list(ctx.files)
    assert not (target / "old").exists()
    assert "stray.txt" in second.deleted and any(d.startswith("old") for d in second.deleted)
    assert second.transferred == []  # nothing changed that exists on both sides
