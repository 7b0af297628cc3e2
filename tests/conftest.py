"""Fixtures of the test harness live in tests/harness/; each module is a pytest plugin.

tools comes first: the other harness modules import it, and pytest can only rewrite the
asserts of a plugin it imports itself.
"""

pytest_plugins = [
    "tests.harness.tools",
    "tests.harness.cli",
    "tests.harness.aws",
    "tests.harness.sshd",
    "tests.harness.k8s",
]
