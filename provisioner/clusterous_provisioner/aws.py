"""boto3 sessions and clients with the retry policy and error wording every command shares.

The standard AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>) is honoured by botocore itself,
so the same code reaches real AWS or a local moto server.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from clusterous_core.errors import BadInput, Failure

USER_AGENT = "clusterous-k8s"


def cache_dir() -> Path:
    """What may be thrown away and fetched again (prices, the region list): $XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clusterous-k8s"


@lru_cache(maxsize=4)
def _session(environment: tuple):
    import boto3

    return boto3.session.Session()


def session(region: str | None = None):
    """The command's one boto3 session (one botocore session), so service models, endpoint data and
    credentials are loaded once whatever the number of clients. Keyed by the AWS_* environment (a
    process that changes it, like the tests, gets a fresh one). The region is given per client
    (`client`), never set on the shared session; `region` is accepted for callers' clarity."""
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "BOTOCORE_"))))
    return _session(environment)


def client(service: str, region: str | None = None, sess=None):
    """A client with botocore's adaptive retries: throttling is normal on AWS, not an error."""
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": 10},
        user_agent_extra=USER_AGENT,
        connect_timeout=10,
        read_timeout=60,
    )
    return (sess or session(region)).client(service, region_name=region, config=config)


def known_regions() -> list[str]:
    """EC2 regions from botocore's bundled endpoint data: works offline. Reading that data takes
    longer than a describe call, so the list is cached per botocore version."""
    import botocore

    path = cache_dir() / f"regions-botocore-{botocore.__version__}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    sess = session()._session  # the botocore session
    regions = set()
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        regions.update(sess.get_available_regions("ec2", partition_name=partition))
    found = sorted(regions)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(found))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: just slower
    return found


def check_region(region: str, source: str = "--region") -> str:
    if region not in known_regions():
        raise BadInput(source, None, "an AWS region such as us-east-1 or eu-west-1", region)
    return region


CONTINUE_HINT = "re-run `clusterous-k8s up` to continue, or `clusterous-k8s down` to remove what exists"


@contextlib.contextmanager
def aws_errors(action: str, next_step: str = CONTINUE_HINT) -> Iterator[None]:
    """Turn botocore's exceptions into one plain sentence with AWS's reason and what to do next."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        WaiterError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise Failure(
            f"{action}: no AWS credentials found",
            "configure them with `aws configure` or `aws sso login`, or set AWS_PROFILE",
        ) from None
    except NoRegionError:
        raise BadInput("--region", None, "an AWS region (or set AWS_DEFAULT_REGION)") from None
    except EndpointConnectionError as exc:
        raise Failure(
            f"{action}: cannot reach AWS ({exc})", "check the network and AWS_ENDPOINT_URL"
        ) from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code, message = err.get("Code", "Error"), err.get("Message", str(exc))
        raise Failure(f"{action}: AWS refused: {code}: {message}", next_step) from None
    except WaiterError as exc:
        raise Failure(f"{action}: gave up waiting: {exc.last_response or exc}", next_step) from None
