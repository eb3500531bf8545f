"""Running the real CLI from tests: plainly, or with stderr on a pseudo-terminal as from a
person's shell (progress bars draw only there). Shared by the CLI test modules."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import threading

CLI = (sys.executable, "-m", "dolly_desktop.cli")


def run(*args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def run_on_a_terminal(
    *args: str, env: dict[str, str] | None = None, columns: int = 100, timeout: float = 300
) -> tuple[int, str, str]:
    """`dolly-desktop ARGS` with stderr on a pseudo-terminal `columns` wide: the exit code,
    stdout, and everything the terminal was sent."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: nobody holds the terminal any more
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        child = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=slave, env=env)
    finally:
        os.close(slave)
    out, _ = child.communicate(timeout=timeout)
    reader.join(10)
    os.close(master)
    return child.returncode, out.decode(), shown.decode(errors="replace")
