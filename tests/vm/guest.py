"""The guest: a Debian kernel and a busybox initramfs with the host's systemd-udevd.

Everything is built from Debian packages fetched with `apt-get download` (the
kernel, busybox-static) and from files of the host (systemd-udevd, its udev rules,
the shared libraries flashrack and udevd need, found with `ldd`). Downloads and the
unpacked kernel pieces are cached under the cache directory; the initramfs itself
is rebuilt on every run (a second or two) so that it always carries the host's
current udevd and libraries.

Standard library only.
"""

import glob
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile

# The modules the guest loads, with their dependencies (resolved from the
# modules' own `depends=`): USB (xHCI, hub driver in usbcore, usb-storage),
# SCSI disks, virtio for the network and the 9p share.
WANTED_MODULES = [
    "xhci_pci",
    "usb_storage",
    "sd_mod",
    "virtio_pci",
    "virtio_net",
    "9pnet_virtio",
    "9p",
]

# Module parameters given to insmod.
MODULE_PARAMS = {"usb_storage": "delay_use=0"}

# The udev rules the guest needs: default permissions, the block rules (watch,
# change events) and persistent storage (ID_BUS, ID_SERIAL_SHORT, ID_PATH).
UDEV_RULES = [
    "50-udev-default.rules",
    "60-block.rules",
    "60-persistent-storage.rules",
]
UDEV_RULE_DIRS = ["/usr/lib/udev/rules.d", "/lib/udev/rules.d"]

# Host programs copied into the guest (with their libraries): udev, and what
# installing flashrack's Debian package and running its unit as the unit says
# takes (dpkg and the tools its maintainer scripts call, systemd-sysusers for
# the service's user, util-linux's setpriv for User=, Group=, NoNewPrivileges=
# and the empty CapabilityBoundingSet=).
HOST_PROGRAMS = [
    "/lib/systemd/systemd-udevd",
    "/bin/udevadm",
    "/usr/bin/dpkg",
    "/usr/bin/dpkg-deb",
    "/usr/bin/dpkg-query",
    "/usr/bin/dpkg-statoverride",
    "/usr/bin/dpkg-split",
    "/usr/bin/dpkg-trigger",
    "/bin/tar",
    "/usr/bin/systemd-sysusers",
    "/usr/bin/setpriv",
    # The station's records, read in the guest (the burst's timings).
    "/usr/bin/sqlite3",
]

# dpkg checks that ldconfig is on the PATH before it installs anything; the
# guest's libraries never change, so a no-op stands in for it.
LDCONFIG = b"#!/bin/sh\nexit 0\n"


def log(msg):
    print(f"[vm] {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ----- packages ----------------------------------------------------------------


def ensure_host_packages():
    """Installs qemu-system-x86 when qemu-system-x86_64 is missing (and
    sqlite3 when it is).

    A newer qemu-utils (e.g. from backports) Breaks the distribution's
    qemu-system-common; qemu-utils is then named in the same install at the
    version of qemu-system-x86, which apt may only reach by a downgrade.
    """
    if not shutil.which("sqlite3"):
        # The guest reads the station's records with the host's sqlite3.
        if os.geteuid() != 0:
            raise RuntimeError("sqlite3 is missing; run as root to install it")
        log("installing sqlite3 (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "sqlite3"],
            env=env, stdout=subprocess.DEVNULL)
    if shutil.which("qemu-system-x86_64"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("qemu-system-x86_64 is missing; run as root to install it")
    log("installing qemu-system-x86 (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    pkgs = ["qemu-system-x86"]
    args = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
    installed_utils = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "qemu-utils"],
        capture_output=True, text=True,
    ).stdout
    if "install ok installed" in installed_utils:
        version = candidate_version("qemu-system-x86")
        pkgs.append(f"qemu-utils={version}" if version else "qemu-utils")
        args.append("--allow-downgrades")
    run(args + pkgs, env=env, stdout=subprocess.DEVNULL)


def candidate_version(pkg):
    out = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(None, 1)[1]
            return None if version == "(none)" else version
    return None


def kernel_package():
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise RuntimeError("apt-cache depends linux-image-amd64 names no kernel package")


def apt_download(pkg, dest):
    """Fetches `pkg`'s .deb into `dest` (once); returns its path."""
    os.makedirs(dest, exist_ok=True)
    found = glob.glob(os.path.join(dest, f"{pkg}_*.deb"))
    if found:
        return found[0]
    log(f"apt-get download {pkg}")
    tmp = tempfile.mkdtemp(dir=dest)
    try:
        os.chmod(tmp, 0o777)  # _apt may write here (else a harmless warning)
        r = subprocess.run(["apt-get", "download", "-q", pkg], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            # The package lists may be missing on a fresh machine.
            run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
            run(["apt-get", "download", "-q", pkg], cwd=tmp, stdout=subprocess.DEVNULL)
        deb = glob.glob(os.path.join(tmp, "*.deb"))[0]
        final = os.path.join(dest, os.path.basename(deb))
        os.rename(deb, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----- kernel modules ----------------------------------------------------------


def modinfo(path):
    """The `.modinfo` key=value pairs of a .ko (ELF64 little endian)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path}: not an ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    info = {}
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            for item in data[offset:offset + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode(errors="replace").split("=", 1)
                    info.setdefault(k, v)
    return info


def module_load_order(kernel_dir, wanted):
    """Paths of `wanted` modules and their dependencies, dependencies first."""
    paths = {}
    for path in glob.glob(os.path.join(kernel_dir, "**", "*.ko"), recursive=True):
        paths[os.path.basename(path)[:-3].replace("-", "_")] = path
    order, seen = [], set()

    def visit(name):
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in paths:
            raise RuntimeError(f"kernel module {name} not found (built in?)")
        for dep in filter(None, modinfo(paths[name]).get("depends", "").split(",")):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return [(name, paths[name]) for name in order]


def prepare_kernel(cache):
    """vmlinuz and the needed modules of the distribution's kernel, cached.

    Returns (vmlinuz path, [(module name, .ko path)] in load order).
    """
    pkg = kernel_package()
    kdir = os.path.join(cache, pkg)
    order_file = os.path.join(kdir, "modules.order")
    stamp = os.path.join(kdir, "wanted")
    try:
        with open(stamp) as f:
            fresh = f.read().split() == WANTED_MODULES
    except OSError:
        fresh = False
    if not fresh:
        try:
            deb = apt_download(pkg, os.path.join(cache, "debs"))
        except subprocess.CalledProcessError:
            # Stale package lists (apt_download updated them): the kernel's
            # ABI may have moved on.
            pkg = kernel_package()
            kdir = os.path.join(cache, pkg)
            order_file = os.path.join(kdir, "modules.order")
            stamp = os.path.join(kdir, "wanted")
            deb = apt_download(pkg, os.path.join(cache, "debs"))
        log(f"unpacking {os.path.basename(deb)}")
        tmp = tempfile.mkdtemp(dir=cache)
        try:
            run(["dpkg-deb", "-x", deb, tmp])
            vmlinuz = glob.glob(os.path.join(tmp, "boot", "vmlinuz-*"))[0]
            kernel_dir = glob.glob(os.path.join(tmp, "lib", "modules", "*", "kernel"))[0]
            mods = module_load_order(kernel_dir, WANTED_MODULES)
            staging = kdir + ".new"
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(os.path.join(staging, "modules"))
            shutil.copy(vmlinuz, os.path.join(staging, "vmlinuz"))
            for name, path in mods:
                shutil.copy(path, os.path.join(staging, "modules", name + ".ko"))
            with open(os.path.join(staging, "modules.order"), "w") as f:
                f.write("\n".join(name for name, _ in mods) + "\n")
            with open(os.path.join(staging, "wanted"), "w") as f:
                f.write("\n".join(WANTED_MODULES) + "\n")
            shutil.rmtree(kdir, ignore_errors=True)
            os.rename(staging, kdir)
            # Older kernels are of no more use.
            for old in glob.glob(os.path.join(cache, "linux-image-*")):
                if old != kdir and not old.endswith(".new"):
                    shutil.rmtree(old, ignore_errors=True)
            for old in glob.glob(os.path.join(cache, "debs", "linux-image-*.deb")):
                if old != deb:
                    os.remove(old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(order_file) as f:
        names = f.read().split()
    return (os.path.join(kdir, "vmlinuz"),
            [(n, os.path.join(kdir, "modules", n + ".ko")) for n in names])


def prepare_busybox(cache):
    path = os.path.join(cache, "busybox")
    if not os.path.exists(path):
        deb = apt_download("busybox-static", os.path.join(cache, "debs"))
        tmp = tempfile.mkdtemp(dir=cache)
        try:
            run(["dpkg-deb", "-x", deb, tmp])
            shutil.copy(os.path.join(tmp, "bin", "busybox"), path + ".new")
            os.rename(path + ".new", path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# ----- initramfs -------------------------------------------------------------


class Cpio:
    """A newc cpio archive, written in memory (no root needed for device nodes)."""

    def __init__(self):
        self.out = io.BytesIO()
        self.ino = 1
        self.names = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name = name.lstrip("/")
        if name in self.names:
            return
        self.names.add(name)
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.out.write(header + encoded)
        self.out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), 0o040755)

    def file(self, name, data, mode=0o644):
        self.dir(os.path.dirname(name))
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self.dir(os.path.dirname(name))
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name, major, minor):
        self.dir(os.path.dirname(name))
        self._entry(name, 0o020600, rdev=(major, minor))

    def bytes(self):
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def usr_path(path):
    """Where a host path goes in the merged-/usr guest."""
    for top in ("/lib64/", "/lib/", "/bin/", "/sbin/"):
        if path.startswith(top):
            return "/usr" + path
    return path


def libraries(program):
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (")[0]
            if target.startswith("/"):
                libs.append(target)
        elif line.startswith("/"):
            libs.append(line.split(" (")[0])
    return libs


# Lists the SCSI disks with what udev knows of them, one line each.
VM_DISKS = """\
#!/bin/sh
for d in /sys/block/sd*; do
  [ -e "$d" ] || continue
  n=${d##*/}
  s=$(cat $d/size 2>/dev/null) || continue
  echo "DISK $n size=$s $(udevadm info -q property -n $n 2>/dev/null \\
    | grep -E '^(ID_BUS|ID_SERIAL_SHORT|ID_PATH)=' | tr '\\n' ' ')"
done
"""

INITTAB = """\
::sysinit:/etc/rc
ttyS0::respawn:/bin/sh
::ctrlaltdel:/bin/poweroff -f
"""

RC = """\
#!/bin/sh
# The guest's start-up: file systems, modules, network, the 9p share, udevd.
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /var/lib/flashrack
mount -t tmpfs -o size=256m tmpfs /var/lib/flashrack
echo /bin/true > /proc/sys/kernel/modprobe
hostname flashrack-vm
for m in $(cat /modules/order); do
  case $m in
{params}
    *) p= ;;
  esac
  insmod /modules/$m.ko $p || echo "VM-RC: insmod $m failed"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=none host /mnt/host \\
  || echo "VM-RC: 9p mount failed"
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add
udevadm settle --timeout=30
stty -F /dev/ttyS1 raw 115200 2>/dev/null
echo "VM-RC: ready $(cat /proc/uptime)"
"""


def dpkg_status(packages):
    """The host's dpkg status stanzas of `packages` (those installed) and the
    names of their (empty) file lists: the
    guest's dpkg database says it has what the guest really carries from the
    host (the C library, udev, systemd's tools), so that installing flashrack's
    package checks its dependencies as on a Debian system."""
    stanzas, seen, todo, lists = [], set(), list(packages), []
    # With what they depend on in turn: dpkg checks the whole database.
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        r = subprocess.run(["dpkg-query", "-s", pkg], capture_output=True, text=True)
        if r.returncode != 0:
            continue
        stanzas.append(r.stdout.strip() + "\n")
        # An empty file list each (the files are the host's, not the guest's
        # business), or dpkg warns about every one of them.
        fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
        same = fields.get("Multi-Arch") == "same"
        lists.append(f"{pkg}:{fields.get('Architecture')}.list" if same else f"{pkg}.list")
        for line in r.stdout.splitlines():
            if line.startswith(("Depends:", "Pre-Depends:")):
                for dep in line.split(":", 1)[1].split(","):
                    for alternative in dep.split("|"):
                        if alternative.strip():
                            todo.append(alternative.split()[0].split(":")[0])
    return ("\n".join(sorted(stanzas))).encode(), lists


def build_initramfs(cache, flashrack, dest, dpkg_packages=()):
    """Writes the initramfs to `dest`; returns the kernel's path.

    `dpkg_packages`: host packages the guest's dpkg database lists as installed
    (see `dpkg_status`)."""
    os.makedirs(cache, exist_ok=True)
    vmlinuz, mods = prepare_kernel(cache)
    busybox = prepare_busybox(cache)
    c = Cpio()
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers",
              "etc/dpkg/dpkg.cfg.d"):
        c.dir(d)
    status, lists = dpkg_status(dpkg_packages)
    c.file("var/lib/dpkg/status", status)
    for name in lists:
        c.file(f"var/lib/dpkg/info/{name}", b"")
    c.file("var/lib/dpkg/available", b"")
    c.file("usr/sbin/ldconfig", LDCONFIG, 0o755)
    for top in ("bin", "sbin", "lib", "lib64"):
        c.symlink(top, "usr/" + top)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "proc", "sys", "dev", "run",
              "tmp", "etc", "root", "var/lib", "mnt/host", "etc/udev/rules.d"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/ttyS0", 4, 64)
    c.chardev("dev/null", 1, 3)
    with open(busybox, "rb") as f:
        c.file("usr/bin/busybox", f.read(), 0o755)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    keep_host = {os.path.basename(p) for p in HOST_PROGRAMS}
    for applet in applets:
        if applet not in keep_host:
            c.symlink(f"usr/bin/{applet}", "busybox")
    c.symlink("init", "usr/bin/busybox")
    # udevd and udevadm (the same binary on Debian), their libraries, and
    # flashrack's (the binary itself comes over 9p).
    libs = set(libraries(flashrack))
    for prog in HOST_PROGRAMS:
        real = os.path.realpath(prog)
        libs.update(libraries(real))
        with open(real, "rb") as f:
            c.file(usr_path(real), f.read(), 0o755)
        if os.path.realpath(prog) != prog:
            c.symlink(usr_path(prog), os.path.relpath(usr_path(real), os.path.dirname(usr_path(prog))))
    for lib in sorted(libs):
        real = os.path.realpath(lib)
        with open(real, "rb") as f:
            c.file(usr_path(lib), f.read(), 0o755)
    for rule in UDEV_RULES:
        for d in UDEV_RULE_DIRS:
            p = os.path.join(d, rule)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    c.file("usr/lib/udev/rules.d/" + rule, f.read())
                break
        else:
            raise RuntimeError(f"udev rule {rule} not found on the host")
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\ndisk:x:6:\ntty:x:5:\ndialout:x:20:\n"
           b"cdrom:x:24:\nfloppy:x:25:\ntape:x:26:\nkmem:x:15:\nkvm:x:104:\n")
    c.file("etc/inittab", INITTAB.encode())
    params = "".join(f"    {m}) p='{p}' ;;\n" for m, p in MODULE_PARAMS.items())
    c.file("etc/rc", RC.replace("{params}", params.rstrip("\n")).encode(), 0o755)
    c.file("usr/bin/vm-disks", VM_DISKS.encode(), 0o755)
    c.file("etc/profile", b"export PATH=/usr/sbin:/usr/bin\nexport PS1='vm# '\n")
    for name, path in mods:
        with open(path, "rb") as f:
            c.file(f"modules/{name}.ko", f.read())
    c.file("modules/order", ("\n".join(n for n, _ in mods) + "\n").encode())
    with open(dest, "wb") as f:
        f.write(c.bytes())
    return vmlinuz


if __name__ == "__main__":
    # Builds the cache and an initramfs, for trying by hand.
    cache = sys.argv[1]
    ensure_host_packages()
    print(build_initramfs(cache, sys.argv[2], sys.argv[3]))
