"""Flower for the fleet, with authentication on by default beyond loopback.

Secrets never reach a command line (``ps`` shows argv to every local user): Flower reads its
basic-auth credentials from ``FLOWER_BASIC_AUTH`` and the app its broker URL from
``NERFLEET_BROKER_URL``, both in the child's environment. Flower stops with ``nerfleet monitor``:
on SIGTERM/SIGINT it is stopped first, and the kernel ends it if the monitor dies (``PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import subprocess
import sys

from nerfleet.settings import get_settings


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def flower_command(address: str, port: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    auth = env.get("FLOWER_BASIC_AUTH")
    if not is_loopback(address) and not auth:
        raise RuntimeError(
            f"Flower would listen on {address} without authentication: set FLOWER_BASIC_AUTH=user:password "
            "(and protect /metrics at a proxy: Flower serves it without auth)"
        )
    if auth is None:
        env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")  # loopback only
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "nerfleet.tasks.app:app",
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--max_tasks=10000",
    ]
    env["NERFLEET_BROKER_URL"] = get_settings().broker_url
    return cmd, env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_flower(address: str, port: int) -> None:
    cmd, env = flower_command(address, port)
    child = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def stop(signum, _frame):
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    raise SystemExit(child.wait())
