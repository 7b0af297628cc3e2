"""The operator's code bundle under the names the operator's manifest, `render` and the tests use.

Everything is code_bundle.OPERATOR (code_bundle.py says how code reaches the cluster); this
module only names it: the operator's image, module and ConfigMap.
"""

from __future__ import annotations

from clusterous_provisioner.code_bundle import OPERATOR, PYTHON_IMAGE

OPERATOR_IMAGE = PYTHON_IMAGE  # operator/Dockerfile builds FROM the same reference
OPERATOR_MODULE = OPERATOR.argv[-1]  # the module with the kopf handlers
LOCK_FILE = OPERATOR.lock_file
DIRECT = OPERATOR.direct
PROVIDES = dict(OPERATOR.provides)
PACKAGES = OPERATOR.packages
CONFIGMAP = OPERATOR.configmap
ZIP_NAME = OPERATOR.zip_name
START_SCRIPT = "start.sh"

lock_text = OPERATOR.lock_text
read_lock = OPERATOR.read_lock
lock_hash = OPERATOR.lock_hash
operator_zip = OPERATOR.zip
start_script = OPERATOR.script
code_hash = OPERATOR.code_hash
code_configmap = OPERATOR.configmap_body
code_configmap_yaml = OPERATOR.configmap_yaml
apply_code = OPERATOR.apply
REQUIREMENTS = OPERATOR.requirements()
