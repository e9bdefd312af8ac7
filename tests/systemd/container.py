"""A real systemd in a container, for testing deploy/monitor.service: systemd-nspawn, no network.

The root is a Debian minbase tree made once by debootstrap and kept in a cache directory; it is
booted with ``--volatile=overlay``, so every boot starts from the same tree and writes go to a
tmpfs. nspawn runs in a mount namespace of its own with a tmpfs on /run/systemd (so it does not
look for a host systemd, which is not there), keeps its own cgroup (``--keep-unit``), registers
with no machined (``--register=no``) and gives the container only a loopback interface
(``--private-network``). Commands run in the container's namespaces through nsenter.

The project goes in as wheels built outside (the container has no network), bind-mounted
read-only at /wheels.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

PACKAGES = "systemd,systemd-sysv,dbus,procps,passwd,python3-minimal,python3-venv"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
NSPAWN_CGROUPS = ("payload", "supervisor")  # what nspawn --keep-unit makes under its cgroup
BOOT_TIMEOUT = 60.0
COMPLETE = ".monitor-rootfs-complete"


def find_nspawn() -> str | None:
    """$SYSTEMD_NSPAWN, or systemd-nspawn on PATH."""
    return os.environ.get("SYSTEMD_NSPAWN") or shutil.which("systemd-nspawn")


def why_not_runnable(cache: Path) -> str | None:
    """Why this host cannot run the container, or None if it can."""
    missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
    reasons = [
        (sys.platform != "linux", "needs Linux"),
        (os.geteuid() != 0, "needs root (systemd-nspawn)"),
        (
            find_nspawn() is None,
            "systemd-nspawn not found (set SYSTEMD_NSPAWN or install systemd-container)",
        ),
        (bool(missing), f"{', '.join(missing)} not found"),
        (
            not (cache / "rootfs" / COMPLETE).exists() and shutil.which("debootstrap") is None,
            f"debootstrap not found and no cached root in {cache}",
        ),
        (
            not CGROUP_HIERARCHIES[0].is_dir(),
            f"{CGROUP_HIERARCHIES[0]} missing (nspawn here needs the hybrid cgroup layout)",
        ),
    ]
    return next((why for failed, why in reasons if failed), None)


def ensure_rootfs(cache: Path) -> Path:
    """The Debian root, made by debootstrap the first time (about 40 s), then reused."""
    root = cache / "rootfs"
    if (root / COMPLETE).exists():
        return root
    building = cache / "rootfs.building"
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, building, MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (building / COMPLETE).touch()
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root


def build_wheels(project: Path, into: Path) -> Path:
    """The project's wheel and its dependencies' wheels for CPython 3.11 on x86_64 glibc."""
    into.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", into, project], check=True)
    (wheel,) = into.glob("monitor-*.whl")
    platforms = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", *(f"--platform={p}" for p in platforms), "-d", into, wheel],
        check=True,
    )  # fmt: skip
    return into


class Container:
    """A booted container: ``run`` commands in it, ``shutdown`` to end it and clean up."""

    def __init__(self, root: Path, *, binds: Sequence[tuple[Path, str]], log: Path) -> None:
        self.name = f"monitor-test-{os.getpid()}"
        self._base = cgroup_of_this_process()
        self._cgroups_before = existing_cgroups(self._base)
        nspawn = find_nspawn()
        assert nspawn is not None
        command = [
            nspawn, "-D", str(root), "--boot", "--register=no", "--keep-unit",
            "--private-network", "--volatile=overlay", f"--machine={self.name}",
            "--console=read-only", *(f"--bind-ro={host}:{inside}" for host, inside in binds),
        ]  # fmt: skip
        script = 'mount -t tmpfs tmpfs /run/systemd && exec "$@"'
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", script, "sh", *command],
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.init_pid = 0

    def boot(self) -> None:
        """Wait until the container's systemd has booted (running, or degraded)."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not self.init_pid:
            if self.process.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the container's systemd did not start")
            self.init_pid = find_init(self.process.pid)
            time.sleep(0.05)
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False)
        if state.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"the container did not boot: {state.stdout} {state.stderr}")

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container as root, with a clean environment."""
        command = [
            "nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "-C",
            "env", "-i", "-C", "/", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=",
            *argv,
        ]  # fmt: skip
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def sh(self, script: str, *, check: bool = True, timeout: float = 60.0) -> str:
        return self.run(["sh", "-ec", script], check=check, timeout=timeout).stdout

    def write(self, path: str, text: str, mode: str = "0644", owner: str = "root:root") -> None:
        script = f'mkdir -p "$(dirname {path})"; cat > {path}; chmod {mode} {path}'
        self.run(["sh", "-ec", f"{script}; chown {owner} {path}"], stdin=text)

    def shutdown(self, timeout: float = 20.0) -> None:
        """Power the container off (SIGTERM to nspawn), SIGKILL if it hangs; remove its cgroups."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # nspawn: a clean poweroff
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(10)
        finally:
            self._log.close()
            remove_cgroups(self._base, self._cgroups_before)


def find_init(nspawn_pid: int) -> int:
    """The pid (as seen here) of the container's systemd: nspawn's child named systemd."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(nspawn_pid).children(recursive=True):
            if child.name() == "systemd":
                return child.pid
    return 0


def cgroup_of_this_process() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:].lstrip("/")
    return ""


def existing_cgroups(base: str) -> set[Path]:
    return {
        hierarchy / base / name
        for hierarchy in CGROUP_HIERARCHIES
        for name in NSPAWN_CGROUPS
        if (hierarchy / base / name).is_dir()
    }


def remove_cgroups(base: str, before: set[Path], timeout: float = 10.0) -> None:
    """Remove the cgroups nspawn made (deepest first), waiting for their processes to go."""
    deadline = time.monotonic() + timeout
    for top in sorted(existing_cgroups(base) - before):
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            remove_cgroup(directory, deadline)
        remove_cgroup(top, deadline)


def remove_cgroup(directory: Path, deadline: float) -> None:
    while True:
        try:
            directory.rmdir()
        except FileNotFoundError:
            return
        except OSError:  # EBUSY: a process is still leaving
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return
