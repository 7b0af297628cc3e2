"""The AWS clients one cluster operation uses, made once, all in the cluster's region."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Clients:
    region: str
    _session: object = None
    _made: dict = field(default_factory=dict)

    def _client(self, service: str):
        from clusterous_provisioner import aws

        if self._session is None:
            self._session = aws.session(self.region)
        if service not in self._made:
            self._made[service] = aws.client(service, self.region, self._session)
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
    import boto3

    try:
        return boto3.session.Session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - a broken AWS config means: no usable credentials
        return False
