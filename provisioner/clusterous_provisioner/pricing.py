"""Prices: a bundled table for offline plans, the AWS Pricing API for what it lacks.

On-demand Linux prices in USD (public AWS price lists, 2024-2025), for the families a scientist
typically picks, in the regions most used. Each family is priced by its `.large` size; other sizes
scale linearly, as AWS prices them. Spot is priced at the on-demand rate (an upper bound).

With credentials, an instance type the table lacks is priced by the AWS Pricing API (GetProducts,
us-east-1 endpoint) and the answer cached per region for 30 days under the cache directory. An
instance type nobody priced is reported as unpriced, never guessed, and the total then says it is
a lower bound. Instance types are checked, offline, against botocore's own list (the EC2 service
model's InstanceType enum), so a typo is caught before anything is asked of AWS.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from clusterous_core.errors import BadInput

HOURS_PER_MONTH = 730.0

# Multiple of the `.large` price (2 vCPUs) per size.
SIZE_FACTOR = {
    "nano": 1 / 16,
    "micro": 1 / 8,
    "small": 1 / 4,
    "medium": 1 / 2,
    "large": 1,
    "xlarge": 2,
    "2xlarge": 4,
    "4xlarge": 8,
    "8xlarge": 16,
    "9xlarge": 18,
    "12xlarge": 24,
    "16xlarge": 32,
    "18xlarge": 36,
    "24xlarge": 48,
    "32xlarge": 64,
}
FAMILY_SIZES = {
    "t3": ["nano", "micro", "small", "medium", "large", "xlarge", "2xlarge"],
    "t3a": ["nano", "micro", "small", "medium", "large", "xlarge", "2xlarge"],
    "m5": ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"],
    "m6i": [
        "large",
        "xlarge",
        "2xlarge",
        "4xlarge",
        "8xlarge",
        "12xlarge",
        "16xlarge",
        "24xlarge",
        "32xlarge",
    ],
    "c5": ["large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge"],
    "c6i": [
        "large",
        "xlarge",
        "2xlarge",
        "4xlarge",
        "8xlarge",
        "12xlarge",
        "16xlarge",
        "24xlarge",
        "32xlarge",
    ],
    "r5": ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"],
}
# Hourly on-demand price of <family>.large per region.
LARGE_PRICE = {
    "us-east-1": {
        "t3": 0.0832,
        "t3a": 0.0752,
        "m5": 0.096,
        "m6i": 0.096,
        "c5": 0.085,
        "c6i": 0.085,
        "r5": 0.126,
    },
    "us-east-2": {
        "t3": 0.0832,
        "t3a": 0.0752,
        "m5": 0.096,
        "m6i": 0.096,
        "c5": 0.085,
        "c6i": 0.085,
        "r5": 0.126,
    },
    "us-west-2": {
        "t3": 0.0832,
        "t3a": 0.0752,
        "m5": 0.096,
        "m6i": 0.096,
        "c5": 0.085,
        "c6i": 0.085,
        "r5": 0.126,
    },
    "eu-west-1": {
        "t3": 0.0912,
        "t3a": 0.0816,
        "m5": 0.107,
        "m6i": 0.107,
        "c5": 0.096,
        "c6i": 0.096,
        "r5": 0.141,
    },
    "eu-west-2": {
        "t3": 0.0944,
        "t3a": 0.0848,
        "m5": 0.111,
        "m6i": 0.111,
        "c5": 0.101,
        "c6i": 0.101,
        "r5": 0.148,
    },
    "eu-central-1": {
        "t3": 0.096,
        "t3a": 0.0864,
        "m5": 0.115,
        "m6i": 0.115,
        "c5": 0.097,
        "c6i": 0.097,
        "r5": 0.152,
    },
    "ap-southeast-2": {
        "t3": 0.1056,
        "t3a": 0.0952,
        "m5": 0.12,
        "m6i": 0.12,
        "c5": 0.111,
        "c6i": 0.111,
        "r5": 0.151,
    },
}
NAT_GATEWAY_HOURLY = {
    "us-east-1": 0.045,
    "us-east-2": 0.045,
    "us-west-2": 0.045,
    "eu-west-1": 0.048,
    "eu-west-2": 0.05,
    "eu-central-1": 0.052,
    "ap-southeast-2": 0.059,
}
PUBLIC_IPV4_HOURLY = 0.005  # every public IPv4 address (EIP or auto-assigned), all regions
GP3_GIB_MONTH = {
    "us-east-1": 0.08,
    "us-east-2": 0.08,
    "us-west-2": 0.08,
    "eu-west-1": 0.088,
    "eu-west-2": 0.0928,
    "eu-central-1": 0.0952,
    "ap-southeast-2": 0.096,
}


@dataclass(frozen=True)
class Price:
    """An hourly price, or None with the reason it is unknown."""

    hourly_usd: float | None
    note: str = ""


def instance_hourly(instance_type: str, region: str, fetched: Mapping[str, float] | None = None) -> Price:
    """The bundled table's price, else one the Pricing API gave (`fetched`), else unknown."""
    if fetched and fetched.get(instance_type) is not None:
        return Price(fetched[instance_type], "AWS Pricing API")
    family, _, size = instance_type.partition(".")
    table = LARGE_PRICE.get(region)
    if table is None:
        return Price(None, f"no bundled prices for region {region}")
    if family not in table or size not in FAMILY_SIZES.get(family, []):
        return Price(None, f"no bundled price for {instance_type}")
    return Price(round(table[family] * SIZE_FACTOR[size], 6))


def nat_gateway_hourly(region: str) -> Price:
    value = NAT_GATEWAY_HOURLY.get(region)
    return Price(value, "" if value is not None else f"no bundled prices for region {region}")


def public_ip_hourly(region: str) -> Price:
    return Price(PUBLIC_IPV4_HOURLY)


def gp3_hourly(size_gib: int, region: str) -> Price:
    value = GP3_GIB_MONTH.get(region)
    if value is None:
        return Price(None, f"no bundled prices for region {region}")
    return Price(round(size_gib * value / HOURS_PER_MONTH, 6))


def bundled(instance_type: str, region: str) -> bool:
    return instance_hourly(instance_type, region).hourly_usd is not None


# --- instance types, offline ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def ec2_instance_types() -> frozenset[str]:
    """Every instance type botocore's EC2 model knows (its InstanceType enum): offline, current as
    the installed botocore."""
    import botocore.model
    import botocore.session

    shape = botocore.session.get_session().get_service_model("ec2").shape_for("InstanceType")
    assert isinstance(shape, botocore.model.StringShape)  # an enum is a string shape's
    return frozenset(shape.enum)


def check_instance_type(value: str, source: str, field: str | None = None) -> str:
    """A known instance type, or BadInput naming the closest known ones."""
    known = ec2_instance_types()
    if value in known:
        return value
    close = difflib.get_close_matches(value, sorted(known), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else " such as t3.large"
    raise BadInput(source, field, f"an EC2 instance type{hint}", value)


# Graviton families carry a `g` after the generation digit (m6g, c7gn, t4g, x2gd, im4gn); a1 too.
_ARM_FAMILY = re.compile(r"^(a1|[a-z]+\d+[a-z]*g[a-z]*)$")


def likely_architecture(instance_type: str) -> str:
    """arm64 or x86_64 from the type's name, for plans made without AWS (DescribeInstanceTypes is
    the authority when credentials exist)."""
    family = instance_type.partition(".")[0].split("-")[0]
    return "arm64" if _ARM_FAMILY.match(family) else "x86_64"


# --- the Pricing API, cached ------------------------------------------------------------------------

CACHE_SECONDS = 30 * 24 * 3600
PRICING_REGION = "us-east-1"  # GetProducts endpoints: us-east-1, eu-central-1, ap-south-1


def _cache_file(cache_dir: Path, region: str) -> Path:
    return cache_dir / "prices" / f"{region}.json"


def cached_prices(cache_dir: Path | None, region: str, now: float | None = None) -> dict[str, float]:
    """Instance prices fetched for `region` less than 30 days ago (never raises)."""
    if cache_dir is None:
        return {}
    now = time.time() if now is None else now
    try:
        entries = json.loads(_cache_file(cache_dir, region).read_text())["instances"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        t: e["usd"]
        for t, e in entries.items()
        if isinstance(e, dict) and e.get("usd") is not None and now - e.get("at", 0) < CACHE_SECONDS
    }


def _store(cache_dir: Path, region: str, fresh: dict[str, float], now: float) -> None:
    path = _cache_file(cache_dir, region)
    try:
        entries = json.loads(path.read_text())["instances"]
    except (OSError, ValueError, KeyError, TypeError):
        entries = {}
    entries.update({t: {"usd": usd, "at": now} for t, usd in fresh.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"instances": entries}, indent=1, sort_keys=True))
    os.replace(tmp, path)


def parse_on_demand(price_list: list) -> float | None:
    """The hourly USD price from GetProducts' PriceList (JSON documents, or strings of them):
    terms.OnDemand.<offer>.priceDimensions.<rate>.pricePerUnit.USD of the first product."""
    for item in price_list:
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None and dimension.get("unit", "Hrs") in ("Hrs", "Hours"):
                    return float(usd)
    return None


def product_filters(region: str, instance_type: str) -> list[dict]:
    """Linux, shared tenancy, no pre-installed software, the on-demand capacity of `region`."""
    fields = {
        "regionCode": region,
        "instanceType": instance_type,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def pricing_client(session=None):
    """The Pricing API client: few retries and short timeouts, since a price is never worth
    holding a command up (the bundled table and 'not priced' remain)."""
    from botocore.config import Config

    from clusterous_provisioner import aws

    config = Config(
        retries={"mode": "standard", "max_attempts": 2},
        user_agent_extra=aws.USER_AGENT,
        connect_timeout=5,
        read_timeout=10,
    )
    return (session or aws.session(PRICING_REGION)).client(
        "pricing", region_name=PRICING_REGION, config=config
    )


def fetch_prices(
    client, region: str, instance_types: list[str], cache_dir: Path | None, report=lambda m: None
) -> dict[str, float]:
    """Prices of the types the table lacks: from the cache, else one GetProducts call each (then
    cached). A refusal or an unreachable API leaves the type unpriced, with one line saying why."""
    now = time.time()
    prices = cached_prices(cache_dir, region, now)
    wanted = [t for t in sorted(set(instance_types)) if t not in prices and not bundled(t, region)]
    fresh: dict[str, float] = {}
    for instance_type in wanted:
        try:
            answer = client.get_products(
                ServiceCode="AmazonEC2", Filters=product_filters(region, instance_type), MaxResults=10
            )
        except Exception as exc:  # noqa: BLE001 - no price is "not priced", never a failed command
            report(f"AWS Pricing API unavailable ({type(exc).__name__}): {', '.join(wanted)} not priced")
            break
        usd = parse_on_demand(answer.get("PriceList", []))
        if usd is not None:
            fresh[instance_type] = usd
    if fresh and cache_dir is not None:
        _store(cache_dir, region, fresh, now)
    return prices | fresh
