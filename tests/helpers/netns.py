"""A network namespace of its own for a process of a test: "another host" with its own
address, joined to this one by a veth pair, which the test can cut and heal. Made with
``ip netns`` / ``ip link`` and removed after; the test is skipped, with the reason, where they
cannot be made (not root, no ``ip``, no permission in this sandbox)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.helpers.constants import TIMEOUT_S


@dataclass(frozen=True)
class Namespace:
    """A namespace ``name`` whose end of the veth pair is ``inner`` (address ``inner_ip``);
    this namespace's end has ``outer_ip``."""

    name: str
    inner: str
    inner_ip: str
    outer_ip: str

    @property
    def exec_prefix(self) -> list[str]:
        """Run a command inside: ``[*ns.exec_prefix, "cmd", ...]``."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """The namespace's link goes down: nothing passes either way."""
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "down")

    def heal(self) -> None:
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "up")


def _ip(*args: str) -> None:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextmanager
def namespace() -> Iterator[Namespace]:
    """A fresh namespace on a random 10.231.N.0/30, removed (with its veth pair) after."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no ip command (iproute2) to make network namespaces")
    tag = f"gc{os.getpid() % 10000}{random.randrange(100)}"
    subnet = random.randrange(1, 250)
    outer_ip, inner_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    ns = Namespace(f"{tag}ns", f"{tag}i", inner_ip, outer_ip)
    outer = f"{tag}o"
    try:
        _ip("netns", "add", ns.name)
    except OSError as exc:
        pytest.skip(f"a network namespace cannot be made here: {exc}")
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", ns.inner)
        _ip("link", "set", ns.inner, "netns", ns.name)
        _ip("addr", "add", f"{outer_ip}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        inside = ("netns", "exec", ns.name, "ip")
        _ip(*inside, "addr", "add", f"{inner_ip}/30", "dev", ns.inner)
        _ip(*inside, "link", "set", ns.inner, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
