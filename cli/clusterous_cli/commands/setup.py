"""`setup`: the wizard that writes a profile (region, key pair, registry bucket).

AWS credentials are never asked for: boto3's chain (environment, ~/.aws, SSO) supplies them.
"""

from __future__ import annotations

import typer

HELP = """Create or update a profile: region, EC2 key pair and registry bucket.

Asks for each value with a sensible default; pass flags and --yes to run it unattended.
AWS credentials come from the usual places (environment, ~/.aws, SSO) and are never stored.

Example: clusterous-k8s setup --profile-name work --region eu-west-1 --yes
"""

PER_CLUSTER = "per-cluster"


def setup(
    ctx: typer.Context,
    profile_name: str = typer.Option(None, "--profile-name", help="Name of the profile to write [default]."),
    region: str = typer.Option(None, "--region", help="AWS region [from the AWS config, else us-east-1]."),
    key_name: str = typer.Option(
        None, "--key-name", help=f"EC2 key pair to use or create; '{PER_CLUSTER}' makes one per cluster."
    ),
    key_file: str = typer.Option(None, "--key-file", help="Private key of an existing --key-name."),
    bucket: str = typer.Option(None, "--bucket", help="S3 bucket for images, created if missing."),
    ssh_cidr: str = typer.Option(None, "--ssh-cidr", help="Address range allowed to SSH [your address]."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Take the defaults instead of asking."),
) -> None:
    from clusterous_cli import config, output
    from clusterous_core.errors import BadInput
    from clusterous_provisioner import aws, keypairs
    from clusterous_provisioner import bucket as buckets

    def ask(question: str, given: str | None, default: str) -> str:
        if given is not None or yes:
            return given if given is not None else default
        return typer.prompt(question, default=default)

    global_profile = ctx.obj.profile if ctx.obj else None
    name = config.check_profile_name(
        ask("Profile name", profile_name, global_profile or config.DEFAULT_PROFILE), "--profile-name"
    )
    existing = config.load_profile(name) if config.profile_path(name).exists() else None

    default_region = (existing.region if existing else None) or aws.session().region_name or "us-east-1"
    region = aws.check_region(ask("AWS region", region, default_region))

    with aws.aws_errors("setup", "check your AWS credentials and region, then run setup again"):
        sess = aws.session(region)
        account = aws.client("sts", region, sess).get_caller_identity()["Account"]
        ec2 = aws.client("ec2", region, sess)

        default_key = (existing.key_name if existing and existing.key_name else None) or PER_CLUSTER
        key = ask(f"EC2 key pair ('{PER_CLUSTER}': one per cluster, deleted with it)", key_name, default_key)
        key_path = None
        if key != PER_CLUSTER:
            if keypairs.key_pair_exists(ec2, key):
                own = config.keys_dir() / f"{key}.pem"
                chosen = key_file or (existing.key_file if existing and existing.key_name == key else None)
                if chosen is None and own.exists():
                    chosen = str(own)
                if chosen is None:
                    chosen = ask(f"Private key file of '{key}'", None, str(own))
                key_path = keypairs.check_private_key_file(chosen)
            else:
                if key_file:
                    raise BadInput(
                        "--key-name", None, f"a key pair that exists in {region} to go with --key-file", key
                    )
                key_path = keypairs.create_key_pair(
                    ec2,
                    key,
                    {"clusterous:role": "key-pair", "clusterous:profile": name},
                    config.keys_dir() / f"{key}.pem",
                )
                output.say(f"created key pair '{key}'; private key in {key_path} (0600)")

        default_bucket = (existing.bucket if existing else None) or buckets.default_bucket_name(
            account, region
        )
        bucket_name = buckets.check_bucket_name(
            ask("S3 bucket for the image registry", bucket, default_bucket)
        )
        s3 = aws.client("s3", region, sess)
        if buckets.ensure_bucket(s3, bucket_name, region):
            output.say(f"created bucket '{bucket_name}' (private, encrypted)")
            bucket_region = region
        else:
            bucket_region = buckets.bucket_region(s3, bucket_name) or region
        if bucket_region != region:
            output.say(
                f"bucket '{bucket_name}' is in {bucket_region}: `up` makes clusters of this profile "
                f"only there (the registry uses S3 in the bucket's region)"
            )

    profile = config.Profile(
        region=region,
        bucket=bucket_name,
        bucket_region=bucket_region,
        key_name=None if key == PER_CLUSTER else key,
        key_file=str(key_path) if key_path else None,
        ssh_cidr=ssh_cidr or (existing.ssh_cidr if existing else None),
        jump_host=existing.jump_host if existing else None,
        current_cluster=existing.current_cluster if existing else None,
    )
    path = config.save_profile(name, profile)
    config.use_profile(name)
    output.say(f"profile '{name}' written to {path} and selected")
