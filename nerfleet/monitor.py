"""Flower for the fleet, with authentication on by default beyond loopback."""

from __future__ import annotations

import ipaddress
import os
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
        "--broker",
        get_settings().broker_url,
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--max_tasks=10000",
    ]
    if auth:
        cmd.append(f"--basic-auth={auth}")
    return cmd, env


def start_flower(address: str, port: int) -> None:
    cmd, env = flower_command(address, port)
    raise SystemExit(subprocess.call(cmd, env=env))
