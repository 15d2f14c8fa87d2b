#!/usr/bin/env python3
"""Boots a layout built by `flashrack image build-bootable` under OVMF.

A UEFI loader that prints a marker (a PE32+ EFI application of a few hundred
bytes, written here: it calls ConOut->OutputString and waits) is put at
efi/boot/bootx64.efi of a non-hybrid installer ISO (xorriso, with a WIM
captured by wimlib-imagex). flashrack imports the ISO, refuses a raw run of it,
builds the GPT + FAT32 layout, and flashes it to a file with verification. That
file is then the USB stick (qemu-xhci + usb-storage) of a QEMU machine booting
Debian's OVMF with no other disk: the marker on the serial console means the
firmware found the layout's EFI system partition and ran its loader.

Run as root on Debian 12 (installs qemu-system-x86 and ovmf with apt-get when
missing): python3 tests/vm/boot_layout.py [--binary target/debug/flashrack].
Exit status 0 when the marker appeared, 1 otherwise. Standard library only.
"""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = "FLASHRACK-BOOT-OK"
OVMF_CODE = ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"]
OVMF_VARS = ["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"]


def efi_loader(message):
    """A PE32+ EFI application (x86-64) that prints `message` and waits.

    Code (entry: rcx = image handle, rdx = system table):
        sub  rsp, 0x28             ; shadow space, aligned stack
        mov  rcx, [rdx+0x40]       ; SystemTable->ConOut
        lea  rdx, [rip+msg]        ; the UTF-16 text
        call [rcx+0x08]            ; ConOut->OutputString(ConOut, text)
        jmp  $                     ; wait (the test stops the machine)
    A .reloc section with one empty block keeps the image relocatable (the
    code is position-independent; EDK2 refuses a stripped image it cannot
    load at its preferred base).
    """
    text = ("\r\n" + message + "\r\n").encode("utf-16-le") + b"\0\0"
    code = bytes.fromhex("4883ec28" "488b4a40") + b"\x48\x8d\x15" + struct.pack("<i", 24 - 15)
    code += bytes.fromhex("ff5108" "ebfe") + b"\0" * 4
    assert len(code) == 24
    code += text
    reloc = struct.pack("<IIHH", 0x1000, 12, 0, 0)

    def pad(b, n):
        return b + b"\0" * (n - len(b))

    dos = pad(b"MZ", 0x3C) + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 2, 0, 0, 0, 240, 0x0022)
    opt = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B, 0, 0,
        0x200, 0x200, 0,          # sizes of code, initialized, uninitialized data
        0x1000, 0x1000,           # entry point, base of code
        0x10000000,               # image base
        0x1000, 0x200,            # section and file alignment
        0, 0, 0, 0, 0, 0,         # OS, image, subsystem versions
        0,                        # Win32VersionValue
        0x3000, 0x200,            # size of image, size of headers
        0,                        # checksum
        10, 0,                    # subsystem EFI application, DLL characteristics
        0x10000, 0x1000, 0x10000, 0x1000,
        0, 16,
    )
    dirs = [(0, 0)] * 16
    dirs[5] = (0x2000, len(reloc))  # base relocations
    opt += b"".join(struct.pack("<II", *d) for d in dirs)
    assert len(opt) == 240
    text_hdr = struct.pack("<8sIIIIIIHHI", b".text", len(code), 0x1000, 0x200, 0x200, 0, 0, 0, 0, 0x60000020)
    reloc_hdr = struct.pack("<8sIIIIIIHHI", b".reloc", len(reloc), 0x2000, 0x200, 0x400, 0, 0, 0, 0, 0x42000040)
    headers = pad(dos + b"PE\0\0" + coff + opt + text_hdr + reloc_hdr, 0x200)
    return headers + pad(code, 0x200) + pad(reloc, 0x200)


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def first(paths):
    return next((p for p in paths if os.path.exists(p)), None)


def ensure_packages():
    missing = []
    if not shutil.which("qemu-system-x86_64"):
        missing.append("qemu-system-x86")
    if not first(OVMF_CODE):
        missing.append("ovmf")
    for tool, pkg in [("xorriso", "xorriso"), ("wimlib-imagex", "wimtools"), ("mcopy", "mtools"),
                      ("mkfs.vfat", "dosfstools"), ("sfdisk", "fdisk")]:
        if not shutil.which(tool):
            missing.append(pkg)
    if missing:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def boot(work, disk, wanted, timeout):
    """Boots OVMF with `disk` as its only disk, a USB stick; answers the first
    text of `wanted` that appears on the serial console (None when none did
    within `timeout` seconds), the log, and the seconds it took."""
    vars_copy = os.path.join(work, "OVMF_VARS.fd")
    shutil.copy(first(OVMF_VARS), vars_copy)
    serial = os.path.join(work, "serial.log")
    if os.path.exists(serial):
        os.remove(serial)
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "256",
           "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={first(OVMF_CODE)}",
           "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
           "-drive", f"if=none,id=stick,format=raw,file={disk}",
           "-device", "qemu-xhci", "-device", "usb-storage,drive=stick,removable=on",
           "-net", "none", "-display", "none", "-serial", f"file:{serial}", "-no-reboot"]
    print("+", " ".join(cmd), flush=True)
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    log = ""
    try:
        # QEMU appends the console to a file; it is read until one of the
        # texts appears (the event), the machine ends, or the timeout.
        while time.monotonic() - started < timeout:
            if os.path.exists(serial):
                with open(serial, "rb") as f:
                    log = f.read().replace(b"\0", b"").decode("utf-8", "replace")
                for text in wanted:
                    if text in log:
                        return text, log, time.monotonic() - started
            if qemu.poll() is not None:
                break
            time.sleep(0.5)
        return None, log, time.monotonic() - started
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "flashrack"))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the marker")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    ensure_packages()
    work = tempfile.mkdtemp(prefix="flashrack-boot-")
    try:
        tree = os.path.join(work, "tree")
        for d in ["efi/boot", "sources", "wim"]:
            os.makedirs(os.path.join(tree if d != "wim" else work, d), exist_ok=True)
        with open(os.path.join(tree, "efi/boot/bootx64.efi"), "wb") as f:
            f.write(efi_loader(MARKER))
        with open(os.path.join(work, "wim", "payload.bin"), "wb") as f:
            f.write(os.urandom(3 << 20))
        run(["wimlib-imagex", "capture", os.path.join(work, "wim"), os.path.join(tree, "sources/install.wim"),
             "payload"], stdout=subprocess.DEVNULL)
        iso = os.path.join(work, "installer.iso")
        run(["xorriso", "-as", "mkisofs", "-quiet", "-J", "-V", "BOOTTEST", "-e", "efi/boot/bootx64.efi",
             "-no-emul-boot", "-o", iso, tree])
        data = os.path.join(work, "data")
        fr = [args.binary, "--data-dir", data]
        sha_iso = run(fr + ["image", "import", iso], stdout=subprocess.PIPE, text=True).stdout.strip()
        refused = subprocess.run(fr + ["flash", sha_iso, os.path.join(work, "raw.img"), "--quiet"],
                                 capture_output=True, text=True)
        if refused.returncode == 0:
            print("FAIL: a raw run of the non-hybrid installer ISO was not refused")
            return 1
        sha = run(fr + ["image", "build-bootable", sha_iso, "--name", "boot-test.img"],
                  stdout=subprocess.PIPE, text=True).stdout.strip()
        stick = os.path.join(work, "stick.img")
        run(fr + ["flash", sha, stick, "--quiet"])
        # The control: the ISO forced raw onto a stick does not boot (the
        # firmware finds no EFI system partition on it and says so).
        raw = os.path.join(work, "raw.img")
        run(fr + ["flash", sha_iso, raw, "--quiet", "--force-raw"])
        ok = True
        seen, log, took = boot(work, raw, [MARKER, "failed to load Boot0001 \"UEFI QEMU QEMU USB"], args.timeout)
        if seen == MARKER or seen is None:
            print(f"FAIL: the raw copy of the ISO: {'booted' if seen else 'no answer from the firmware'}; "
                  f"serial log:\n{log[-3000:]}")
            ok = False
        else:
            print(f"ok: the raw copy of the ISO does not boot (firmware: {seen!r} after {took:.1f} s)")
        seen, log, took = boot(work, stick, [MARKER], args.timeout)
        if seen == MARKER:
            print(f"ok: OVMF ran the built layout's loader ({MARKER} after {took:.1f} s)")
        else:
            print(f"FAIL: no {MARKER} from the built layout within {args.timeout:.0f} s; serial log:\n{log[-3000:]}")
            ok = False
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
