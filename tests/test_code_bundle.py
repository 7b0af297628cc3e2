"""The autoscaler's code in the cluster (issue 17 item 1): code_bundle.AUTOSCALER.

The zip holds the first-party import closure of `clusterous_provisioner.autoscaler` (and the
scripts its grow renders into user-data); its lock, provisioner/clusterous_provisioner/
autoscaler-requirements.txt, pins the closure of what that code imports with sha256 hashes.
These tests check the lock is closed, hashed, agrees with the operator's lock and with what
the tests import; that the zip plus the lock's distributions (and nothing else) run a real
autoscaler round (tests/test_autoscaler_deploy.py); and that the ConfigMap fits in 1 MiB.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import zipfile
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name

from clusterous_provisioner import addons, code_bundle
from clusterous_provisioner.code_bundle import AUTOSCALER, OPERATOR
from tests.addons_support import run_start_script
from tests.lock_support import assert_hashed_and_closed, locked_versions

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "provisioner" / "clusterous_provisioner" / AUTOSCALER.lock_file


def lock(bundle=AUTOSCALER) -> dict[str, str]:
    return locked_versions(bundle)


def test_the_lock_pins_the_closure_of_what_the_code_imports_with_hashes():
    entries = AUTOSCALER.read_lock()
    assert set(AUTOSCALER.direct) <= set(lock())
    assert_hashed_and_closed(AUTOSCALER)
    # what both pods install is the same version with the same wheels
    shared = set(lock()) & set(lock(OPERATOR))
    assert {"kubernetes", "pydantic", "pyyaml", "urllib3"} <= shared
    ours = {canonicalize_name(n): e for n, e in entries.items()}
    theirs = {canonicalize_name(n): e for n, e in OPERATOR.read_lock().items()}
    assert {n: ours[n] for n in shared} == {n: theirs[n] for n in shared}
    # and the tests import what the pod runs
    installed = {name: importlib.metadata.version(name) for name in lock()}
    assert installed == lock()
    assert "pip download --only-binary=:all:" in LOCK.read_text()  # how to regenerate it


def test_the_zip_holds_the_autoscalers_import_closure_and_the_lock_covers_its_imports():
    names = [name for name, _ in AUTOSCALER.files()]
    for module in ("autoscaler", "autoscale", "scaling", "drain", "inventory", "bootstrap"):
        assert f"clusterous_provisioner/{module}.py" in names
    assert "clusterous_provisioner/scripts/node.sh" in names  # grow renders the node's user-data
    assert "clusterous_core/errors.py" in names and "clusterous_operator/spec.py" in names
    # only the closure: not the CLI, the operator's kopf handlers, `up`'s lifecycle or the charts
    assert not [n for n in names if n.startswith("clusterous_cli/")]
    for absent in ("clusterous_operator/handlers.py", "clusterous_provisioner/lifecycle.py"):
        assert absent not in names
    assert not [n for n in names if "/charts/" in n or "/manifests/" in n or "__pycache__" in n]
    third_party = code_bundle.third_party_imports(AUTOSCALER.files())
    provided = {module for _, module in AUTOSCALER.provides}
    assert third_party == provided, f"imported but not locked: {third_party - provided}"
    assert {canonicalize_name(d) for d in AUTOSCALER.direct} <= set(lock())


def test_the_code_configmap_is_deterministic_and_fits_in_a_configmap():
    archive = AUTOSCALER.zip()
    code_bundle._zip.cache_clear()
    assert AUTOSCALER.zip() == archive  # the same code gives the same bytes and hash
    for bundle in (AUTOSCALER, OPERATOR):
        rendered = bundle.configmap_yaml().encode()
        assert len(rendered) < code_bundle.CONFIGMAP_LIMIT, (bundle.configmap, len(rendered))
    (configmap,) = yaml.safe_load_all(addons.render(_values())[addons.AUTOSCALER_CODE_FILE])
    assert base64.b64decode(configmap["binaryData"][AUTOSCALER.zip_name]) == archive
    assert configmap["data"][code_bundle.LOCK_KEY] == LOCK.read_text()
    assert (
        configmap["data"][code_bundle.ARGS_KEY] == "-m\nclusterous_provisioner.autoscaler\n--interval\n30\n"
    )
    assert configmap["data"][code_bundle.START_SCRIPT] == AUTOSCALER.script()
    docs = [d for d in yaml.safe_load_all(addons.render(_values())[addons.AUTOSCALER_FILE]) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"][code_bundle.HASH_ANNOTATION] == AUTOSCALER.code_hash()
    assert configmap["metadata"]["annotations"][code_bundle.HASH_ANNOTATION] == AUTOSCALER.code_hash()
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["code"]["configMap"]["name"] == configmap["metadata"]["name"] == AUTOSCALER.configmap
    assert template["spec"]["containers"][0]["image"] == code_bundle.PYTHON_IMAGE
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in opened.infolist())


def test_the_autoscaler_is_applied_later_never_in_the_user_data():
    """The controller's user-data is near EC2's 16 KiB: the autoscaler goes through the API."""
    assert {addons.AUTOSCALER_FILE, addons.AUTOSCALER_CODE_FILE} <= set(addons.APPLIED_LATER)
    assert addons.AUTOSCALER_FILE not in addons.TEMPLATES


def _values() -> dict[str, str]:
    from tests.test_bootstrap import make_inputs

    return addons.values_for(make_inputs())


def start(tmp_path: Path, lock_text: str) -> list[str]:
    return run_start_script(tmp_path, AUTOSCALER, lock_text)


def test_the_pod_installs_its_lock_with_hashes_once_per_lock_hash_then_runs_the_zip(tmp_path):
    text = AUTOSCALER.lock_text()
    start(tmp_path, text)
    lines = start(tmp_path, text)  # a restart: the cache on the host is used
    installs = [line for line in lines if " pip install " in line]
    assert len(installs) == 1
    assert all(flag in installs[0] for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"))
    assert f"-r {tmp_path}/code/{code_bundle.LOCK_KEY}" in installs[0]
    site = tmp_path / "site" / f"site-{AUTOSCALER.lock_hash()}"
    assert (site / ".complete").exists()
    assert AUTOSCALER.lock_hash() == hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    runs = [line for line in lines if "clusterous_provisioner.autoscaler" in line]
    assert len(runs) == 2
    assert runs[0].startswith("python -m clusterous_provisioner.autoscaler --interval 30 ")
    assert runs[0].endswith(f"PYTHONPATH={site}:{tmp_path}/code/{AUTOSCALER.zip_name}")
    lines = start(tmp_path, text + "# a new version\n")  # a new lock: installed anew
    assert len([line for line in lines if " pip install " in line]) == 2
