"""Opening a PDF source at its page, in the person's own PDF viewer.

`QDesktopServices.openUrl` opens a file, never a place in it, and a `#page=N` fragment on a
file URL is honoured by browsers only (xdg-open and the desktop viewers drop it). So the
system's default PDF program is looked up (xdg-mime and its .desktop file on Linux, the
shell's association on Windows) and, when it is one whose command line takes a page, started
with it. Any other program (Preview on macOS has no such option) gets the plain file from the
caller, and the page stays named in the source's label.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

_Args = Callable[[str, str, int], list[str]]  # (program, file, page) -> command

# Program names (lower case, no .exe) -> how each asks for a page (all count from 1).
PAGE_COMMANDS: dict[str, _Args] = {}
for _name in ("evince", "atril", "xreader"):
    PAGE_COMMANDS[_name] = lambda exe, f, p: [exe, f"--page-index={p}", f]
PAGE_COMMANDS["okular"] = lambda exe, f, p: [exe, "--page", str(p), f]
PAGE_COMMANDS["zathura"] = lambda exe, f, p: [exe, f"--page={p}", f]
PAGE_COMMANDS["qpdfview"] = lambda exe, f, p: [exe, f"{f}#{p}"]
PAGE_COMMANDS["mupdf"] = lambda exe, f, p: [exe, f, str(p)]
PAGE_COMMANDS["sumatrapdf"] = lambda exe, f, p: [exe, "-page", str(p), f]
for _name in ("acrord32", "acrobat"):
    PAGE_COMMANDS[_name] = lambda exe, f, p: [exe, "/A", f"page={p}", f]
for _name in (
    "firefox", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
    "microsoft-edge", "microsoft-edge-stable", "msedge", "brave-browser",
):  # fmt: skip
    PAGE_COMMANDS[_name] = lambda exe, f, p: [exe, Path(f).absolute().as_uri() + f"#page={p}"]


def _desktop_exec(desktop_id: str) -> str | None:
    """The Exec line of a .desktop file found by its id in the XDG data folders (an id's
    dashes may stand for subfolders: kde4-okular.desktop is kde4/okular.desktop)."""
    home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    dirs = [home, *(os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":")]
    names = [desktop_id, desktop_id.replace("-", "/", 1)]
    for d in dirs:
        for n in names:
            f = Path(d, "applications", n)
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            section = ""
            for line in lines:
                line = line.strip()
                if line.startswith("["):
                    section = line
                elif section == "[Desktop Entry]" and line.startswith("Exec="):
                    return line[len("Exec=") :]
    return None


def _linux_default() -> str | None:
    try:
        out = subprocess.run(
            ["xdg-mime", "query", "default", "application/pdf"],
            capture_output=True, text=True, timeout=5, env=_system_env(),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    desktop_id = out.stdout.strip()
    line = _desktop_exec(desktop_id) if desktop_id else None
    if not line:
        return None
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    # "env VAR=x prog %U": the program is the first word that is neither env nor a setting.
    words = [w for w in words if w != "env" and "=" not in w]
    if not words:
        return None
    return words[0] if os.path.isabs(words[0]) else shutil.which(words[0])


def _windows_default() -> str | None:
    import ctypes
    from ctypes import wintypes

    size = wintypes.DWORD(1024)
    buf = ctypes.create_unicode_buffer(size.value)
    assoc_executable = 2  # ASSOCSTR_EXECUTABLE
    hr = ctypes.windll.shlwapi.AssocQueryStringW(  # type: ignore[attr-defined]
        0, assoc_executable, ".pdf", None, buf, ctypes.byref(size)
    )
    return buf.value if hr == 0 and buf.value else None


def default_pdf_program() -> str | None:
    """The program this system opens PDFs with, as a path; None where it cannot be told."""
    if sys.platform.startswith("linux"):
        return _linux_default()
    if sys.platform == "win32":
        try:
            return _windows_default()
        except (OSError, AttributeError):
            return None
    return None


def page_command(path: str, page: int) -> list[str] | None:
    """The command that opens `path` at `page` in the default PDF program, or None."""
    exe = default_pdf_program()
    if exe is None:
        return None
    name = Path(exe).name.lower().removesuffix(".exe")
    make = PAGE_COMMANDS.get(name)
    return make(exe, path, page) if make is not None else None


def _system_env() -> dict[str, str]:
    """The environment for a system program: a frozen app's own library path left out
    (PyInstaller keeps the one it replaced in *_ORIG)."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        for var in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
            orig = env.pop(var + "_ORIG", None)
            if orig is not None:
                env[var] = orig
            else:
                env.pop(var, None)
    return env


def open_at_page(path: str, page: int) -> bool:
    """Start the default PDF program at `page` of `path`; False when it takes no page (the
    caller opens the file as usual) or cannot be started."""
    cmd = page_command(path, page)
    if cmd is None:
        return False
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=_system_env(), start_new_session=os.name != "nt",
        )  # fmt: skip
    except OSError:
        return False
    # Reaped when it exits (a viewer that hands the file to its running window exits at once).
    threading.Thread(target=proc.wait, daemon=True, name="pdf-viewer").start()
    return True
