"""Prepare the lab cache: Debian's guest kernel, an out-of-tree siw, vmlinux, the initramfs.

Every step leaves a stamp and is skipped when its output is there, so a second run takes
seconds. Nothing is installed on the host: the kernel is unpacked under the cache directory.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hsp_rdma.errors import LabError, LabUnavailable

# Modules the initramfs loads before it can mount the host's root over virtio-9p; the rest
# (rdma, netem) are modprobed after switch_root from the bind-mounted guest module tree.
EARLY_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net")
SIW_DIR = "drivers/infiniband/sw/siw"
XZ_MAGIC = b"\xfd7zXZ\x00"

Step = Callable[[str], None]


def cache_root() -> Path:
    """The one directory that holds every lab artefact (HSP_LAB_DIR overrides)."""
    return Path(os.environ.get("HSP_LAB_DIR", "/var/tmp/hsp-lab"))


def _run(argv: list[str], what: str, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        res = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabUnavailable(
            f"{what}: '{argv[0]}' is not installed; run scripts/bootstrap (it installs "
            "the lab's Debian packages)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what}: '{' '.join(argv)}' did not finish in {timeout:.0f} s") from exc
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise LabError(f"{what} failed (exit {res.returncode}): " + " | ".join(tail))
    return res.stdout


def guest_kernel_version() -> str:
    """The kernel ABI name Debian's linux-image-amd64 points at (e.g. 6.1.0-56-amd64)."""
    if os.environ.get("HSP_LAB_KVER"):
        return os.environ["HSP_LAB_KVER"]
    out = _run(["apt-cache", "depends", "linux-image-amd64"], "finding Debian's kernel")
    m = re.search(r"Depends:\s*linux-image-(\S+)", out)
    if not m:
        raise LabUnavailable(
            "apt-cache names no kernel for linux-image-amd64: run 'apt-get update' "
            "(scripts/bootstrap does it) and try again"
        )
    return m.group(1)


@dataclass(frozen=True)
class Artefacts:
    """Where the prepared pieces live for one guest kernel version."""

    root: Path
    kver: str

    @property
    def kdir(self) -> Path:
        return self.root / "kernel" / self.kver

    @property
    def modroot(self) -> Path:
        """The unpacked image package: lib/modules/<kver> lives below it."""
        return self.kdir / "root"

    @property
    def modules(self) -> Path:
        return self.modroot / "lib" / "modules"

    @property
    def vmlinux(self) -> Path:
        return self.kdir / "vmlinux"

    @property
    def initramfs(self) -> Path:
        """Named by the hash of what goes in it, so a changed init never boots stale."""
        recipe = (INIT_SCRIPT + "\n".join(EARLY_MODULES)).encode()
        return self.kdir / f"initramfs-{hashlib.sha256(recipe).hexdigest()[:12]}.cpio.gz"

    @property
    def siw_ko(self) -> Path:
        return self.modules / self.kver / "updates" / "siw.ko"

    @property
    def debs(self) -> Path:
        return self.root / "debs"

    def ready(self) -> bool:
        return all(p.exists() for p in (self.vmlinux, self.initramfs, self.siw_ko))

    def missing(self) -> list[str]:
        return [str(p) for p in (self.vmlinux, self.initramfs, self.siw_ko) if not p.exists()]


def _download(pkg: str, debs: Path) -> Path:
    """apt-get download PKG (name or name=version) into debs once; returns the .deb."""
    name = pkg.split("=")[0]
    found = sorted(debs.glob(f"{name}_*.deb"))
    want_version = pkg.split("=")[1] if "=" in pkg else None
    for deb in found:
        if want_version is None or f"_{want_version}_".replace(":", "%3a") in deb.name:
            return deb
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", "-q", pkg], f"downloading {pkg}", cwd=debs)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        raise LabError(f"apt-get download {pkg} left no .deb in {debs}")
    return found[-1]


def _package_version(pkg: str) -> str:
    out = _run(["apt-cache", "show", "--no-all-versions", pkg], f"looking up {pkg}")
    m = re.search(r"^Version:\s*(\S+)", out, re.MULTILINE)
    if not m:
        raise LabError(f"apt-cache has no version for {pkg}: run 'apt-get update'")
    return m.group(1)


def _unpack_kernel(a: Artefacts, log: Step) -> None:
    stamp = a.kdir / ".unpacked"
    if stamp.exists():
        return
    deb = _download(f"linux-image-{a.kver}", a.debs)
    log(f"unpacking {deb.name}")
    if a.modroot.exists():
        shutil.rmtree(a.modroot)
    a.modroot.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(a.modroot)], "unpacking the guest kernel")
    _run(["depmod", "-b", str(a.modroot), a.kver], "depmod of the guest modules")
    stamp.touch()


def _extract_vmlinux(a: Artefacts, log: Step) -> None:
    """vmlinuz -> uncompressed PVH ELF (saves ~3 s per TCG boot); Debian's is XZ."""
    if a.vmlinux.exists():
        return
    vmlinuz = a.modroot / "boot" / f"vmlinuz-{a.kver}"
    data = vmlinuz.read_bytes()
    at = data.find(XZ_MAGIC)
    if at < 0:
        raise LabError(f"{vmlinuz}: no XZ stream inside; cannot extract vmlinux")
    log("extracting vmlinux")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
    if not elf.startswith(b"\x7fELF"):
        raise LabError(f"{vmlinuz}: the XZ stream is not an ELF kernel")
    tmp = a.vmlinux.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.rename(a.vmlinux)


def _build_siw(a: Artefacts, log: Step) -> None:
    """Debian does not build siw: compile it out of tree from linux-source."""
    if a.siw_ko.exists():
        return
    headers = Path(f"/usr/src/linux-headers-{a.kver}")
    if not headers.is_dir():
        raise LabUnavailable(
            f"{headers} is missing: install linux-headers-{a.kver} "
            "(scripts/bootstrap does it) to build siw"
        )
    series = ".".join(a.kver.split(".")[:2])
    version = _package_version(f"linux-image-{a.kver}")
    deb = _download(f"linux-source-{series}={version}", a.debs)
    build = a.kdir / "siw-build"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    log(f"extracting {SIW_DIR} from {deb.name}")
    _extract_from_source(deb, series, build)
    log("building siw.ko")
    _run(
        ["make", "-C", str(headers), f"M={build}", "CONFIG_RDMA_SIW=m", "modules"],
        "building siw",
    )
    a.siw_ko.parent.mkdir(parents=True, exist_ok=True)
    _run(["strip", "--strip-debug", "-o", str(a.siw_ko), str(build / "siw.ko")], "strip siw")
    _run(["depmod", "-b", str(a.modroot), a.kver], "depmod after adding siw")


def _extract_from_source(deb: Path, series: str, dest: Path) -> None:
    """Stream the source tarball and stop as soon as the siw directory has passed."""
    inner = f"./usr/src/linux-source-{series}.tar.xz"
    prefix = f"linux-source-{series}/{SIW_DIR}/"
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
                for member in outer:
                    if member.name != inner:
                        continue
                    xz = outer.extractfile(member)
                    if xz is None:
                        break
                    with tarfile.open(fileobj=xz, mode="r|xz") as src:
                        seen = False
                        for m in src:
                            if m.name.startswith(prefix) and m.isfile():
                                seen = True
                                f = src.extractfile(m)
                                assert f is not None
                                (dest / m.name[len(prefix):]).write_bytes(f.read())
                            elif seen:
                                break
                    break
        finally:
            proc.kill()
    if not (dest / "Makefile").exists():
        raise LabError(f"{deb.name} holds no {SIW_DIR}: cannot build siw")


def _module_order(a: Artefacts) -> list[Path]:
    """Early modules with their dependencies, in load order (modprobe --show-depends)."""
    order: list[Path] = []
    for mod in EARLY_MODULES:
        out = _run(
            ["modprobe", "-d", str(a.modroot), "-S", a.kver, "--show-depends", mod],
            f"resolving dependencies of {mod}",
        )
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"]:
                p = Path(parts[1])
                if p not in order:
                    order.append(p)
    return order


INIT_SCRIPT = r"""#!/bin/busybox sh
# hsp-lab stage 1: load the 9p/overlay/virtio modules, mount the host's / read-only with a
# tmpfs overlay, mount the lab share, switch_root and start the agent (stage 2) as PID 1.
# /tmp stays the overlay's (host content visible, writes kept in the guest): a checkout may
# live there, and it must be visible at the same path.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "hsp-lab: insmod $m failed"; done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
  || { echo "hsp-lab: cannot mount the host root over 9p"; poweroff -f; }
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
mkdir -p /newroot/hsp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 labshare /newroot/hsp \
  || { echo "hsp-lab: cannot mount the lab share"; poweroff -f; }
for d in proc sys dev; do mount --move /$d /newroot/$d; done
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount --bind "/newroot$hsp_modules" /newroot/lib/modules \
  || echo "hsp-lab: cannot bind the guest modules $hsp_modules"
exec switch_root /newroot /usr/bin/python3 -I /hsp/agent.py
"""


def _build_initramfs(a: Artefacts, log: Step) -> None:
    if a.initramfs.exists():
        return
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise LabUnavailable("/bin/busybox is missing: install busybox-static (scripts/bootstrap)")
    log("building the initramfs")
    work = a.kdir / "initramfs"
    if work.exists():
        shutil.rmtree(work)
    for d in ("bin", "proc", "sys", "dev", "lib/modules"):
        (work / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, work / "bin" / "busybox")
    names = []
    for ko in _module_order(a):
        shutil.copy2(ko, work / "lib" / "modules" / ko.name)
        names.append(ko.name)
    (work / "modules.order").write_text("\n".join(names) + "\n")
    init = work / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input="\n".join(files).encode(),
        cwd=work,
        capture_output=True,
        check=False,
    )
    if cpio.returncode != 0:
        raise LabError("cpio failed building the initramfs: " + cpio.stderr.decode().strip())


    tmp = a.initramfs.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio.stdout, compresslevel=6))
    for old in a.kdir.glob("initramfs*.cpio.gz"):
        old.unlink()
    tmp.rename(a.initramfs)
    shutil.rmtree(work)


def prepare(root: Path | None = None, log: Step | None = None) -> Artefacts:
    """Make the cache ready (idempotent) and return where its pieces are."""
    log = log or (lambda _msg: None)
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    a = Artefacts(root, guest_kernel_version())
    t0 = time.monotonic()
    for step in (_unpack_kernel, _extract_vmlinux, _build_siw, _build_initramfs):
        step(a, log)
    log(f"lab cache ready in {time.monotonic() - t0:.1f} s: {a.kdir}")
    return a


def artefacts(root: Path | None = None) -> Artefacts:
    """The prepared artefacts, or a LabError saying to run `hsp-lab setup`."""
    root = root or cache_root()
    kdirs = sorted((root / "kernel").glob("*/vmlinux")) if (root / "kernel").exists() else []
    if os.environ.get("HSP_LAB_KVER"):
        kver = os.environ["HSP_LAB_KVER"]
    elif len(kdirs) == 1:
        kver = kdirs[0].parent.name
    else:
        kver = guest_kernel_version()
    a = Artefacts(root, kver)
    if not a.ready():
        raise LabUnavailable(
            f"the lab cache is not prepared ({', '.join(a.missing())} missing): "
            "run 'hsp-lab setup' first"
        )
    return a
