"""`profile ls/use/show/rm`: the account/region settings `setup` wrote."""

from __future__ import annotations

import typer

from clusterous_cli.commands.options import JSON_OPTION, YES_OPTION

app = typer.Typer(
    help="List, select, show and remove configuration profiles.\n\nExample: clusterous-k8s profile use work",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: flags without placeholders, every [default] shown
)


def _profile_option(ctx: typer.Context) -> str | None:
    return ctx.obj.profile if ctx.obj else None


@app.command(
    "ls", help="List profiles; the current one is marked.\n\nExample: clusterous-k8s profile ls --json"
)
def list_profiles(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    from clusterous_cli import config, output

    current = config.selected_profile_name(_profile_option(ctx))
    rows = []
    for name in config.profile_names():
        profile = config.load_profile(name)
        rows.append({"name": name, "current": name == current, **profile._asdict()})
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.say("no profiles yet: run `clusterous-k8s setup`")
        return
    output.print_table(
        "profiles",
        ["", "name", "region", "bucket", "key pair", "cluster"],
        [
            (
                "*" if r["current"] else "",
                r["name"],
                r["region"],
                r["bucket"],
                r["key_name"] or "(per cluster)",
                r["current_cluster"] or "",
            )
            for r in rows
        ],
    )


@app.command("use", help="Make NAME the default profile.\n\nExample: clusterous-k8s profile use work")
def use(name: str = typer.Argument(..., metavar="NAME", help="Profile name.")) -> None:
    from clusterous_cli import config, output

    config.use_profile(config.check_profile_name(name, "NAME"))
    output.say(f"now using profile '{name}'")


@app.command(
    "show", help="Show one profile (default: the current one).\n\nExample: clusterous-k8s profile show --json"
)
def show(
    ctx: typer.Context,
    name: str = typer.Argument(None, metavar="NAME", help="Profile name; default: the current profile."),
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import config, output

    name = name or config.selected_profile_name(_profile_option(ctx))
    profile = config.load_profile(name)
    data = {"name": name, "path": str(config.profile_path(name)), **profile._asdict()}
    if as_json:
        output.print_json(data)
    else:
        output.print_table(
            f"profile {name}", ["setting", "value"], [(k, v) for k, v in data.items() if k != "name"]
        )


@app.command(
    "rm",
    help="Remove a profile (AWS resources are untouched).\n\nExample: clusterous-k8s profile rm old --yes",
)
def remove(
    name: str = typer.Argument(..., metavar="NAME", help="Profile name."),
    yes: bool = YES_OPTION,
) -> None:
    from clusterous_cli import config, output

    config.load_profile(config.check_profile_name(name, "NAME"))
    if not yes and not typer.confirm(f"Remove profile '{name}'?", default=False):
        raise typer.Abort()
    config.remove_profile(name)
    output.say(f"removed profile '{name}'")
