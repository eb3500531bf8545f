"""`dolly-desktop devices`: the OpenVINO devices this machine offers."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("devices", help="list OpenVINO devices").set_defaults(func=cmd_devices)


def cmd_devices(a: argparse.Namespace) -> int:
    from dolly_desktop.generation.devices import list_devices

    for d in list_devices():
        print(f"{d.id}\t{d.name}")
    return 0
