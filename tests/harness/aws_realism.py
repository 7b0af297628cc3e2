"""The AWS realism layer: an HTTP proxy in front of the moto server adding what AWS documents and
moto lacks. Every behaviour is off until a test switches it on, and with all of them off the proxy
only forwards, so the whole suite goes through it.

    proxy = RealismProxy(moto_url).start()      # the `aws` fixture does this once per session
    proxy.url                                   # what AWS_ENDPOINT_URL points at
    realism = proxy.realism                     # aws.realism in tests; reset() per test

Behaviours (each counted per call the proxy sees, retries included, or timed in seconds):

    eventual_consistency(calls=1, seconds=None)   a call naming an id created by an EC2 call
                                                  since answers <Kind>.NotFound
    iam_propagation(calls=1, seconds=None)        RunInstances naming a new instance profile
                                                  answers InvalidParameterValue
    throttle(op, times=1)                         the service's throttling error (EC2:
                                                  RequestLimitExceeded, 503), nothing forwarded
    unavailable(op, times=1, status=503)          a 503 / 500 server error, nothing forwarded
    lose_response(op, times=1, how="reset")       applied by moto, then the connection is reset
                                                  (or how="500": InternalError); switches on
                                                  idempotent_client_tokens()
    idempotent_client_tokens()                    a repeated EC2 ClientToken returns the first
                                                  result (IdempotentParameterMismatch if the
                                                  parameters differ) and creates nothing
    crash_after(op, times=1)                      applied by moto, then the client process dies:
                                                  the reply carries CRASH_HEADER, on which the
                                                  faults plugin raises SimulatedCrash
    linger_dependencies(calls=None, seconds=None) after TerminateInstances / DeleteNatGateway,
                                                  deleting what they used is refused for a while;
                                                  switches on refuse_dependent_deletes()
    refuse_dependent_deletes()                    deletes AWS refuses and moto allows (a subnet
                                                  with instances, a group in use, ...) refused
    pending(instance_calls=..., nat_seconds=...)  instances / NAT gateways stay pending, and go
                                                  through shutting-down / deleting
    withhold_parameter(name)                      an SSM public parameter that is not published
    refuse_stopping_spot()                        StopInstances naming a spot instance answers
                                                  UnsupportedOperation, as AWS does for instances
                                                  of one-time spot requests (the only kind the
                                                  provisioner launches); moto stops them
    imds_tag_keys()                               instances with tags in instance metadata
                                                  (MetadataOptions.InstanceMetadataTags=enabled,
                                                  which moto accepts and records) refuse tag keys
                                                  IMDS cannot show: RunInstances and CreateTags
                                                  answer InvalidParameterValue

Observation: requests(operation=None) — every request the proxy answered, as Seen records
(service, operation, status, injected), retries included.

install_public_images() seeds moto (in this process) with the Canonical Ubuntu 24.04 AMIs and
their SSM public parameters, which moto lacks.
"""

from __future__ import annotations

import contextlib
import http
import http.client
import http.server
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from tests.harness.faults import CRASH_HEADER

EC2_VERSION = "2016-11-15"
_IMDS_KEY = re.compile(r"^[A-Za-z0-9+\-=._:@,]+$")  # tag keys IMDS can show (imds_tag_keys)

# --- public images moto lacks -------------------------------------------------------------------

CANONICAL_OWNER = "099720109477"
UBUNTU_AMIS = {"amd64": "ami-02404a0d64c0a4e01", "arm64": "ami-02404a0a64c0a4e02"}
UBUNTU_SERIAL = "20250305"


def ubuntu_parameters() -> dict[str, str]:
    """Canonical's SSM public parameters for Ubuntu 24.04 (by number and by code name)."""
    names = {}
    for release in ("24.04", "noble"):
        for arch, ami in UBUNTU_AMIS.items():
            names[
                f"/aws/service/canonical/ubuntu/server/{release}/stable/current/{arch}/hvm/ebs-gp3/ami-id"
            ] = ami
    return names


def install_public_images() -> None:
    """Seed moto, in this process, with the Ubuntu 24.04 AMIs and Canonical's SSM parameters.

    The AMIs join moto's default image list, which every EC2 backend (any account, any region)
    loads when it starts, so they exist after every reset and pass AMI validation. The parameters
    load into an SSM backend the first time a call names a path under /aws/service/canonical, the
    way moto loads its Amazon Linux parameters. Idempotent.
    """
    from moto.ec2.models import amis
    from moto.ssm.models import Parameter, ParameterDict

    known = {a["ami_id"] for a in amis.AMIS}
    for arch, ami in UBUNTU_AMIS.items():
        if ami in known:
            continue
        name = f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-{UBUNTU_SERIAL}"
        amis.AMIS.append(
            {
                "ami_id": ami,
                "state": "available",
                "public": True,
                "owner_id": CANONICAL_OWNER,
                "image_location": f"amazon/{name}",
                "sriov": "simple",
                "root_device_type": "ebs",
                "root_device_name": "/dev/sda1",
                "description": f"Canonical, Ubuntu, 24.04, {arch} noble image",
                "image_type": "machine",
                "platform": None,
                "architecture": "x86_64" if arch == "amd64" else "arm64",
                "name": name,
                "virtualization_type": "hvm",
                "hypervisor": "xen",
            }
        )
    if getattr(ParameterDict, "_clusterous_seeded", False):
        return
    original = ParameterDict._check_loading_status
    prefix = "/aws/service/canonical"

    def check_loading_status(self, key):
        original(self, key)
        text = str(key or "")
        wanted = text.startswith(prefix) or (text.startswith("/aws") and prefix.startswith(text.rstrip("/")))
        if wanted and not getattr(self, "_clusterous_canonical_loaded", False):
            self._clusterous_canonical_loaded = True
            for name, value in ubuntu_parameters().items():
                versions = super(ParameterDict, self).__getitem__(name)
                if not versions:
                    versions.append(
                        Parameter(
                            account_id=self.account_id,
                            name=name,
                            value=value,
                            parameter_type="String",
                            description=None,
                            allowed_pattern=None,
                            keyid=None,
                            last_modified_date=time.time(),
                            version=1,
                            data_type="text",
                        )
                    )

    ParameterDict._check_loading_status = check_loading_status
    ParameterDict._clusterous_seeded = True


# --- requests as the proxy sees them ------------------------------------------------------------

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}


@dataclass
class Request:
    method: str
    path: str  # path and query string, as received
    headers: list[tuple[str, str]]
    body: bytes
    service: str | None = None
    region: str | None = None
    access_key: str | None = None
    operation: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # query protocol: the form, flattened

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def json_protocol(self) -> bool:
        return self.header("X-Amz-Target") is not None

    def with_params(self, params: dict[str, str]) -> Request:
        """The same query-protocol request with other form parameters."""
        body = urllib.parse.urlencode(list(params.items())).encode()
        return Request(
            self.method,
            self.path.split("?", 1)[0],
            self.headers,
            body,
            self.service,
            self.region,
            self.access_key,
            self.operation,
            dict(params),
        )


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reset: bool = False  # close the connection with a TCP reset instead of answering

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True)
class Seen:
    """One request the proxy answered: what it was and what the client got."""

    service: str | None
    operation: str | None
    status: int
    injected: str | None = None  # what the layer did instead of (or after) forwarding


def describe(req: Request) -> Request:
    """Fill in service, region, operation and (query protocol) parameters."""
    auth = req.header("Authorization") or ""
    match = _CREDENTIAL.search(auth)
    path, _, query = req.path.partition("?")
    if not match and "X-Amz-Credential" in query:
        credential = urllib.parse.parse_qs(query).get("X-Amz-Credential", [""])[0]
        match = _CREDENTIAL.search("Credential=" + credential)
    if match:
        req.access_key, req.region, req.service = match.group(1), match.group(2), match.group(3)
    target = req.header("X-Amz-Target")
    if target:
        req.operation = target.rsplit(".", 1)[-1]
        return req
    if req.service == "s3":
        req.operation = s3_operation(req.method, path, query, req)
        return req
    params: dict[str, str] = {}
    if query:
        params.update(urllib.parse.parse_qsl(query, keep_blank_values=True))
    content_type = (req.header("Content-Type") or "").lower()
    if req.body and "x-www-form-urlencoded" in content_type:
        params.update(urllib.parse.parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
    req.params = params
    req.operation = params.get("Action")
    return req


_S3_BUCKET_SUBRESOURCES = {
    "tagging": "BucketTagging",
    "encryption": "BucketEncryption",
    "publicAccessBlock": "PublicAccessBlock",
    "policy": "BucketPolicy",
    "versioning": "BucketVersioning",
    "lifecycle": "BucketLifecycleConfiguration",
    "location": "BucketLocation",
    "acl": "BucketAcl",
    "cors": "BucketCors",
    "ownershipControls": "BucketOwnershipControls",
    "notification": "BucketNotificationConfiguration",
}


def s3_operation(method: str, path: str, query: str, req: Request) -> str:
    """The S3 operation of a path-style request (enough to name calls for throttling and logs)."""
    parts = [p for p in path.split("/") if p]
    keys = set(urllib.parse.parse_qs(query, keep_blank_values=True))
    if not parts:
        return "ListBuckets"
    if len(parts) == 1:
        for sub, name in _S3_BUCKET_SUBRESOURCES.items():
            if sub in keys:
                verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method, method.title())
                if sub == "lifecycle" and verb == "Delete":
                    return "DeleteBucketLifecycle"
                return verb + name
        if method == "POST" and "delete" in keys:
            return "DeleteObjects"
        if method == "GET" and "uploads" in keys:
            return "ListMultipartUploads"
        if method == "GET" and "versions" in keys:
            return "ListObjectVersions"
        return {
            "PUT": "CreateBucket",
            "HEAD": "HeadBucket",
            "DELETE": "DeleteBucket",
            "GET": "ListObjectsV2" if "list-type" in keys else "ListObjects",
        }.get(method, method)
    if method == "POST" and "uploads" in keys:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in keys:
        return "CompleteMultipartUpload"
    if method == "PUT" and "partNumber" in keys:
        return "UploadPartCopy" if req.header("x-amz-copy-source") else "UploadPart"
    if method == "DELETE" and "uploadId" in keys:
        return "AbortMultipartUpload"
    if method == "GET" and "uploadId" in keys:
        return "ListParts"
    if "tagging" in keys:
        return {"GET": "GetObjectTagging", "PUT": "PutObjectTagging", "DELETE": "DeleteObjectTagging"}.get(
            method, method
        )
    if method == "PUT" and req.header("x-amz-copy-source"):
        return "CopyObject"
    return {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, method
    )


# --- AWS errors in each protocol's wire format --------------------------------------------------

_QUERY_NAMESPACES = {
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
}


def error_reply(req: Request, code: str, message: str, status: int = 400) -> Reply:
    """AWS's error response for this request's protocol: EC2 XML, query XML, S3 XML or JSON."""
    request_id = str(uuid.uuid4())
    if req.json_protocol:
        content_type = req.header("Content-Type") or "application/x-amz-json-1.1"
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            ("Content-Type", content_type),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-ErrorType", code),
        ]
        return Reply(status, headers, body)
    if req.service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>{uuid.uuid4().hex}</HostId></Error>"
        ).encode()
        if req.method == "HEAD":
            body = b""
        return Reply(status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], body)
    if req.service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()
        return Reply(status, [("Content-Type", "text/xml;charset=UTF-8")], body)
    namespace = _QUERY_NAMESPACES.get(req.service or "")
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    kind = "Receiver" if status >= 500 else "Sender"
    body = (
        f"<ErrorResponse{xmlns}><Error><Type>{kind}</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    return Reply(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body)


def throttling_error(req: Request) -> tuple[str, str, int]:
    """(code, message, status) each service answers when it throttles a caller."""
    if req.service == "ec2":
        return "RequestLimitExceeded", "Request limit exceeded.", 503
    if req.service == "s3":
        return "SlowDown", "Please reduce your request rate.", 503
    if req.json_protocol:
        return "ThrottlingException", "Rate exceeded", 400
    return "Throttling", "Rate exceeded", 400


def server_error(req: Request, status: int) -> tuple[str, str, int]:
    if status >= 503 or status == 502:
        if req.service == "ec2":
            return "Unavailable", "The server is overloaded and can't handle the request.", status
        return "ServiceUnavailable", "Service is unable to handle request.", status
    if req.service == "ec2":
        return "InternalError", "An internal error has occurred.", status
    if req.json_protocol:
        return "InternalServerError", "An internal error has occurred.", status
    return "InternalError", "We encountered an internal error. Please try again.", status


# --- EC2 facts the layer relies on --------------------------------------------------------------

# operation -> the response element naming what it created
CREATED_BY = {
    "CreateVpc": "vpcId",
    "CreateSubnet": "subnetId",
    "CreateInternetGateway": "internetGatewayId",
    "CreateRouteTable": "routeTableId",
    "CreateSecurityGroup": "groupId",
    "RunInstances": "instanceId",
    "CreateVolume": "volumeId",
    "AllocateAddress": "allocationId",
    "CreateNatGateway": "natGatewayId",
}

# id prefix -> (error code, message) EC2 answers for an id it does not know (yet)
NOT_FOUND = {
    "vpc": ("InvalidVpcID.NotFound", "The vpc ID '{id}' does not exist"),
    "subnet": ("InvalidSubnetID.NotFound", "The subnet ID '{id}' does not exist"),
    "igw": ("InvalidInternetGatewayID.NotFound", "The internetGateway ID '{id}' does not exist"),
    "rtb": ("InvalidRouteTableID.NotFound", "The routeTable ID '{id}' does not exist"),
    "sg": ("InvalidGroup.NotFound", "The security group '{id}' does not exist"),
    "i": ("InvalidInstanceID.NotFound", "The instance ID '{id}' does not exist"),
    "vol": ("InvalidVolume.NotFound", "The volume '{id}' does not exist."),
    "eipalloc": ("InvalidAllocationID.NotFound", "The allocation ID '{id}' does not exist"),
    "nat": ("NatGatewayNotFound", "The Nat Gateway {id} was not found"),
}

# teardown operation -> (parameter naming the resource, error code, message)
DEPENDENT_DELETES = {
    "DeleteSubnet": (
        "SubnetId",
        "DependencyViolation",
        "The subnet '{id}' has dependencies and cannot be deleted.",
    ),
    "DeleteSecurityGroup": ("GroupId", "DependencyViolation", "resource {id} has a dependent object"),
    "DeleteVpc": ("VpcId", "DependencyViolation", "The vpc '{id}' has dependencies and cannot be deleted."),
    "DetachInternetGateway": (
        "VpcId",
        "DependencyViolation",
        (
            "Network {id} has some mapped public address(es). Please unmap those public address(es) "
            "before detaching the gateway."
        ),
    ),
    # What AWS answers while the address still belongs to a NAT gateway's interface.
    "ReleaseAddress": (
        "AllocationId",
        "AuthFailure",
        "You do not have permission to access the specified resource.",
    ),
}

LINGERING_AFTER = ("TerminateInstances", "DeleteNatGateway")

INSTANCE_STATES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
LIVE_INSTANCE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
LIVE_NAT_STATES = ("pending", "available", "deleting")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if _local(c.tag) == name]


def _child_text(node: ET.Element, name: str) -> str | None:
    for c in node:
        if _local(c.tag) == name:
            return c.text
    return None


def _all(node: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in node.iter() if _local(e.tag) == name]


def _items(node: ET.Element, *path: str) -> list[ET.Element]:
    """The <item> elements under node/path[0]/item/path[1]/item/..."""
    found = [node]
    for name in path:
        found = [item for n in found for s in _children(n, name) for item in _children(s, "item")]
    return found


def _parse(body: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def _serialize(root: ET.Element) -> bytes:
    namespace = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else None
    if namespace:
        ET.register_namespace("", namespace)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# --- the switchboard ----------------------------------------------------------------------------


@dataclass
class Window:
    """How long something lasts: a number of calls, seconds, or both (whichever lasts longer)."""

    calls: int | None = None
    seconds: float | None = None

    @classmethod
    def of(cls, calls: int | None, seconds: float | None, default_calls: int = 1) -> Window:
        if calls is None and seconds is None:
            calls = default_calls
        return cls(calls, seconds)


@dataclass
class Mark:
    """One resource inside a window: since when, and how many calls it has been used for."""

    window: Window
    now: Callable[[], float]
    since: float = 0.0
    used: int = 0

    def __post_init__(self) -> None:
        self.since = self.now()

    def active(self) -> bool:
        if self.window.calls is not None and self.used < self.window.calls:
            return True
        return self.window.seconds is not None and self.now() - self.since < self.window.seconds


@dataclass
class Rule:
    kind: str  # throttle, unavailable, lose, crash
    operation: str
    service: str | None
    remaining: int
    status: int = 0
    how: str = ""

    def matches(self, req: Request) -> bool:
        return (
            self.remaining > 0
            and self.operation == req.operation
            and (self.service is None or self.service == req.service)
        )


class Realism:
    """What the proxy adds to moto, switched per test. Thread-safe; reset() turns all off."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.clock: Callable[[], float] = time.monotonic  # tests may replace it to move time on
        self.reset()

    def _now(self) -> float:
        return self.clock()

    def reset(self) -> None:
        with self._lock:
            self.seen: list[Seen] = []
            self._rules: list[Rule] = []
            self._consistency: Window | None = None
            self._created: dict[str, Mark] = {}  # new EC2 id -> its invisibility window
            self._iam: Window | None = None
            self._profiles: dict[str, Mark] = {}  # instance profile name or ARN -> window
            self._idempotent = False
            self._tokens: dict[tuple, tuple[dict, Reply]] = {}
            self._linger: Window | None = None
            self._strict = False
            self._holds: dict[tuple[str, str], Mark] = {}  # (operation, resource id) -> window
            self._pending: dict[str, Window] = {}  # instance / nat / shutdown -> window
            self._launched: dict[str, Mark] = {}  # instance or NAT id -> pending window
            self._ending: dict[str, Mark] = {}  # instance or NAT id -> shutting-down / deleting window
            self._withheld: set[str] = set()
            self._imds_keys = False
            self._spot_stops = False
            self._nat_default_ip: str | None = None  # subnet_addresses(): a NAT's address by chance
            self._nat_ips: dict[str, str] = {}  # NAT gateway id -> its private address
            self.clock = time.monotonic

    # -- switches --

    def eventual_consistency(self, calls: int | None = None, seconds: float | None = None) -> None:
        """Ids created by EC2 calls from now on are unknown to other calls for a while: each of the
        first `calls` calls naming one (or every call within `seconds` of its creation) answers
        the id's <Kind>.NotFound error. Filters are not affected (Filter.N.Value.M)."""
        with self._lock:
            self._consistency = Window.of(calls, seconds)

    def iam_propagation(self, calls: int | None = None, seconds: float | None = None) -> None:
        """Instance profiles created from now on are unknown to EC2 for a while: RunInstances
        (and Associate/ReplaceIamInstanceProfile...) naming one answers InvalidParameterValue."""
        with self._lock:
            self._iam = Window.of(calls, seconds)

    def throttle(self, operation: str, times: int = 1, service: str | None = None) -> None:
        """The next `times` requests of `operation` get the service's throttling error."""
        with self._lock:
            self._rules.append(Rule("throttle", operation, service, times))

    def unavailable(
        self, operation: str, times: int = 1, status: int = 503, service: str | None = None
    ) -> None:
        """The next `times` requests of `operation` get a server error (503 or 500)."""
        with self._lock:
            self._rules.append(Rule("unavailable", operation, service, times, status=status))

    def lose_response(
        self, operation: str, times: int = 1, how: str = "reset", service: str | None = None
    ) -> None:
        """The next `times` requests of `operation` are applied, but the client gets a connection
        reset (how="reset") or a 500 InternalError (how="500") instead of the answer."""
        if how not in ("reset", "500"):
            raise ValueError("how is 'reset' or '500'")
        with self._lock:
            self._idempotent = True
            self._rules.append(Rule("lose", operation, service, times, how=how))

    def idempotent_client_tokens(self, on: bool = True) -> None:
        with self._lock:
            self._idempotent = on

    def crash_after(self, operation: str, times: int = 1, service: str | None = None) -> None:
        """The next `times` requests of `operation` are applied, then the client process dies
        (SimulatedCrash, raised by the faults plugin on CRASH_HEADER) without seeing the answer."""
        with self._lock:
            self._rules.append(Rule("crash", operation, service, times))

    def linger_dependencies(self, calls: int | None = None, seconds: float | None = None) -> None:
        """After TerminateInstances, deleting the instances' subnets, security groups and VPC (and
        detaching the VPC's internet gateway, for instances with a public address) is refused
        with DependencyViolation for `calls` calls each or `seconds`, while their network
        interfaces drain; after DeleteNatGateway the same for its subnet and VPC, and
        ReleaseAddress of its Elastic IP answers AuthFailure. Also refuse_dependent_deletes()."""
        with self._lock:
            self._linger = Window.of(calls, seconds)
            self._strict = True

    def refuse_dependent_deletes(self, on: bool = True) -> None:
        """Refuse deletes moto allows and AWS does not: a subnet with live instances or NAT
        gateways, a security group used by an instance or referenced by another group, a VPC with
        an internet gateway or security groups, a gateway detach while the VPC has public
        addresses, releasing a NAT gateway's Elastic IP."""
        with self._lock:
            self._strict = on

    def pending(
        self,
        instance_calls: int | None = None,
        instance_seconds: float | None = None,
        nat_calls: int | None = None,
        nat_seconds: float | None = None,
        shutdown_calls: int | None = None,
        shutdown_seconds: float | None = None,
    ) -> None:
        """Instances launched from now on are `pending` (NAT gateways created from now on are
        `pending`) in the first `*_calls` describe answers that show them, or for `*_seconds`;
        terminated instances are `shutting-down` and deleted NAT gateways `deleting` likewise.
        Describe filters on the state see the rewritten state."""
        with self._lock:
            if instance_calls is not None or instance_seconds is not None:
                self._pending["instance"] = Window(instance_calls, instance_seconds)
            if nat_calls is not None or nat_seconds is not None:
                self._pending["nat"] = Window(nat_calls, nat_seconds)
            if shutdown_calls is not None or shutdown_seconds is not None:
                self._pending["shutdown"] = Window(shutdown_calls, shutdown_seconds)

    def subnet_addresses(self, nat_takes: str) -> None:
        """Private addresses are held as in a real subnet: a NAT gateway created without
        `PrivateIpAddress` takes `nat_takes` (AWS picks a free address of the subnet at random;
        the test names the unlucky one), one created with it takes that address, describes show
        it, and RunInstances asking for an address a NAT gateway holds answers
        `InvalidIPAddress.InUse` (moto gives NAT gateways a random 10.x address outside the
        subnet and checks nothing)."""
        with self._lock:
            self._nat_default_ip = nat_takes

    def refuse_stopping_spot(self, on: bool = True) -> None:
        """StopInstances naming a spot instance is refused: "You can't stop the Spot Instance ...
        because it is associated with a one-time Spot Instance request. You can only stop Spot
        Instances associated with persistent Spot Instance requests" (UnsupportedOperation)."""
        with self._lock:
            self._spot_stops = on

    def imds_tag_keys(self, on: bool = True) -> None:
        """AWS, "View tags for your EC2 instances using instance metadata": with tags in metadata
        allowed, instance tag keys may hold only letters, digits and + - = . , _ : @, no spaces
        or /, and may not be `.`, `..` or `_index`; "non-compliance will result in failed
        launches for new instances or an error for existing instances". moto checks nothing.
        (The error code is our choice: the page names none.)"""
        with self._lock:
            self._imds_keys = on

    def withhold_parameter(self, name: str) -> None:
        """An SSM parameter that does not exist in this account (GetParameter: ParameterNotFound)."""
        with self._lock:
            self._withheld.add(name)

    # -- observation --

    def requests(self, operation: str | None = None, service: str | None = None) -> list[Seen]:
        """Every request the proxy answered, in order, retries included."""
        with self._lock:
            return [
                s
                for s in self.seen
                if (operation is None or s.operation == operation)
                and (service is None or s.service == service)
            ]

    def injected(self, operation: str | None = None) -> list[Seen]:
        """The requests the layer answered differently from moto (or did not let moto answer)."""
        return [s for s in self.requests(operation) if s.injected]

    @property
    def active(self) -> bool:
        return bool(
            self._rules
            or self._consistency
            or self._iam
            or self._idempotent
            or self._linger
            or self._strict
            or self._pending
            or self._withheld
            or self._nat_default_ip
            or self._imds_keys
            or self._spot_stops
        )

    # -- the request path --

    def handle(self, req: Request, upstream: Upstream) -> Reply:
        if not self.active:
            reply = upstream.send(req)
            self.seen.append(Seen(req.service, req.operation, reply.status))
            return reply
        note: list[str] = []
        reply = self._handle(req, upstream, note)
        with self._lock:
            self.seen.append(
                Seen(
                    req.service, req.operation, 0 if reply.reset else reply.status, note[0] if note else None
                )
            )
        return reply

    def _take(self, req: Request, kinds: tuple[str, ...]) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind in kinds and rule.matches(req):
                    rule.remaining -= 1
                    return rule
        return None

    def _handle(self, req: Request, upstream: Upstream, note: list[str]) -> Reply:
        refused = self._refuse_before(req, upstream)
        if refused is not None:
            note.append(refused[0])
            return error_reply(req, *refused)

        token_key = self._token_key(req)
        if token_key is not None:
            with self._lock:
                remembered = self._tokens.get(token_key)
            if remembered is not None:
                params, first = remembered
                if params != _without_token(req.params):
                    note.append("IdempotentParameterMismatch")
                    return error_reply(
                        req,
                        "IdempotentParameterMismatch",
                        "Client token already used before with different parameters.",
                    )
                note.append("idempotent-replay")
                return first

        forwarded, state_filters = self._strip_state_filters(req)
        dependents = self._dependents(req, upstream) if req.operation in LINGERING_AFTER else []
        reply = upstream.send(forwarded)
        if 200 <= reply.status < 300:
            self._learn(req, reply)
            self._hold(dependents)
            if token_key is not None:
                with self._lock:
                    self._tokens[token_key] = (_without_token(req.params), reply)
        reply = self._rewrite_states(req, reply, state_filters)
        reply = self._nat_addresses(req, reply)

        rule = self._take(req, ("lose", "crash"))
        if rule is not None and rule.kind == "lose":
            note.append(f"lost-response:{rule.how}")
            if rule.how == "reset":
                return Reply(0, [], b"", reset=True)
            return error_reply(req, *server_error(req, 500))
        if rule is not None and rule.kind == "crash":
            note.append("crash-after")
            code = "SimulatedCrash"
            crashed = error_reply(req, code, f"the client died after {req.operation} was applied", 400)
            crashed.headers.append((CRASH_HEADER, req.operation or "?"))
            return crashed
        return reply

    def _refuse_before(self, req: Request, upstream: Upstream) -> tuple[str, str, int] | None:
        """(code, message, status) to answer instead of forwarding, or None."""
        rule = self._take(req, ("throttle", "unavailable"))
        if rule is not None:
            return throttling_error(req) if rule.kind == "throttle" else server_error(req, rule.status)
        withheld = self._withheld and req.service == "ssm" and req.operation == "GetParameter"
        if withheld and _json_body(req).get("Name") in self._withheld:
            return "ParameterNotFound", "", 400
        if req.service != "ec2" or not req.operation:
            return None
        refused = (
            self._not_yet_visible(req)
            or self._profile_not_yet_visible(req)
            or self._address_in_use(req)
            or self._imds_tag_key(req, upstream)
            or self._spot_stop(req, upstream)
        )
        if refused is not None:
            return refused
        return self._dependency_refusal(req, upstream)

    def _spot_stop(self, req: Request, upstream: Upstream) -> tuple[str, str, int] | None:
        if not self._spot_stops or req.operation != "StopInstances":
            return None
        ids = [v for k, v in req.params.items() if k.startswith("InstanceId.")]
        spot = next((i["id"] for i in Moto(upstream, req).instances(ids) if i["spot"]), None) if ids else None
        if spot is None:
            return None
        message = (
            f"You can't stop the Spot Instance '{spot}' because it is associated with a one-time Spot "
            "Instance request. You can only stop Spot Instances associated with persistent Spot Instance "
            "requests."
        )
        return "UnsupportedOperation", message, 400

    def _imds_tag_key(self, req: Request, upstream: Upstream) -> tuple[str, str, int] | None:
        if not self._imds_keys or req.operation not in ("RunInstances", "CreateTags"):
            return None
        params = req.params
        if req.operation == "RunInstances":
            if params.get("MetadataOptions.InstanceMetadataTags") != "enabled":
                return None
            specs = {
                k.split(".")[1] for k, v in params.items() if k.endswith(".ResourceType") and v == "instance"
            }
            keys = [v for k, v in params.items() if k.split(".")[1:2] and k.split(".")[1] in specs
                    and k.startswith("TagSpecification.") and k.endswith(".Key")]  # fmt: skip
        else:
            ids = [v for k, v in params.items() if k.startswith("ResourceId.") and v.startswith("i-")]
            if not ids or not any(i["metadata_tags"] for i in Moto(upstream, req).instances(ids)):
                return None
            keys = [v for k, v in params.items() if k.startswith("Tag.") and k.endswith(".Key")]
        bad = next((key for key in keys if not _IMDS_KEY.match(key) or key in (".", "..", "_index")), None)
        if bad is None:
            return None
        return (
            "InvalidParameterValue",
            (
                f"Tag key {bad!r} is not allowed for an instance with instance tags in metadata allowed "
                "(letters, digits and + - = . , _ : @ only)"
            ),
            400,
        )

    def _address_in_use(self, req: Request) -> tuple[str, str, int] | None:
        if req.operation != "RunInstances" or not self._nat_ips:
            return None
        with self._lock:
            held = set(self._nat_ips.values())
        for key, value in req.params.items():
            if key.endswith("PrivateIpAddress") and value in held:
                return "InvalidIPAddress.InUse", f"Address {value} is in use.", 400
        return None

    def _nat_addresses(self, req: Request, reply: Reply) -> Reply:
        """subnet_addresses(): record and show the private address each NAT gateway holds."""
        if self._nat_default_ip is None or req.service != "ec2" or reply.status != 200:
            return reply
        if req.operation not in ("CreateNatGateway", "DescribeNatGateways", "DeleteNatGateway"):
            return reply
        root = _parse(reply.body)
        if root is None:
            return reply
        with self._lock:
            if req.operation == "DeleteNatGateway":
                self._nat_ips.pop(_child_text(root, "natGatewayId") or "", None)  # freed once deleted
                return reply
            gateways = _children(root, "natGateway") + [
                item for parent in _children(root, "natGatewaySet") for item in _children(parent, "item")
            ]
            for gateway in gateways:
                nat_id = _child_text(gateway, "natGatewayId") or ""
                if req.operation == "CreateNatGateway":
                    self._nat_ips[nat_id] = req.params.get("PrivateIpAddress") or self._nat_default_ip
                address = self._nat_ips.get(nat_id)
                if address is None:
                    continue
                for node in _all(gateway, "privateIp"):
                    node.text = address
        return Reply(reply.status, reply.headers, _serialize(root))

    def _not_yet_visible(self, req: Request) -> tuple[str, str, int] | None:
        if self._consistency is None or not self._created:
            return None
        with self._lock:
            for key, value in req.params.items():
                if key.startswith(("Filter.", "Action", "Version", "ClientToken")):
                    continue
                mark = self._created.get(value)
                if mark is None:
                    continue
                if not mark.active():
                    del self._created[value]
                    continue
                mark.used += 1
                code, message = NOT_FOUND[value.split("-", 1)[0]]
                return code, message.format(id=value), 400
        return None

    def _profile_not_yet_visible(self, req: Request) -> tuple[str, str, int] | None:
        if self._iam is None or not self._profiles:
            return None
        with self._lock:
            for key, field_name, label in (
                ("IamInstanceProfile.Name", "iamInstanceProfile.name", "Invalid IAM Instance Profile name"),
                ("IamInstanceProfile.Arn", "iamInstanceProfile.arn", "Invalid IAM Instance Profile ARN"),
            ):
                value = req.params.get(key)
                mark = self._profiles.get(value) if value else None
                if mark is None:
                    continue
                if not mark.active():
                    del self._profiles[value]
                    continue
                mark.used += 1
                return (
                    "InvalidParameterValue",
                    f"Value ({value}) for parameter {field_name} is invalid. {label}",
                    400,
                )
        return None

    def _dependency_refusal(self, req: Request, upstream: Upstream) -> tuple[str, str, int] | None:
        spec = DEPENDENT_DELETES.get(req.operation or "")
        if spec is None:
            return None
        param, code, message = spec
        resource = req.params.get(param)
        if not resource:
            return None
        with self._lock:
            mark = self._holds.get((req.operation, resource))
            if mark is not None:
                if mark.active():
                    mark.used += 1
                    return code, message.format(id=resource), 400
                del self._holds[(req.operation, resource)]
        if self._strict and Moto(upstream, req).blocks(req.operation, resource):
            return code, message.format(id=resource), 400
        return None

    def _token_key(self, req: Request) -> tuple | None:
        if not self._idempotent or req.service != "ec2":
            return None
        token = req.params.get("ClientToken")
        if not token:
            return None
        return (req.access_key, req.region, req.operation, token)

    # -- learning from what moto answered --

    def _learn(self, req: Request, reply: Reply) -> None:
        if req.service == "iam" and req.operation == "CreateInstanceProfile" and self._iam is not None:
            root = _parse(reply.body)
            if root is not None:
                with self._lock:
                    for name in ("InstanceProfileName", "Arn"):
                        for element in _all(root, name):
                            if element.text:
                                self._profiles[element.text] = Mark(self._iam, self._now)
            return
        if req.service != "ec2":
            return
        op = req.operation
        created = CREATED_BY.get(op or "")
        tracking = (created and self._consistency is not None) or (
            op in ("RunInstances", "CreateNatGateway", "TerminateInstances", "DeleteNatGateway")
            and self._pending
        )
        if not tracking:
            return
        root = _parse(reply.body)
        if root is None:
            return
        with self._lock:
            if created and self._consistency is not None:
                for element in _all(root, created):
                    if element.text:
                        self._created[element.text] = Mark(self._consistency, self._now)
            if op == "RunInstances" and "instance" in self._pending:
                for item in _items(root, "instancesSet"):
                    self._launched[_child_text(item, "instanceId")] = Mark(
                        self._pending["instance"], self._now
                    )
            if op == "CreateNatGateway" and "nat" in self._pending:
                for element in _all(root, "natGatewayId"):
                    self._launched[element.text] = Mark(self._pending["nat"], self._now)
            if op in ("TerminateInstances", "DeleteNatGateway") and "shutdown" in self._pending:
                name = "instanceId" if op == "TerminateInstances" else "natGatewayId"
                for element in _all(root, name):
                    self._ending.setdefault(element.text, Mark(self._pending["shutdown"], self._now))

    def _dependents(self, req: Request, upstream: Upstream) -> list[tuple[str, str]]:
        """What a TerminateInstances / DeleteNatGateway about to be forwarded leaves lingering, as
        (refused operation, resource id); asked before the call, while moto still shows it all."""
        if self._linger is None or req.service != "ec2":
            return []
        moto = Moto(upstream, req)
        holds: list[tuple[str, str]] = []
        if req.operation == "TerminateInstances":
            ids = [v for k, v in req.params.items() if k.startswith("InstanceId.")]
            for instance in moto.instances(ids) if ids else []:
                holds.append(("DeleteSubnet", instance["subnet"]))
                holds.append(("DeleteVpc", instance["vpc"]))
                holds += [("DeleteSecurityGroup", g) for g in instance["groups"]]
                if instance["public"]:
                    holds.append(("DetachInternetGateway", instance["vpc"]))
        elif req.operation == "DeleteNatGateway" and req.params.get("NatGatewayId"):
            for nat in moto.nat_gateways([req.params["NatGatewayId"]]):
                holds += [("DeleteSubnet", nat["subnet"]), ("DeleteVpc", nat["vpc"])]
                holds.append(("DetachInternetGateway", nat["vpc"]))
                holds += [("ReleaseAddress", a) for a in nat["allocations"]]
        return [h for h in holds if h[1]]

    def _hold(self, holds: list[tuple[str, str]]) -> None:
        with self._lock:
            for hold in holds:
                self._holds[hold] = Mark(self._linger, self._now)

    # -- pending states --

    def _strip_state_filters(self, req: Request) -> tuple[Request, dict[str, list[str]]]:
        """Take state filters out of describe calls whose states the layer rewrites, to apply them
        after the rewrite; (request to forward, {filter name: values})."""
        names = {"DescribeInstances": ("instance-state-name",), "DescribeNatGateways": ("state",)}.get(
            req.operation or ""
        )
        if not self._pending or req.service != "ec2" or names is None:
            return req, {}
        filters: dict[str, list[str]] = {}
        numbers = {
            k.split(".")[1]
            for k, v in req.params.items()
            if re.fullmatch(r"Filter\.\d+\.Name", k) and v in names
        }
        if not numbers:
            return req, {}
        kept = {}
        for key, value in req.params.items():
            parts = key.split(".")
            if key.startswith("Filter.") and parts[1] in numbers:
                if parts[2] == "Value":
                    name = req.params[f"Filter.{parts[1]}.Name"]
                    filters.setdefault(name, []).append(value)
                continue
            kept[key] = value
        return req.with_params(kept), filters

    def _rewrite_states(self, req: Request, reply: Reply, filters: dict[str, list[str]]) -> Reply:
        if not self._pending or req.service != "ec2" or reply.status != 200:
            return reply
        op = req.operation
        if op not in ("DescribeInstances", "DescribeNatGateways", "TerminateInstances", "CreateNatGateway",
                      "DescribeInstanceStatus"):  # fmt: skip
            return reply
        root = _parse(reply.body)
        if root is None:
            return reply
        with self._lock:
            if op == "DescribeInstances":
                for reservation in _items(root, "reservationSet"):
                    instances = _children(reservation, "instancesSet")
                    for item in _items(reservation, "instancesSet"):
                        state = self._instance_state(item, "instanceState")
                        wanted = filters.get("instance-state-name")
                        if wanted and state not in wanted:
                            for parent in instances:
                                if item in list(parent):
                                    parent.remove(item)
                for parent in _children(root, "reservationSet"):
                    for reservation in list(_children(parent, "item")):
                        if not _items(reservation, "instancesSet"):
                            parent.remove(reservation)
            elif op == "DescribeInstanceStatus":
                for item in _items(root, "instanceStatusSet"):
                    self._instance_state(item, "instanceState")
            elif op == "TerminateInstances":
                for item in _items(root, "instancesSet"):
                    self._instance_state(item, "currentState", count=False)
            else:
                for parent in _children(root, "natGatewaySet") + [root]:
                    for item in _children(parent, "item") + _children(parent, "natGateway"):
                        state = self._nat_state(item, count=op == "DescribeNatGateways")
                        wanted = filters.get("state")
                        if wanted and state not in wanted:
                            parent.remove(item)
        return Reply(reply.status, reply.headers, _serialize(root))

    def _instance_state(self, item: ET.Element, element: str, count: bool = True) -> str | None:
        instance_id = _child_text(item, "instanceId")
        state_nodes = _children(item, element)
        if not state_nodes:
            return None
        node = state_nodes[0]
        current = _child_text(node, "name")
        new = None
        ending = self._ending.get(instance_id)
        launched = self._launched.get(instance_id)
        if element == "currentState" and "shutdown" in self._pending:
            new = "shutting-down"
        elif ending is not None and ending.active() and current in ("terminated", "shutting-down"):
            new = "shutting-down"
            ending.used += count
        elif launched is not None and launched.active() and current == "running":
            new = "pending"
            launched.used += count
        if new is None:
            return current
        for child in node:
            if _local(child.tag) == "name":
                child.text = new
            elif _local(child.tag) == "code":
                child.text = str(INSTANCE_STATES[new])
        return new

    def _nat_state(self, item: ET.Element, count: bool) -> str | None:
        nat_id = _child_text(item, "natGatewayId")
        state_node = next((c for c in item if _local(c.tag) == "state"), None)
        if state_node is None:
            return None
        new = None
        ending = self._ending.get(nat_id)
        launched = self._launched.get(nat_id)
        if ending is not None and ending.active() and state_node.text == "deleted":
            new = "deleting"
            ending.used += count
        elif launched is not None and launched.active() and state_node.text == "available":
            new = "pending"
            launched.used += count
        if new is not None:
            state_node.text = new
        return state_node.text


def _without_token(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k != "ClientToken"}


def _json_body(req: Request) -> dict:
    try:
        value = json.loads(req.body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- asking moto what exists --------------------------------------------------------------------


class Moto:
    """EC2 describe calls straight to moto, in the caller's account and region, never logged."""

    def __init__(self, upstream: Upstream, req: Request):
        self.upstream = upstream
        self.headers = [
            (k, v)
            for k, v in req.headers
            if k.lower() in ("authorization", "x-amz-date", "host", "user-agent")
        ] + [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")]

    def query(self, action: str, params: dict[str, str]) -> ET.Element:
        body = urllib.parse.urlencode(
            [("Action", action), ("Version", EC2_VERSION), *params.items()]
        ).encode()
        reply = self.upstream.send(Request("POST", "/", self.headers, body))
        root = _parse(reply.body)
        if reply.status != 200 or root is None:
            raise RuntimeError(f"moto refused {action}: {reply.status} {reply.body[:300]!r}")
        return root

    def instances(
        self, ids: list[str] | None = None, filters: dict[str, list[str]] | None = None
    ) -> list[dict]:
        params = {f"InstanceId.{n}": i for n, i in enumerate(ids or [], 1)}
        params.update(_filters(filters or {}))
        root = self.query("DescribeInstances", params)
        found = []
        for reservation in _items(root, "reservationSet"):
            for item in _items(reservation, "instancesSet"):
                state = _child_text(_children(item, "instanceState")[0], "name")
                found.append(
                    {
                        "id": _child_text(item, "instanceId"),
                        "state": state,
                        "subnet": _child_text(item, "subnetId"),
                        "vpc": _child_text(item, "vpcId"),
                        "groups": sorted(
                            {_child_text(g, "groupId") for g in _items(item, "groupSet")}
                            | {
                                _child_text(g, "groupId")
                                for eni in _items(item, "networkInterfaceSet")
                                for g in _items(eni, "groupSet")
                            }
                        ),
                        "public": bool(_child_text(item, "ipAddress")),
                        "spot": _child_text(item, "instanceLifecycle") == "spot",
                        "metadata_tags": any(
                            _child_text(m, "instanceMetadataTags") == "enabled"
                            for m in _children(item, "metadataOptions")
                        ),
                    }
                )
        return found

    def nat_gateways(
        self, ids: list[str] | None = None, filters: dict[str, list[str]] | None = None
    ) -> list[dict]:
        params = {f"NatGatewayId.{n}": i for n, i in enumerate(ids or [], 1)}
        params.update(_filters(filters or {}))
        root = self.query("DescribeNatGateways", params)
        return [
            {
                "id": _child_text(item, "natGatewayId"),
                "state": _child_text(item, "state"),
                "subnet": _child_text(item, "subnetId"),
                "vpc": _child_text(item, "vpcId"),
                "allocations": [_child_text(a, "allocationId") for a in _items(item, "natGatewayAddressSet")],
            }
            for item in _items(root, "natGatewaySet")
        ]

    def blocks(self, operation: str, resource: str) -> bool:
        """Whether AWS would refuse this delete because something still uses the resource."""
        live = {"instance-state-name": list(LIVE_INSTANCE_STATES)}
        if operation == "DeleteSubnet":
            return bool(
                self.instances(filters={"subnet-id": [resource], **live})
                or self.nat_gateways(filters={"subnet-id": [resource], "state": list(LIVE_NAT_STATES)})
            )
        if operation == "DeleteSecurityGroup":
            if any(resource in i["groups"] for i in self.instances(filters=live)):
                return True
            root = self.query("DescribeSecurityGroups", {})
            for group in _items(root, "securityGroupInfo"):
                if _child_text(group, "groupId") == resource:
                    continue
                for rules in ("ipPermissions", "ipPermissionsEgress"):
                    for rule in _items(group, rules):
                        if any(_child_text(pair, "groupId") == resource for pair in _items(rule, "groups")):
                            return True
            return False
        if operation == "DeleteVpc":
            gateways = self.query("DescribeInternetGateways", _filters({"attachment.vpc-id": [resource]}))
            groups = self.query("DescribeSecurityGroups", _filters({"vpc-id": [resource]}))
            named = [_child_text(g, "groupName") for g in _items(groups, "securityGroupInfo")]
            return bool(_items(gateways, "internetGatewaySet")) or any(n != "default" for n in named)
        if operation == "DetachInternetGateway":
            if any(i["public"] for i in self.instances(filters={"vpc-id": [resource], **live})):
                return True
            return bool(self.nat_gateways(filters={"vpc-id": [resource], "state": list(LIVE_NAT_STATES)}))
        if operation == "ReleaseAddress":
            nats = self.nat_gateways(filters={"state": list(LIVE_NAT_STATES)})
            return any(resource in n["allocations"] for n in nats)
        return False


def _filters(filters: dict[str, list[str]]) -> dict[str, str]:
    params = {}
    for n, (name, values) in enumerate(filters.items(), 1):
        params[f"Filter.{n}.Name"] = name
        for m, value in enumerate(values, 1):
            params[f"Filter.{n}.Value.{m}"] = value
    return params


# --- the HTTP proxy -----------------------------------------------------------------------------


class Upstream:
    """Sends requests to moto: one new connection per request (moto's server closes each one)."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port

    def send(self, req: Request) -> Reply:
        headers = {k: v for k, v in req.headers if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(req.body))
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            connection.request(req.method, req.path, body=req.body, headers=headers)
            response = connection.getresponse()
            body = response.read()
            out = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            if req.method == "HEAD" and response.getheader("Content-Length") is not None:
                out.append(("Content-Length", response.getheader("Content-Length")))
            return Reply(response.status, out, body)
        finally:
            connection.close()


_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        body = self._read_body()
        req = describe(Request(self.command, self.path, list(self.headers.items()), body))
        try:
            reply = self.server.realism.handle(req, self.server.upstream)
        except Exception as exc:  # noqa: BLE001 - the client must get an answer, and the test a clue
            self.server.errors.append(f"{req.service} {req.operation}: {exc!r}")
            reply = error_reply(req, "InternalError", f"realism layer: {exc!r}", 500)
        if reply.reset:
            self._reset()
            return
        # One write for status line, headers and body: with Nagle's algorithm and delayed ACKs,
        # a body sent after its headers waits ~40 ms on loopback.
        lines = [f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, '')}"]
        lines += [f"{key}: {value}" for key, value in reply.headers if key.lower() != "content-length"]
        if self.command == "HEAD":
            length = reply.header("Content-Length")
            lines.append(f"Content-Length: {length if length is not None else len(reply.body)}")
        else:
            lines.append(f"Content-Length: {len(reply.body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + reply.body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Drop the connection with a TCP RST: the client sees 'connection reset by peer'."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def finish(self):
        with contextlib.suppress(OSError):
            super().finish()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _proxy  # noqa: N815


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    realism: Realism
    upstream: Upstream
    errors: list[str]


class RealismProxy:
    """The realism layer on 127.0.0.1 (a free port), forwarding to moto at `moto_url`."""

    def __init__(self, moto_url: str, realism: Realism | None = None):
        self.moto_url = moto_url
        self.realism = realism or Realism()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def errors(self) -> list[str]:
        """Exceptions inside the layer (answered as 500 InternalError); tests assert it is empty."""
        return self._server.errors if self._server else []

    def start(self) -> RealismProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.realism, server.upstream, server.errors = self.realism, Upstream(self.moto_url), []
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="aws-realism", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RealismProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
