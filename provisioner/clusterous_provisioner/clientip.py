"""The client's public address, for the one SSH rule: asked of checkip.amazonaws.com, never guessed."""

from __future__ import annotations

import ipaddress
import os

CHECKIP_URL = "https://checkip.amazonaws.com"
# Another service that answers a GET with the caller's address as text (a network whose egress
# blocks checkip.amazonaws.com, say). https only: the answer becomes the only SSH rule.
URL_ENV = "CLUSTEROUS_CHECKIP_URL"


def checkip_url() -> str:
    """$CLUSTEROUS_CHECKIP_URL, else checkip.amazonaws.com; bad input unless an https:// URL."""
    from urllib.parse import urlsplit

    from clusterous_core.errors import BadInput

    url = os.environ.get(URL_ENV) or CHECKIP_URL
    if urlsplit(url).scheme != "https" or not urlsplit(url).hostname:
        raise BadInput(f"${URL_ENV}", None, "an https:// URL that answers with your IPv4 address", url)
    return url


def discover_client_cidr(timeout: float = 5.0) -> str | None:
    """The caller's public IPv4 as a /32, or None if it cannot be found out."""
    import urllib.request

    url = checkip_url()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https checked above
            text = response.read(64).decode("ascii", "replace").strip()
        address = ipaddress.ip_address(text)
    except (OSError, ValueError):
        return None
    if address.version != 4:
        return None
    return f"{address}/32"
