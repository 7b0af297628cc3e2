"""The AWS clients one cluster operation uses, made once, all in the cluster's region.

Every client gets botocore's adaptive retries (throttling, 5xx, lost connections: `aws.client`)
and the command's `Patience` (retries.py): calls that meet AWS's eventual consistency — an id
created moments ago not yet known, a new instance profile not yet propagated, a dependency still
draining at teardown — are retried, bounded, by that one mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clusterous_provisioner.retries import Patience


@dataclass
class Clients:
    region: str
    _session: object = None
    _made: dict = field(default_factory=dict)
    patience: Patience = field(default_factory=Patience)

    @property
    def session(self):
        from clusterous_provisioner import aws

        if self._session is None:
            self._session = aws.session(self.region)
        return self._session

    def _client(self, service: str):
        from clusterous_provisioner import aws

        if service not in self._made:
            made = aws.client(service, self.region, self.session)
            self.patience.register(made)
            self._made[service] = made
        return self._made[service]

    @property
    def ec2(self):
        return self._client("ec2")

    @property
    def iam(self):
        return self._client("iam")

    @property
    def ssm(self):
        return self._client("ssm")

    @property
    def s3(self):
        return self._client("s3")

    @property
    def sts(self):
        return self._client("sts")

    @property
    def tagging(self):
        return self._client("resourcegroupstaggingapi")


def have_credentials() -> bool:
    """True if boto3's chain finds credentials; dry runs without them plan offline."""
    from clusterous_provisioner import aws

    try:
        return aws.session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - a broken AWS config means: no usable credentials
        return False
