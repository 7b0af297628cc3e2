"""The cluster add-ons k3s would have applied at boot, for tests that start from a ready cluster.

Tests that run `up` get them from the controller's user-data (FakeK3s in test_up_ready); tests
that start later (the operator, `run`) apply the pieces they rely on from the same manifests.
"""

from __future__ import annotations

import yaml

from clusterous_provisioner import addons

CONTROLLER_IP = "10.0.0.10"


def apply_storage_classes(api) -> None:
    """The StorageClasses of manifests/storage-classes.yaml: ClusterApp claims bind through them."""
    parent, _, name = addons.SHARED_DIR.rpartition("/")
    values = {"controller_ip": CONTROLLER_IP, "shared_dir": addons.SHARED_DIR}
    values.update(shared_parent=parent, shared_name=name)
    text = addons.fill(addons.template("storage-classes.yaml"), values, "storage-classes.yaml")
    for doc in yaml.safe_load_all(text):
        if doc:
            api.create("storage.k8s.io/v1/storageclasses", doc)
