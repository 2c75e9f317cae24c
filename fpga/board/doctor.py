"""``python -m fpga.board doctor``: is this board ready to serve? One line per verdict.

Checks, in order: the Python and numpy versions (PYNQ 3.0.1/3.1 images: Python 3.10, numpy
1.21), pynq, the CMA pool against what each overlay's DMA buffers need, the UART (exists, not a
login console, free), each overlay's files (``accelerators.json``, bitfile, FINN's settings) and
every bundle in the store (manifest version, file hashes). Each verdict is ``ok``, ``warn`` or
``FAIL`` with what to do; the command exits 1 when any check fails.

This module imports only the standard library (and the project's error classes) at module level,
so it reports an old Python or a missing numpy instead of failing on it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from export.errors import BundleError

MIN_PYTHON = (3, 10)
"""PYNQ 3.0.1 and 3.1 images (Ubuntu 22.04) have Python 3.10."""
MIN_NUMPY = (1, 21)
"""Ubuntu 22.04's python3-numpy is 1.21.5."""
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Verdict:
    status: str
    check: str
    detail: str

    def line(self) -> str:
        return f"{self.status:4s} {self.check}: {self.detail}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_python(version: Sequence[int] | None = None) -> Verdict:
    v = tuple(version or sys.version_info[:3])
    shown = ".".join(str(p) for p in v)
    if v[:2] < MIN_PYTHON:
        return Verdict(
            FAIL,
            "python",
            f"{shown} is older than {MIN_PYTHON[0]}.{MIN_PYTHON[1]}; run the runtime with the "
            "PYNQ 3.0.1/3.1 image's python3 (docs/board.md)",
        )
    return Verdict(OK, "python", f"{shown} on {platform.machine() or 'unknown'}")


def check_numpy(version: str | None = None) -> Verdict:
    if version is None:
        try:
            import numpy

            version = numpy.__version__
        except ImportError:
            return Verdict(FAIL, "numpy", "not installed; sudo apt-get install python3-numpy")
    if _version(version)[:2] < MIN_NUMPY:
        return Verdict(
            FAIL,
            "numpy",
            f"{version} is older than {MIN_NUMPY[0]}.{MIN_NUMPY[1]}; install Ubuntu 22.04's "
            "python3-numpy (apt) or pip install 'numpy>=1.21'",
        )
    return Verdict(OK, "numpy", version)


def requirement_problem(
    python: Sequence[int] | None = None, numpy_version: str | None = None
) -> str | None:
    """The first failing Python or numpy verdict as one line, or None (``serve`` checks it)."""
    for verdict in (check_python(python), check_numpy(numpy_version)):
        if verdict.status == FAIL:
            return f"{verdict.check} {verdict.detail}"
    return None


def check_pynq(needed: bool) -> Verdict:
    try:
        import pynq
    except ImportError:
        if needed:
            return Verdict(
                FAIL,
                "pynq",
                "not importable, and --overlay asks for the finn backend; run on a PYNQ image "
                "in its environment (source /etc/profile.d/pynq_venv.sh) or use --backend cpu",
            )
        return Verdict(WARN, "pynq", "not importable: only --backend cpu can run here")
    return Verdict(OK, "pynq", getattr(pynq, "__version__", "unknown version"))


def cma_bytes(meminfo: str) -> tuple[int, int] | None:
    """(CmaTotal, CmaFree) in bytes from /proc/meminfo's text, or None without a CMA pool."""
    found = dict(re.findall(r"^(CmaTotal|CmaFree):\s+(\d+) kB", meminfo, re.M))
    if "CmaFree" not in found:
        return None
    return int(found.get("CmaTotal", 0)) * 1024, int(found["CmaFree"]) * 1024


def check_cma(need_bytes: int, meminfo: str | None = None) -> Verdict:
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            meminfo = ""
    pool = cma_bytes(meminfo)
    if pool is None:
        status = FAIL if need_bytes else WARN
        return Verdict(
            status,
            "cma",
            f"no CMA pool (/proc/meminfo has no CmaFree); the overlays need "
            f"{need_bytes / 2**20:.1f} MiB: boot a PYNQ image (cma= on the kernel command line)",
        )
    total, free = pool
    text = f"{free / 2**20:.1f} MiB free of {total / 2**20:.1f} MiB"
    if need_bytes > free:
        return Verdict(
            FAIL,
            "cma",
            f"{text}, the overlays' DMA buffers need {need_bytes / 2**20:.1f} MiB: lower "
            "--overlay-batch or raise cma= on the kernel command line (docs/board.md)",
        )
    return Verdict(OK, "cma", f"{text}; the overlays need {need_bytes / 2**20:.1f} MiB")


def check_port(port: str, cmdline: str | None = None) -> Verdict:
    path = Path(port)
    if not path.exists():
        return Verdict(FAIL, "uart", f"{port!r} does not exist; check the device (ls /dev/tty*)")
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            cmdline = ""
    if re.search(rf"console={re.escape(path.name)}\b", cmdline):
        return Verdict(
            FAIL,
            "uart",
            f"{port!r} is the kernel console (console={path.name} in /proc/cmdline); free it "
            "as docs/board.md says, or use another UART",
        )
    try:
        import serial

        serial.Serial(port, exclusive=True).close()
    except ImportError:
        return Verdict(FAIL, "uart", "pyserial is not installed; pip install pyserial==3.5")
    except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
        return Verdict(FAIL, "uart", f"{port!r} cannot be opened ({exc}); a getty may hold it")
    return Verdict(OK, "uart", f"{port} opens, and is not the kernel console")


def check_overlays(folders: Iterable[Path], batch: int | None) -> tuple[list[Verdict], int]:
    """One verdict per overlay folder, and the CMA bytes they need together."""
    # numpy: imported once check_numpy has run (see the module's docstring)
    from fpga.board.accel import AcceleratorError, OverlaySpec
    from fpga.board.finnio import buffer_bytes

    verdicts, need = [], 0
    for folder in folders:
        try:
            spec = OverlaySpec.load(folder)
            info = spec.driver_information()
        except AcceleratorError as exc:
            verdicts.append(Verdict(FAIL, "overlay", str(exc)))
            continue
        size = buffer_bytes(info, batch or spec.batch_size)
        need += size
        bitfile = spec.root / spec.bitfile
        if not bitfile.is_file():
            verdicts.append(
                Verdict(FAIL, "overlay", f"{str(bitfile)!r} is missing; copy the deploy folder")
            )
        elif spec.settings_origin != "finn build":
            verdicts.append(
                Verdict(
                    FAIL,
                    "overlay",
                    f"{str(spec.root)!r}: settings.json was {spec.settings_origin!r}, not "
                    "written by FINN's build of the bitfile; rebuild with make bitstream",
                )
            )
        else:
            verdicts.append(
                Verdict(
                    OK,
                    "overlay",
                    f"{spec.root} for bundle {spec.bundle_id}: {len(spec.engines)} engines, "
                    f"{size / 2**20:.1f} MiB of DMA buffers",
                )
            )
    return verdicts, need


def check_bundles(folders: Iterable[Path]) -> list[Verdict]:
    from export.manifest import load_bundle  # numpy: as above

    verdicts = []
    for folder in folders:
        try:
            bundle = load_bundle(folder, verify=True)
        except BundleError as exc:
            verdicts.append(Verdict(FAIL, "bundle", str(exc)))
            continue
        verdicts.append(
            Verdict(OK, "bundle", f"{bundle.bundle_id} in {folder}, every file's sha256 matches")
        )
    return verdicts


def diagnose(
    *,
    port: str | None = None,
    overlays: Sequence[Path] = (),
    store: Path | None = None,
    bundles: Sequence[Path] = (),
    overlay_batch: int | None = None,
) -> list[Verdict]:
    verdicts = [check_python(), check_numpy()]
    if any(v.status == FAIL for v in verdicts):
        return verdicts  # nothing else can be imported
    verdicts.append(check_pynq(bool(overlays)))
    overlay_verdicts, need = check_overlays(overlays, overlay_batch)
    if overlays:
        verdicts.append(check_cma(need))
    verdicts += overlay_verdicts
    if port:
        verdicts.append(check_port(port))
    folders = list(bundles)
    if store is not None and Path(store).is_dir():
        folders += sorted(p for p in Path(store).iterdir() if p.is_dir() and len(p.name) == 64)
    elif store is not None:
        verdicts.append(
            Verdict(WARN, "store", f"{str(store)!r} does not exist yet (serve creates it)")
        )
    verdicts += check_bundles(folders)
    return verdicts


def main(args) -> int:
    verdicts = diagnose(
        port=args.port,
        overlays=[Path(p) for p in args.overlay or []],
        store=Path(args.store) if args.store else None,
        bundles=[Path(p) for p in args.bundle or []],
        overlay_batch=args.overlay_batch,
    )
    for v in verdicts:
        print(v.line())
    failed = [v for v in verdicts if v.status == FAIL]
    print(
        f"{len(verdicts) - len(failed)} of {len(verdicts)} checks passed on {os.uname().nodename}"
    )
    return 1 if failed else 0
