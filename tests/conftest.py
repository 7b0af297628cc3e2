"""Fixtures of the test harness live in tests/harness/; each module is a pytest plugin."""

pytest_plugins = [
    "tests.harness.aws",
    "tests.harness.sshd",
    "tests.harness.k8s",
    "tests.harness.tools",
    "tests.harness.cli",
]
