"""A throwaway systemd machine for tests: this machine's own root booted by systemd-nspawn, with systemd as its
PID 1, written only to a copy-on-write layer in memory.

The root is an overlay of ``/`` (read-only below) and a tmpfs (the writable layer above), mounted in a mount
namespace of its own by a small shell wrapper that then starts ``systemd-nspawn --boot``; nothing is copied
and nothing the container writes reaches this machine's disk. The container has a network namespace of its
own (loopback only), is not registered with systemd-machined (this machine may have no systemd), and runs in a
control group made for it beside the test's own. Commands run inside through ``nsenter``.

The wrapper holds the test's end of a pipe on its standard input: when it closes, however the test ended
(teardown, a failure, the test process killed), the wrapper kills the container's PID 1 (which takes every
process in the container with it), waits for systemd-nspawn and removes the control groups; the mounts go
with the wrapper's mount namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

# The wrapper, run by `unshare --mount`: $1 the (empty) directory for the root, $2 the control groups to run
# systemd-nspawn in (colon-separated), then systemd-nspawn's arguments.
WRAPPER = r"""
set -eu
work=$1 cgroups=$2
shift 2
mount -t tmpfs -o mode=0755 nfnet-container "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
# systemd-nspawn keeps its own state under /run/systemd/nspawn: keep that in this namespace as well.
mount -t tmpfs -o mode=0755 nfnet-run /run
set +e
exec 3<&0
(
    for cgroup in ${cgroups//:/ }; do echo "$BASHPID" > "$cgroup/cgroup.procs"; done
    exec systemd-nspawn --directory="$work/root" "$@" 3<&-
) &
nspawn=$!
cat <&3 > /dev/null &  # until the test closes its end
watcher=$!
wait -n  # for whichever ends first
for init in $(cat "/proc/$nspawn/task/$nspawn/children" 2>/dev/null); do kill -KILL "$init"; done
kill "$watcher" 2>/dev/null
wait "$nspawn"
status=$?
for cgroup in ${cgroups//:/ }; do
    for _ in $(seq 50); do
        find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null && break
        sleep 0.1  # the killed processes are still leaving their groups
    done
done
exit $status
"""


class ContainerUnavailable(Exception):
    """This machine cannot boot a container (the reason is the message): tests skip."""


def unavailable_reason() -> str | None:
    """Why a container cannot be booted here, from what can be checked without trying; None if it may."""
    for program, package in (("systemd-nspawn", "Debian's systemd-container"), ("unshare", "util-linux"),
                             ("nsenter", "util-linux")):
        if shutil.which(program) is None:
            return f"{program} is not installed ({package})"
    if os.geteuid() != 0:
        return "booting a container needs root (mounts, namespaces, control groups)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system for the container's copy-on-write root"
    if not cgroup_parents():
        return "no cgroup2 or name=systemd control group hierarchy is mounted"
    return None


def cgroup_parents() -> list[Path]:
    """This process's own control group in each hierarchy that systemd uses (cgroup2, and v1's name=systemd on a
    hybrid machine): the container's groups are made beside the test's."""
    mounts: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[separator + 3].split(",")
        key = "0::" if fstype == "cgroup2" else "name=systemd" if fstype == "cgroup" and "name=systemd" in options \
            else None
        if key is not None and fields[3] == "/":
            mounts.setdefault(key, fields[4])
    parents = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        key = "0::" if number == "0" and controllers == "" else controllers
        if key in mounts:
            parents.append(Path(mounts[key] + path.rstrip("/")))
    return parents


class Container:
    """A container: :meth:`boot` starts it, :meth:`close` (call it whatever happened) tears it down."""

    def __init__(self, workdir: Path, binds: dict[Path, str], boot_timeout_s: float = 90.0) -> None:
        """``binds``: directories of this machine to show read-only inside, by their path in the container."""
        self.name = f"nfnet-test-{uuid.uuid4().hex[:12]}"
        self.workdir = workdir
        self.log_path = workdir.parent / f"{self.name}.log"
        self._binds = binds
        self._boot_timeout_s = boot_timeout_s
        self._cgroups = [parent / self.name for parent in cgroup_parents()]
        self._wrapper: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self) -> None:
        self.workdir.mkdir(parents=True)
        for cgroup in self._cgroups:
            try:
                cgroup.mkdir()
            except OSError as exc:
                raise ContainerUnavailable(f"cannot make the container's control group: {exc}") from None
        nspawn = ["--machine", self.name, "--register=no", "--keep-unit", "--private-network", "--link-journal=no",
                  "--resolv-conf=off", "--timezone=off", "--console=read-only", "--quiet",
                  *(f"--bind-ro={source}:{target}" for source, target in self._binds.items()),
                  # Only the basic system: not the services this machine happens to have enabled.
                  "--boot", "--", "systemd.unit=basic.target"]
        with open(self.log_path, "wb") as log:
            self._wrapper = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "bash", "-c", WRAPPER, "nfnet-container",
                 str(self.workdir), ":".join(map(str, self._cgroups)), *nspawn],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"]})
        deadline = time.monotonic() + self._boot_timeout_s
        while not self.init_pid:
            self._check_alive("while starting")
            self.init_pid = self._find_init()
            if time.monotonic() > deadline:
                raise ContainerUnavailable(f"systemd-nspawn started no container in {self._boot_timeout_s:.0f}s:\n"
                                           f"{self.log()}")
            time.sleep(0.1)
        while True:
            self._check_alive("while booting")
            state = self.run("systemctl is-system-running --wait", check=False,
                             timeout_s=max(1.0, deadline - time.monotonic())).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise ContainerUnavailable(f"the container did not finish booting in {self._boot_timeout_s:.0f}s "
                                           f"(state {state!r}):\n{self.log()}")
            time.sleep(0.2)  # systemd is not listening yet

    def run(self, command: str, check: bool = True, timeout_s: float = 120.0, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``command`` (bash) inside the container as root, in a clean environment (``env`` added to it)."""
        environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                       "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", **(env or {})}
        argv = ["nsenter", "--target", str(self.init_pid), "--all", "--", "env", "-i",
                *(f"{key}={value}" for key, value in environment.items()), "bash", "-c", command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"in the container, {command!r} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """``inside`` the container, as this machine reaches it (through its PID 1's root)."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def log(self) -> str:
        """systemd-nspawn's output and the container's console."""
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def close(self) -> None:
        if self._wrapper is not None:
            if self._wrapper.stdin is not None:
                self._wrapper.stdin.close()  # the wrapper kills the container and cleans up
            try:
                self._wrapper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.init_pid:
                    _kill(self.init_pid)
                self._wrapper.kill()
                self._wrapper.wait()
            self._wrapper = None
        for cgroup in self._cgroups:  # normally gone already
            for directory in sorted(cgroup.rglob("*"), reverse=True) if cgroup.exists() else []:
                if directory.is_dir():
                    directory.rmdir()
            if cgroup.exists():
                cgroup.rmdir()
        if self.workdir.exists():
            self.workdir.rmdir()  # the mount point: the tmpfs itself went with the wrapper's namespace
        self.log_path.unlink(missing_ok=True)

    def _check_alive(self, when: str) -> None:
        assert self._wrapper is not None
        if self._wrapper.poll() is not None:
            raise ContainerUnavailable(f"systemd-nspawn exited {self._wrapper.returncode} {when}:\n{self.log()}")

    def _find_init(self) -> int:
        """The container's PID 1, as this machine numbers it: the child of systemd-nspawn in another PID
        namespace."""
        assert self._wrapper is not None
        ours = os.readlink("/proc/self/ns/pid")
        for nspawn in _children(self._wrapper.pid):
            for child in _children(nspawn):
                try:
                    if os.readlink(f"/proc/{child}/ns/pid") != ours:
                        return child
                except OSError:
                    continue
        return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

