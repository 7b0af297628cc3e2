"""Shared-volume transfers with rsync: one `ssh` connection, one remote command, no question asked first.

Why one remote command: every round trip before rsync starts costs a whole SSH exec (a third of a
second on a slow link), and a path checked in one step and used in another can be swapped by a pod
in between (any pod can write the volume). So rsync's remote end is started through a small `sh`
script given as `--rsync-path` (rsync passes it to the remote shell verbatim, its own
`--server ...` arguments appended). The script:

1. ends with the marker `NO_RSYNC` (exit 127) when the controller has no rsync, which sends the
   caller to SFTP. rsync's own exit code cannot say it: the client exits with the larger of its own
   code and the remote command's status only if `ssh` has already exited when it looks
   (cleanup.c, `wait_process(..., WNOHANG)`), so a missing remote rsync shows as code 12 or 127;
2. enters the root and then each directory of the path one at a time with `cd -P`, creating
   missing ones for `put`, refusing any symlink, and checks that it physically stands at the
   root's resolved path plus those directories (a swap between a test and the `cd` shows up
   there, as in `rm`). From then on rsync works relative to that pinned directory;
3. decides what rsync reads or writes (`.` or `./NAME`) and puts it in place of the placeholder
   the client passed as the remote path, then `exec`s rsync.

The remote path therefore never travels as the client's argument: rsync only sends a fixed
placeholder (no `--secluded-args` needed; the real names reach the script quoted by `shlex`), and
the script alone knows whether the remote path is a file or a directory. Refusals print
`clusterous-k8s: refused WHY PATH` on stderr and exit 100.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import PurePosixPath

from clusterous_cli import openssh
from clusterous_cli.endpoint import ControllerEndpoint
from clusterous_cli.transfer import Report
from clusterous_core.errors import BadInput, Failure

# PLACEHOLDER, NO_RSYNC, INTO and the `refused` lines are spelled out in SCRIPT too.
PLACEHOLDER = ".clusterous-k8s-path/"
NO_RSYNC = "clusterous-k8s: no rsync on the controller"
REFUSED = re.compile(r"clusterous-k8s: refused (\w+) ?(.*)")
INTO = "clusterous-k8s: into directory"
ITEM = re.compile(r"^([<>ch.*][fdLDS][^ ]{7,10}) +(\d+) (.+)$")
DELETING = re.compile(r"^\*deleting +(?:\d+ )?(.+)$")
PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%")
IN_THE_WAY = re.compile(r"destination must be a directory|cannot overwrite non-directory with a directory")

# sh -c SCRIPT clusterous-rsync MODE ROOT NAME LOCALNAME N DIR1..DIRN RSYNC-SERVER-ARGS...
# MODE: put-dir (DIRs end with the target itself), put-file (NAME is the target, LOCALNAME the
# file's own name), get (NAME is what is read; empty for the root).
SCRIPT = r"""
refuse() { echo "clusterous-k8s: refused $1 $2" >&2; exit 100; }
command -v rsync >/dev/null 2>&1 || { echo "clusterous-k8s: no rsync on the controller" >&2; exit 127; }
mode=$1 name=$3 localname=$4 n=$5
cd -P -- "$2" 2>/dev/null || refuse noroot "$2"
root=$(pwd -P) here=
shift 5
while [ "$n" -gt 0 ]; do
    dir=$1 n=$((n - 1))
    shift
    [ -L "$dir" ] && refuse link "${here#/}${here:+/}$dir"
    if [ "$mode" != get ] && [ ! -e "$dir" ]; then mkdir -- "$dir" 2>/dev/null; fi
    { [ -d "$dir" ] && [ ! -L "$dir" ]; } || refuse notdir "${here#/}${here:+/}$dir"
    cd -P -- "$dir" || exit 1
    here="$here/$dir"
done
pinned() { [ "$(pwd -P)" = "$root$here" ] || refuse swapped "${here#/}"; }
pinned
path=.
case $mode in
put-file)
    if [ -L "$name" ]; then refuse link "${here#/}${here:+/}$name"
    elif [ -d "$name" ]; then
        cd -P -- "$name" || exit 1
        here="$here/$name"
        pinned
        { [ -L "$localname" ] || [ -d "$localname" ]; } && refuse notfile "${here#/}/$localname"
        echo "clusterous-k8s: into directory" >&2
    elif [ -e "$name" ] && [ ! -f "$name" ]; then refuse special "${here#/}${here:+/}$name"
    else path=./$name
    fi ;;
get)
    if [ -z "$name" ]; then path=./
    elif [ -L "$name" ]; then refuse link "${here#/}${here:+/}$name"
    elif [ -d "$name" ]; then
        cd -P -- "$name" || exit 1
        here="$here/$name"
        pinned
        path=./
    elif [ -f "$name" ]; then path=./$name
    else refuse missing "${here#/}${here:+/}$name"
    fi ;;
esac
for arg do
    shift
    [ "$arg" = .clusterous-k8s-path/ ] && arg=$path
    set -- "$@" "$arg"
done
exec rsync "$@"
"""


def remote_command(mode: str, root: str, dirs: tuple[str, ...], name: str = "", local_name: str = "") -> str:
    """The `--rsync-path` value: the script above with its arguments, quoted for the remote shell."""
    return shlex.join(
        ["sh", "-c", SCRIPT, "clusterous-rsync", mode, root, name, local_name, str(len(dirs)), *dirs]
    )


def rsync_argv(
    endpoint: ControllerEndpoint,
    source: str,
    destination: str,
    remote: str,
    extra: tuple[str, ...] = (),
    control_socket: str | None = None,
    progress: bool = True,
) -> list[str]:
    """rsync with our pinned ssh; no owner/group (the login user owns the volume's files).
    `progress`: rsync reports its progress (`--info=progress2`) only for a bar that is shown.

    With `control_socket` (the tunnel supervisor's live OpenSSH master, same pinned options) ssh
    opens its session through the master: no new TCP connection, key exchange or login. Should
    the master be gone, ssh connects by itself (`ControlMaster=no` never starts or removes one).
    `%l` (the file's length) comes before `%n` so that names with spaces stay whole."""
    mux = ["-o", f"ControlPath={control_socket}", "-o", "ControlMaster=no"] if control_socket else []
    return [
        "rsync",
        "-rlpt",
        "--safe-links",
        "--out-format=%i %l %n",
        *(["--info=progress2"] if progress else []),
        *extra,
        "-e",
        shlex.join(["ssh", *mux, *openssh.options(endpoint)]),
        "--rsync-path",
        remote,
        source,
        destination,
    ]


def remote_spec(endpoint: ControllerEndpoint) -> str:
    """`host:PLACEHOLDER`, the remote side as rsync sees it; the script puts the real path in."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{PLACEHOLDER}"


def local_spec(path: str) -> str:
    """A local path rsync cannot take for a remote one: `data:2024` would name host `data`."""
    return path if path.startswith(("/", "./", "../")) else f"./{path}"


def only_rules(files: list[str]) -> str:
    """An rsync filter file that lets exactly `files` (and their folders) through, anchored at the
    transfer's root; a backslash escapes wildcard characters only in patterns that have one."""

    def literal(path: str) -> str:
        return re.sub(r"([*?\[\\])", r"\\\1", path) if re.search(r"[*?\[]", path) else path

    folders = sorted({"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)})
    rules = [f"+ /{literal(d)}/" for d in folders] + [f"+ /{literal(f)}" for f in files]
    return "\n".join([*rules, "- *", ""])


@contextlib.contextmanager
def selection(only: list[str] | None, delete: bool):
    """rsync's extra arguments for `only` (a filter file, removed afterwards) and `delete`."""
    extra = ["--delete", "--delete-excluded"] if delete else []
    if only is None:
        yield tuple(extra)
        return
    import tempfile

    with tempfile.NamedTemporaryFile("w", prefix="clusterous-only-", suffix=".rules") as rules:
        rules.write(only_rules(only))
        rules.flush()
        yield (*extra, f"--filter=merge {rules.name}")


class NoRemoteRsync(Exception):
    """The controller has no rsync: the caller falls back to SFTP."""


def run(argv: list[str], report: Report, figures, rel: PurePosixPath, endpoint: ControllerEndpoint) -> str:
    """Run rsync, turning its itemized lines into the report and its progress2 lines into
    `figures(done, percent)` (None: no bar is shown, and rsync was not asked for them);
    returns rsync's stderr (the script's notes are in it)."""
    if not endpoint.key_file.is_file():  # ssh would only say "Permission denied"
        raise BadInput(str(endpoint.key_file), None, "the cluster's private SSH key (file not found)")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buffer = b""
    stdout = process.stdout
    assert isinstance(stdout, io.BufferedReader)  # PIPE with the default bufsize: buffered
    while chunk := stdout.read1(65536):
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            _line(raw.decode(errors="replace"), report, figures)
    _line(buffer.decode(errors="replace"), report, figures)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    code = process.wait()
    if NO_RSYNC in stderr:
        raise NoRemoteRsync()
    if match := REFUSED.search(stderr):
        raise _refusal(match.group(1), match.group(2), rel)
    if code != 0:
        if IN_THE_WAY.search(stderr):  # get: a local file where a directory must land
            raise BadInput("LOCAL", None, "a directory path (a file is in the way)")
        errors = [line for line in stderr.splitlines() if "ERROR" in line] or stderr.strip().splitlines()
        raise _ssh_failure(stderr, endpoint) or Failure(
            f"rsync failed: {errors[-1].strip() if errors else f'exit code {code}'}",
            "re-run the command; only what is missing will be sent",
        )
    return stderr


def _ssh_failure(stderr: str, endpoint: ControllerEndpoint) -> Exception | None:
    """ssh's own refusals (in rsync's stderr) as the messages our paramiko connection gives."""
    from clusterous_cli import hostkeys, ssh

    if "Host key verification failed" in stderr:
        return hostkeys.Refusal(
            f"the controller {endpoint.host} did not present the pinned host key (ssh: Host key verification failed)",
            f"if the controller was replaced: `{hostkeys.RELEARN}`",
        )
    if "Permission denied" in stderr:
        return ssh.key_refused(endpoint)
    if match := re.search(r"ssh: connect to host .*?: (.+)", stderr):
        return ssh.unreachable(f"{endpoint.host}:{endpoint.port}", match.group(1).strip())
    return None


def _refusal(why: str, where: str, rel: PurePosixPath) -> Exception:
    if why == "noroot":
        return Failure(
            f"the shared volume {where} does not exist on the controller",
            "is the cluster fully up? (`clusterous-k8s status`)",
        )
    expected = {
        "link": f"a path inside the shared volume (no symlink on the way; {where} is one)",
        "swapped": "a path on the shared volume that no symlink leads out of (a directory was replaced)",
        "notdir": f"a directory path ({where} is in the way and is not a directory)",
        "notfile": f"a file path ({where} is a directory or symlink)",
        "special": f"a regular file or a new name at {where} (it is a special file)",
        "missing": "an existing path on the shared volume",
    }.get(why, f"a path the controller accepts ({why} {where})")
    return BadInput("REMOTE", None, expected, str(rel))


def _line(line: str, report: Report, figures) -> None:
    if match := DELETING.match(line):
        report.deleted.append(match.group(1).strip())
    elif match := ITEM.match(line):
        item, size, name = match.groups()
        if item[1] == "f" and item[0] in "<>":
            report.transferred.append(name)
            report.bytes += int(size)
    elif figures and (match := PROGRESS.match(line)):
        figures(int(match.group(1).replace(",", "")), int(match.group(2)))


def put(via, local, rel: PurePosixPath, into_dir: bool, only, delete, report, figures) -> None:
    """A tree lands exactly at rel (the script creates and enters it); a file lands at rel, or
    inside it when rel is a directory (`into_dir`, or found so by the script). `via`: (endpoint,
    the master's socket or None)."""
    endpoint, control_socket = via
    parts = () if str(rel) == "." else rel.parts
    copy_links: tuple[str, ...]
    if local.is_dir():
        remote = remote_command("put-dir", endpoint.shared_root, parts)
        source, copy_links = local_spec(str(local)) + "/", ()
    else:
        dirs, name = (parts, "") if into_dir or not parts else (parts[:-1], parts[-1])
        remote = remote_command("put-file", endpoint.shared_root, dirs, name, local.name)
        source, copy_links = local_spec(str(local)), ("--copy-links",)  # the file, as SFTP sends it
    with selection(only, delete) as extra:
        argv = rsync_argv(
            endpoint,
            source,
            remote_spec(endpoint),
            remote,
            (*copy_links, *extra),
            control_socket,
            figures is not None,
        )
        stderr = run(argv, report, figures, rel, endpoint)
    if not local.is_dir() and report.transferred:
        landed = rel / local.name if into_dir or not parts or INTO in stderr else rel
        report.transferred = [str(landed)]


def get(via, rel: PurePosixPath, local, report, figures) -> None:
    """A directory's contents land exactly at the destination, a file at it or inside it when it
    is a directory: rsync's own rules, once the script has put `./` or `./NAME` in as the source."""
    endpoint, control_socket = via
    parts = () if str(rel) == "." else rel.parts
    remote = remote_command("get", endpoint.shared_root, parts[:-1], parts[-1] if parts else "")
    destination = local_spec(str(local if local is not None else (parts[-1] if parts else "shared")))
    argv = rsync_argv(
        endpoint,
        remote_spec(endpoint),
        destination,
        remote,
        control_socket=control_socket,
        progress=figures is not None,
    )
    run(argv, report, figures, rel, endpoint)
