"""Offline prices: `up --dry-run` states a cost per hour with no credentials and no Pricing API.

On-demand Linux prices in USD (public AWS price lists, 2024-2025), for the families a scientist
typically picks, in the regions most used. Each family is priced by its `.large` size; other sizes
scale linearly, as AWS prices them. Spot is priced at the on-demand rate (an upper bound). An
instance type or region missing from the table is reported as unpriced, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def instance_hourly(instance_type: str, region: str) -> Price:
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


def known_instance_types() -> list[str]:
    return sorted(f"{family}.{size}" for family, sizes in FAMILY_SIZES.items() for size in sizes)
