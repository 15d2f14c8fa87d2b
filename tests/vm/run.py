#!/usr/bin/env python3
"""Real USB end to end: flashrack serving inside a QEMU guest, emulated USB sticks
hot-plugged over QMP, everything checked from the host over the web API and in
the sticks' backing files.

    sudo python3 tests/vm/run.py            # see tests/vm/README.md

Standard library only. Exit status 0 when every check passed, 1 otherwise.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from guest import build_initramfs, ensure_host_packages, log  # noqa: E402
from vm import HUB_PORTS, HUBS, FirstWrites, Stick, Vm  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MiB = 1 << 20
IMAGE_SIZE = 16 * MiB
STICK_SIZE = 48 * MiB
# Two hubs of 8 ports: hub 1's ports are A1–A8, hub 2's B1–B8 (the station's
# rack of 2 rows of 8). Scenarios 1–4 use A1–A6; the burst uses them all.
HUB_ROWS = "AB"[:HUBS]
LABELS = [f"{row}{port}" for row in HUB_ROWS for port in range(1, HUB_PORTS + 1)]
# The burst (scenario 5): a small image, so that 16 sticks add little time.
BURST_IMAGE_SIZE = 8 * MiB
BURST_STICK_SIZE = 16 * MiB
# The guest's busybox shell runs its own applets before anything on the PATH:
# Debian's dpkg (copied from the host) is called by its full path.
DPKG = "DPKG_COLORS=never /usr/bin/dpkg"


class CheckFailed(Exception):
    pass


FAILED_CHECKS = []


def check(condition, what, fatal=False):
    """A check: a failure is reported and the suite goes on (the later scenarios
    do not depend on it), unless `fatal`."""
    if condition:
        log(f"ok: {what}")
        return True
    log(f"FAILED CHECK: {what}")
    FAILED_CHECKS.append(what)
    if fatal:
        raise CheckFailed(what)
    return False


# ----- the web API -------------------------------------------------------------


class Api:
    def __init__(self, port, token):
        self.port = port
        self.token = token

    def request(self, method, path, body=None, content_type="application/json",
                timeout=60, expect=(200, 201, 204)):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            if not isinstance(body, (bytes, bytearray)):
                body = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status not in expect:
            raise CheckFailed(f"{method} {path}: HTTP {resp.status}: {data[:500]!r}")
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode(errors="replace")

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body if body is not None else {}, **kw)

    def ports(self):
        return {p["label"]: p for p in self.get("/api/v1/station")["ports"]}

    def wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get("/api/v1/health", timeout=5)
            except (OSError, http.client.HTTPException, CheckFailed):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


class EventLog(threading.Thread):
    """Follows GET /api/v1/events (server-sent events) and keeps every event."""

    def __init__(self, port, token):
        super().__init__(daemon=True)
        self.port, self.token = port, token
        self.events = []  # (monotonic time, event name, data)
        self.lock = threading.Lock()
        self.stopped = False
        self.conn = None

    def run(self):
        try:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=None)
            self.conn.request("GET", "/api/v1/events",
                              headers={"Authorization": f"Bearer {self.token}",
                                       "Accept": "text/event-stream"})
            resp = self.conn.getresponse()
            name, data = None, []
            while not self.stopped:
                line = resp.readline()
                if not line:
                    return
                line = line.decode(errors="replace").rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "":
                    if data:
                        try:
                            value = json.loads("\n".join(data))
                        except ValueError:
                            value = "\n".join(data)
                        with self.lock:
                            self.events.append((time.monotonic(), name, value))
                    name, data = None, []
        except Exception:
            pass

    def port_events(self, label=None):
        with self.lock:
            out = [v["port"] for _, n, v in self.events if n == "port"]
        return [p for p in out if label is None or p["label"] == label]

    def close(self):
        self.stopped = True
        try:
            if self.conn and self.conn.sock:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ----- images ------------------------------------------------------------------


def random_image(seed, size):
    return random.Random(seed).randbytes(size)


def mbr_image(seed, size):
    """A disk image with an MBR and two primary partitions (built by hand)."""
    sectors = size // 512
    parts = [(2048, 12288, 0x83), (2048 + 12288, sectors - 2048 - 12288, 0x0C)]
    data = bytearray(random_image(seed, size))
    data[:2048 * 512] = bytes(2048 * 512)
    mbr = bytearray(512)
    mbr[440:444] = (0x464C5652).to_bytes(4, "little")  # disk signature "FLVR"
    for i, (start, count, kind) in enumerate(parts):
        entry = bytearray(16)
        entry[1:4] = b"\xfe\xff\xff"  # CHS: use LBA
        entry[4] = kind
        entry[5:8] = b"\xfe\xff\xff"
        entry[8:12] = start.to_bytes(4, "little")
        entry[12:16] = count.to_bytes(4, "little")
        mbr[446 + 16 * i:462 + 16 * i] = entry
    mbr[510:512] = b"\x55\xaa"
    data[:512] = mbr
    return bytes(data)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read_head(path, size):
    with open(path, "rb") as f:
        return f.read(size)


# ----- the suite -------------------------------------------------------------------


class Suite:
    def __init__(self, args):
        self.args = args
        remove_stale_workdirs()
        self.workdir = tempfile.mkdtemp(prefix=f"flashrack-vm-{os.getpid()}-")
        self.share = os.path.join(self.workdir, "share")
        self.sticks_dir = os.path.join(self.workdir, "sticks")
        os.makedirs(self.share)
        os.makedirs(self.sticks_dir)
        self.token = secrets.token_hex(16)
        self.host_port = free_port()
        self.vm = None
        self.api = Api(self.host_port, self.token)
        self.events = None
        self.port_paths = {}  # label -> ID_PATH learned in the guest
        # label -> (hub, port on the hub)
        self.hub_ports = {f"{row}{port}": (hub, port)
                          for hub, row in enumerate(HUB_ROWS, 1)
                          for port in range(1, HUB_PORTS + 1)}
        self.timings = {}
        self.figures = {}  # measured figures printed at the end
        self.log_offset = 0  # where the running station's part of flashrack.log begins

    def stick(self, name, label, serial, size=STICK_SIZE, **kw):
        hub, port = self.hub_ports[label]
        return Stick(name, os.path.join(self.sticks_dir, name + ".img"), size, serial,
                     port, hub=hub, **kw)

    # ----- set-up --------------------------------------------------------------

    def boot(self):
        t = time.monotonic()
        # The guest reads the share as the service's user too (import by path).
        os.chmod(self.workdir, 0o755)
        os.chmod(self.share, 0o755)
        dpkg_packages = []
        if self.args.deb:
            # The package's binary (on the host, for the libraries it needs).
            shutil.copy(self.args.deb, os.path.join(self.share, "flashrack.deb"))
            unpacked = os.path.join(self.workdir, "deb")
            subprocess.run(["dpkg-deb", "-x", self.args.deb, unpacked], check=True)
            flashrack = os.path.join(unpacked, "usr", "bin", "flashrack")
            depends = subprocess.run(["dpkg-deb", "-f", self.args.deb, "Depends"],
                                     capture_output=True, text=True, check=True).stdout
            dpkg_packages = [d.split()[0].split(":")[0] for d in depends.split(",") if d.strip()]
        else:
            flashrack = self.args.binary
            try:
                os.link(flashrack, os.path.join(self.share, "flashrack"))
            except OSError:
                shutil.copy(flashrack, os.path.join(self.share, "flashrack"))
        self.initrd = os.path.join(self.workdir, "initrd.cpio")
        self.kernel = build_initramfs(self.args.cache, flashrack, self.initrd, dpkg_packages)
        self.timings["prepare"] = time.monotonic() - t
        log(f"guest prepared in {self.timings['prepare']:.1f} s")

    def start_guest(self):
        """Boots the guest and learns its ports: the harness's own set-up, before
        flashrack runs. A guest that stops answering its console here is booted
        once more. Under TCG on a loaded 2-core host its kernel can stall for good
        (the CI run of dd37f42: "rcu_preempt self-detected stall", then no answer
        to `vm-disks` within 30 s); that is the emulator's, not a check of
        flashrack's. A failed check is never retried."""
        for attempt in (1, 2):
            t = time.monotonic()
            self.vm = Vm(self.workdir, self.kernel, self.initrd, self.share, self.host_port)
            try:
                self.vm.start()
                self.timings["boot"] = time.monotonic() - t
                t = time.monotonic()
                self.learn_ports()
                self.timings["learn ports"] = time.monotonic() - t
                return
            except TimeoutError as e:
                if attempt == 2 or FAILED_CHECKS:
                    raise
                log(f"the guest stopped answering before flashrack ran ({e}); "
                    "the end of its console:")
                try:
                    print(open(self.vm.console_log, errors="replace").read()[-3000:], flush=True)
                except OSError as err:
                    print(err)
                self.vm.stop()
                self.vm = None
                for name in ("qmp.sock", "console.sock"):
                    try:
                        os.unlink(os.path.join(self.workdir, name))
                    except FileNotFoundError:
                        pass
                log("booting the guest again (once)")

    def learn_ports(self):
        """Plugs a probe stick into each hub port and reads its udev ID_PATH in the
        guest: the port map comes from the guest's real udev."""
        probes = [self.stick(f"probe{i}", label, f"PROBE{i}", size=MiB)
                  for i, label in enumerate(LABELS, 1)]
        for p in probes:
            self.vm.plug(p)
        found = self.vm.wait_disks([p.serial for p in probes], timeout=90)
        log("udev properties of the probe sticks in the guest:")
        for p, label in zip(probes, LABELS):
            name, props = found[p.serial]
            log(f"  {label}: hub port {p.usb_port} -> /dev/{name}: ID_BUS={props.get('ID_BUS')} "
                f"ID_SERIAL_SHORT={props['ID_SERIAL_SHORT']} ID_PATH={props['ID_PATH']}")
            check(props.get("ID_BUS") == "usb", f"{name} has ID_BUS=usb")
            self.port_paths[label] = props["ID_PATH"]
        check(len(set(self.port_paths.values())) == len(LABELS), "every hub port has its own ID_PATH", fatal=True)
        for p in probes:
            self.vm.unplug(p)
        self.wait_guest_disks(set(), timeout=60)

    def wait_guest_disks(self, names, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            now = set(self.vm.disks())
            if now == set(names):
                return
            if time.monotonic() > deadline:
                raise CheckFailed(f"guest disks are {sorted(now)}, expected {sorted(names)}")
            time.sleep(0.3)

    def write_config(self):
        lines = [
            'station_id = "vm-station"',
            'data_dir = "/var/lib/flashrack"',
            "[guard]",
            'allowed_buses = ["usb"]',
            'max_size = "1G"',
            "allow_unmapped_ports = false",
            "[engine]",
            "stall_timeout_secs = 60",
            # Every stick is reset before its read-back (the default, said
            # here so that the suite's intent is visible): scenario 4 checks
            # it; the others pass or fail through it.
            "reset_before_verify = true",
            f'usb_reset = "{self.args.usb_reset}"',
            "[web]",
            'listen = "0.0.0.0:8080"',
            f'token = "{self.token}"',
            "public_read = false",
            # Images are imported by path from the 9p share only.
            'import_dirs = ["/mnt/host"]',
            "[layout]",
            f"rows = {HUBS}",
            f"columns = {HUB_PORTS}",
        ]
        for label in LABELS:
            hub, port = self.hub_ports[label]
            lines += ["[[port]]", f'label = "{label}"', f'path = "{self.port_paths[label]}"',
                      f"row = {hub - 1}", f"column = {port - 1}"]
        with open(os.path.join(self.share, "station.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")

    # ----- the Debian package ------------------------------------------------------

    def guest(self, command, timeout=30):
        """Runs `command` in the guest; returns its output and exit status."""
        out = self.vm.console.run(f"{command}; echo VM-STATUS $?", timeout=timeout)
        text, _, status = out.rpartition("VM-STATUS ")
        return text.strip(), int(status.split()[0]) if status.split() else -1

    def install_package(self):
        """dpkg -i in the guest, then again (the upgrade path of the maintainer
        scripts), and what the installation must leave behind."""
        t = time.monotonic()
        out, status = self.guest(f"{DPKG} -i /mnt/host/flashrack.deb 2>&1", timeout=120)
        log("  " + out.replace("\n", "\n  "))
        check(status == 0, "dpkg -i flashrack.deb in the guest exits 0", fatal=True)
        out, status = self.guest(f"{DPKG} -i /mnt/host/flashrack.deb 2>&1", timeout=120)
        check(status == 0, "installing it again (prerm upgrade, postinst configure with "
              "the old version) exits 0")
        self.timings["install package"] = time.monotonic() - t
        out, _ = self.guest("dpkg-query -W -f='${Status} ${Version}' flashrack")
        check("install ok installed" in out, f"dpkg knows flashrack: {out}")
        out, _ = self.guest("id flashrack")
        check("uid=" in out and "(flashrack)" in out and "uid=0(" not in out,
              f"the package made the system user flashrack: {out}")
        for path, want in (("/var/lib/flashrack", "flashrack:flashrack 750"),
                           ("/etc/flashrack/station.toml", "root:flashrack 640"),
                           ("/usr/bin/flashrack", "root:root 755"),
                           ("/lib/udev/rules.d/70-flashrack.rules", "root:root 644"),
                           ("/lib/systemd/system/flashrack.service", "root:root 644"),
                           ("/usr/share/man/man1/flashrack.1.gz", "root:root 644"),
                           ("/usr/share/bash-completion/completions/flashrack", "root:root 644"),
                           ("/usr/share/doc/flashrack/station.md", "root:root 644")):
            out, _ = self.guest(f"stat -c '%U:%G %a' {path}")
            check(out == want, f"{path} is installed as {want} (found: {out})")
        out, _ = self.guest("grep -c . /var/lib/dpkg/info/flashrack.conffiles; "
                            "cat /var/lib/dpkg/info/flashrack.conffiles")
        check("/etc/flashrack/station.toml" in out, "station.toml is a conffile")

    def unit(self):
        """The installed unit's [Service] settings."""
        text, _ = self.guest("cat /lib/systemd/system/flashrack.service")
        service, section = {}, None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                service.setdefault(key, []).append(value)
        return service

    def unit_command(self):
        """The installed unit's ExecStart as systemd would run it, for a guest
        without systemd: as its User= and Group= (with the user's groups), with
        NoNewPrivileges=, its (empty) CapabilityBoundingSet=, its Environment=
        and LimitNOFILE=, in a clean environment."""
        unit = self.unit()
        exec_start = unit["ExecStart"][-1]
        user, group = unit["User"][-1], unit["Group"][-1]
        check(unit.get("CapabilityBoundingSet") == [""] and unit.get("AmbientCapabilities") == [""],
              "the unit grants no capability")
        env = ["PATH=/usr/sbin:/usr/bin", f"HOME=/var/lib/{user}", f"USER={user}",
               f"LOGNAME={user}", "NO_COLOR=1"] + unit.get("Environment", [])
        limit = unit.get("LimitNOFILE", ["1024"])[-1]
        nnp = " --no-new-privs" if unit.get("NoNewPrivileges") == ["true"] else ""
        return (f"ulimit -n {limit}; exec /usr/bin/setpriv --reuid={user} --regid={group} --init-groups"
                f"{nnp} --bounding-set=-all --inh-caps=-all -- env -i {' '.join(env)} "
                f"{exec_start}")

    def packaged_default(self):
        """The unit as installed, on the configuration as installed: it starts
        with no port mapped, says so, and its dashboard answers (on the guest's
        loopback, as configured)."""
        self.start_flashrack(wait_api=False)
        out, status = self.guest("wget -q -O - http://127.0.0.1:8080/api/v1/ports")
        check(status == 0 and out.strip() == "[]",
              f"the installed station answers on 127.0.0.1:8080 with no port: {out[:200]}")
        check("no ports are mapped in /etc/flashrack/station.toml" in self.flashrack_log()
              and "flashrack ports learn --config /etc/flashrack/station.toml"
              in self.flashrack_log(),
              "its log says that no port is mapped and how to map them")
        self.stop_flashrack(events=False)

    def check_privileges(self):
        """The service runs unprivileged: not root, no capability, and still
        writes sticks and ejects them (the scenarios)."""
        out, _ = self.guest("grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|NoNewPrivs)' "
                            "/proc/$(cat /run/flashrack.pid)/status")
        log("  " + out.replace("\n", "\n  "))
        fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in out.splitlines()
                  if ":" in line}
        check(fields.get("Uid", ["0"])[0] != "0" and fields.get("CapEff") == ["0000000000000000"]
              and fields.get("CapBnd") == ["0000000000000000"],
              "the station runs as a user other than root with no capability")

    def check_stick_permissions(self, name):
        out, _ = self.guest(f"stat -c '%G %a' /dev/{name} /sys/block/{name}/device/delete")
        check(out.split() == ["flashrack", "660", "flashrack", "220"],
              f"udev gave group flashrack /dev/{name} (rw) and its eject attribute "
              f"(w): {' '.join(out.split())}")

    def check_reset_permissions(self, name):
        """udev gave group flashrack the `authorized` attribute of the stick's
        USB device (the packaged service resets through it), and of no hub."""
        out, _ = self.guest(f"d=$(readlink -f /sys/class/block/{name}); "
                            "while [ \"$d\" != / ] && [ ! -e \"$d/busnum\" ]; do d=${d%/*}; done; "
                            "stat -c '%G %a' \"$d/authorized\"")
        check(out.split() == ["flashrack", "664"],
              f"udev gave group flashrack write access to {name}'s USB device's "
              f"authorized attribute: {' '.join(out.split())}")
        out, _ = self.guest("for d in /sys/bus/usb/devices/*; do "
                            "[ -e \"$d/busnum\" ] && [ \"$(cat $d/bDeviceClass)\" = 09 ] && "
                            "stat -c '%G %a' \"$d/authorized\"; done")
        hubs = out.split()
        check(hubs and all(g == "root" for g in hubs[0::2]) and all(m == "644" for m in hubs[1::2]),
              f"the hubs' authorized attributes stay root's, 0644: {' '.join(hubs)}")

    def remove_package(self):
        """dpkg -r, then --purge: the files go, the records stay."""
        out, status = self.guest(f"{DPKG} -r flashrack 2>&1", timeout=60)
        check(status == 0, "dpkg -r flashrack exits 0")
        out, _ = self.guest("for f in /usr/bin/flashrack /lib/udev/rules.d/70-flashrack.rules "
                            "/etc/flashrack/station.toml; do [ -e $f ] && echo $f; done")
        check(out.split() == ["/etc/flashrack/station.toml"],
              f"removed: the binary and the rules are gone, the configuration stays: {out}")
        out, status = self.guest(f"{DPKG} --purge flashrack 2>&1", timeout=60)
        check(status == 0 and "records stay" in out, f"dpkg --purge flashrack exits 0: {out}")
        out, _ = self.guest("ls -A /etc/flashrack /var/lib/flashrack 2>&1; "
                            "dpkg-query -W flashrack 2>&1")
        check("/etc/flashrack: No such file" in out and "flashrack.db" in out
              and "cache" not in out.split(),
              f"purged: /etc/flashrack and the image cache are gone, the records stay: {out}")

    def start_flashrack(self, wait_api=True):
        t = time.monotonic()
        if self.args.deb:
            command = self.unit_command()
        else:
            command = ("NO_COLOR=1 RUST_LOG=info,tower_http=warn /mnt/host/flashrack serve "
                       "--config /mnt/host/station.toml --listen 0.0.0.0:8080")
        # Its output goes to the second serial port, logged by QEMU on the host.
        self.log_offset = len(self.flashrack_log())
        self.vm.console.run(
            f"setsid sh -c '{command} & "
            "echo $! >/run/flashrack.pid; wait $!; echo VM-FLASHRACK-EXITED status $?' "
            "</dev/null >/dev/ttyS1 2>&1 &")
        deadline = time.monotonic() + 60
        while "dashboard: http://" not in self.flashrack_log():
            if time.monotonic() > deadline:
                raise CheckFailed("flashrack serve did not print its dashboard address")
            if "VM-FLASHRACK-EXITED" in self.flashrack_log():
                raise CheckFailed("flashrack serve exited")
            time.sleep(0.2)
        if not wait_api:
            return
        self.api.wait_healthy(30)
        log(f"flashrack serve is up in the guest ({time.monotonic() - t:.1f} s); API on "
            f"127.0.0.1:{self.host_port}")
        self.events = EventLog(self.host_port, self.token)
        self.events.start()
        ports = self.api.ports()
        check(sorted(ports) == sorted(LABELS), f"the API shows the mapped ports {LABELS}",
              fatal=True)
        for label in LABELS:
            check(ports[label]["port_path"] == self.port_paths[label] and ports[label]["mapped"],
                  f"port {label} is mapped to {self.port_paths[label]}")

    def flashrack_log(self):
        """What the station running now has logged."""
        try:
            with open(self.vm.flashrack_log, "rb") as f:
                return f.read().decode(errors="replace")[self.log_offset:]
        except OSError:
            return ""

    def stop_flashrack(self, events=True):
        stop = ("kill -TERM $(cat /run/flashrack.pid); for i in $(seq 1 100); do "
                "kill -0 $(cat /run/flashrack.pid) 2>/dev/null || { echo stopped; break; }; "
                "sleep 0.1; done")
        if events and self.args.check_sse_shutdown:
            out = self.vm.console.run(stop, timeout=30)
            check("stopped" in out,
                  "flashrack serve stopped on SIGTERM within 10 s with an event stream open")
        # A graceful shutdown waits for open connections, and an event stream
        # never ends by itself: the client closes it first (see README.md).
        if events:
            self.events.close()
        out = self.vm.console.run(stop, timeout=30)
        check("stopped" in out, "flashrack serve stopped on SIGTERM in the guest")
        deadline = time.monotonic() + 5
        while "VM-FLASHRACK-EXITED" not in self.flashrack_log() and time.monotonic() < deadline:
            time.sleep(0.1)
        check("VM-FLASHRACK-EXITED status 0" in self.flashrack_log(),
              "flashrack serve exited with status 0")

    # ----- helpers ---------------------------------------------------------------

    def import_image(self, name, data, upload):
        if upload:
            view = self.api.post(f"/api/v1/images/upload?name={name}", data,
                                 content_type="application/octet-stream", timeout=120)
            how = "uploaded"
        else:
            with open(os.path.join(self.share, name), "wb") as f:
                f.write(data)
            view = self.api.post("/api/v1/images/import", {"path": f"/mnt/host/{name}"},
                                 timeout=120)
            how = "imported from the 9p share"
            # Nothing outside the configured directories can be named, even by
            # an operator with the token (the service runs as root).
            for path in ("/etc/shadow", "/proc/self/environ", "/mnt/host/../../etc/passwd"):
                self.api.post("/api/v1/images/import", {"path": path}, expect=(403,))
            check(True, "import by path refuses /etc/shadow, /proc/self/environ and a .. "
                  "escape from the share (403)")
        digest = sha256(data)
        check(digest in json.dumps(view), f"{name} {how}: sha256 {digest[:16]}…")
        return digest

    def arm(self, digest, **options):
        run = self.api.post("/api/v1/runs", {"image": digest, **options})
        log(f"armed run {run['id']} ({run['image_name']}, options {run['options']})")
        return run

    def stop_run(self):
        self.api.post("/api/v1/runs/current/stop", {"reason": "vm suite: next scenario"})

    def wait_ports(self, done, timeout, tick=None):
        """Polls the station until `done(ports)`; calls `tick(ports)` each time."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            ports = self.api.ports()
            summary = " ".join(
                f"{label}={p['state']}" + (
                    f"({p['progress']['done'] // MiB}M)" if p.get("progress") else "")
                for label, p in sorted(ports.items()) if p["state"] != "empty")
            if summary != last:
                log(f"  ports: {summary or 'all empty'}")
                last = summary
            if tick:
                tick(ports)
            if done(ports):
                return ports
            if time.monotonic() > deadline:
                raise CheckFailed(f"ports not as expected after {timeout} s: "
                                  f"{json.dumps(ports, indent=1)[:4000]}")
            time.sleep(0.5)

    def check_image_on(self, stick, image, what):
        head = read_head(stick.path, len(image))
        check(sha256(head) == sha256(image),
              f"{what}: the backing file of {stick.serial} holds the image")

    # ----- scenarios -------------------------------------------------------------

    def scenario_run(self, image, digest):
        """Two healthy sticks (one throttled), one failing write, one too small,
        one pulled while writing."""
        log("== scenario 1: healthy, slow, failing, too small, pulled")
        bad_sector = 10 * MiB // 512 + 8
        sticks = {
            "A1": self.stick("ok1", "A1", "VMOK1"),
            "A2": self.stick("slow2", "A2", "VMSLOW2", throttle_bps=4 * MiB),
            "A3": self.stick("bad3", "A3", "VMBAD3", write_error_sector=bad_sector),
            "A4": self.stick("tiny4", "A4", "VMTINY4", size=8 * MiB),
            "A5": self.stick("pull5", "A5", "VMPULL5", throttle_bps=1 * MiB),
        }
        run = self.arm(digest)
        t = time.monotonic()
        for s in sticks.values():
            self.vm.plug(s)
        pulled = {}

        def tick(ports):
            p = ports["A5"]
            if not pulled and p["state"] == "writing" and p.get("progress") and \
                    p["progress"]["done"] >= 3 * MiB:
                log(f"  pulling VMPULL5 from A5 at {p['progress']['done'] // MiB} MiB written")
                pulled["at"] = p["progress"]["done"]
                pulled["kernel_name"] = p["device"]["kernel_name"]
                self.vm.unplug(sticks["A5"])

        def pulled_port_shows_removed(port):
            # A pulled stick's port keeps its verdict, with no device, until the
            # next stick arrives.
            v = port.get("verdict") or {}
            return port["state"] == "failed" and port["device"] is None and \
                v.get("reason") == "removed"

        def done(ports):
            return pulled and pulled_port_shows_removed(ports["A5"]) and all(
                ports[l]["state"] in ("passed", "failed", "refused")
                for l in ("A1", "A2", "A3", "A4"))

        ports = self.wait_ports(done, 150, tick)
        self.timings["scenario 1 (5 sticks)"] = time.monotonic() - t
        for label in ("A1", "A2", "A3", "A4"):
            p = ports[label]
            log(f"  {label}: {p['device']['serial']} /dev/{p['device']['kernel_name']} "
                f"{p['state']} {json.dumps(p['verdict'] or p['refusal'])}")
            check(p["device"]["serial"] == sticks[label].serial,
                  f"port {label} (ID_PATH {p['port_path']}) shows stick {sticks[label].serial}")
        for label in ("A1", "A2"):
            check(ports[label]["verdict"] == {"verdict": "pass"}, f"{label} passed")
            self.check_image_on(sticks[label], image, label)
        v = ports["A3"]["verdict"] or {}
        bad = bad_sector * 512
        check(v.get("verdict") == "fail" and v.get("reason") == "write_error"
              and v.get("stage") == "writing", f"A3 failed with write_error while writing: {v}")
        off = v.get("offset")
        # The engine narrows a failed write down to the failing block, so the
        # offset is the bad sector itself, not the start of the failed request.
        if check(off == bad,
                 f"A3's write_error offset {off} is the failing sector's byte {bad} "
                 f"(blkdebug fails sector {bad_sector})"):
            check(read_head(sticks["A3"].path, off) == image[:off],
                  f"A3: everything before offset {off} was written")
        # Too small is caught by the target guard when the stick is detected
        # (guard rule 5): a refusal with the reason, no attempt.
        p = ports["A4"]
        refusal = p["refusal"] or {}
        check(p["state"] == "refused" and refusal.get("code") == "too_small"
              and "too small" in refusal.get("message", "")
              and p["verdict"] is None, f"A4 (8 MiB) was refused as too small: {p['refusal']}")
        check(read_head(sticks["A4"].path, 8 * MiB) == bytes(8 * MiB),
              "A4: nothing was written to the too-small stick")
        p = ports["A5"]
        check(pulled_port_shows_removed(p) and (p["verdict"] or {}).get("during") == "writing",
              f"A5 (pulled while writing) shows 'removed during writing' with no stick: "
              f"{json.dumps(p['verdict'])}")
        # The verdict is in the records too.
        deadline = time.monotonic() + 30
        while True:
            report = self.api.get(f"/api/v1/runs/{run['id']}/report?format=json")
            rows = [r for r in report["attempts"] if r.get("serial") == "VMPULL5"]
            if (rows and rows[0].get("verdict")) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        log(f"  run report, VMPULL5: {json.dumps(rows)}")
        row = rows[0] if len(rows) == 1 else {}
        check(row.get("verdict") == "fail" and row.get("reason_code") == "removed"
              and row.get("stage") == "writing",
              "the run's report records VMPULL5 (pulled while writing) as removed during "
              f"writing (got {row.get('reason_code')}: {row.get('reason_detail')})")
        written = read_head(sticks["A5"].path, IMAGE_SIZE)
        prefix = 1 * MiB
        check(written[:prefix] == image[:prefix] and written != image,
              "A5: the pulled stick holds the image's start, not the whole image")
        current = self.api.get("/api/v1/runs/current")
        log(f"  run {current['id']}: passed {current['passed']}, failed {current['failed']}")
        check(current["passed"] == 2 and current["failed"] == 2 and current["active"] == 0,
              "the run counts 2 passed (A1, A2), 2 failed (A3, A5)")
        for label in ("A1", "A2", "A3", "A4"):
            self.vm.unplug(sticks[label])
        self.wait_ports(lambda ps: pulled_port_shows_removed(ps["A5"]) and all(
            p["state"] == "empty" for l, p in ps.items() if l != "A5"), 30)
        self.stop_run()

    def scenario_partitions(self, image, digest):
        """A partitioned image: the partitions the kernel finds after the write are
        not new sticks."""
        log("== scenario 2: a partitioned image")
        run = self.arm(digest)
        stick = self.stick("part6", "A6", "VMPART6")
        t = time.monotonic()
        self.vm.plug_enumerated(stick)
        ports = self.wait_ports(lambda ps: ps["A6"]["state"] in ("passed", "failed"), 90)
        self.timings["scenario 2 (partitioned)"] = time.monotonic() - t
        check(ports["A6"]["verdict"] == {"verdict": "pass"},
              f"A6 passed: {json.dumps(ports['A6']['verdict'])}")
        self.check_image_on(stick, image, "A6")
        if not ports["A6"]["device"]:
            raise CheckFailed(f"A6 shows no stick: {json.dumps(ports['A6'])}")
        name = ports["A6"]["device"]["kernel_name"]
        if self.args.deb:
            self.check_stick_permissions(name)
        # Wait for the kernel's and udev's view of the new partition table.
        # The kernel re-reads a disk's table when udev sees the writer close it
        # (its inotify watch); if that re-read ran while flashrack held the disk
        # open for the read-back it failed busy and nothing retries it, so after
        # a while the suite asks once itself (what `partprobe` would do). What is
        # checked here is that partitions appearing are not new sticks.
        deadline = time.monotonic() + 30
        reread_at = time.monotonic() + 8
        while True:
            if reread_at is not None and time.monotonic() > reread_at:
                log(f"  partitions of {name} not seen yet; asking the kernel to re-read the table")
                self.vm.console.run(f"blockdev --rereadpt /dev/{name}; true")
                reread_at = None
            out = self.vm.console.run(
                f"udevadm settle; ls /sys/block/{name}; for p in /sys/block/{name}/{name}[0-9]*; "
                f"do [ -e $p ] && udevadm info -q property -p $p | grep -E '^(DEVNAME|DEVTYPE)='; "
                "done; true")
            if f"DEVNAME=/dev/{name}2" in out:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"no partitions of {name} in the guest: {out}")
            time.sleep(0.5)
        log("  guest, after the write: "
            + " ".join(w for w in out.split() if w.startswith(("DEVNAME=", "DEVTYPE="))))
        time.sleep(1)  # let flashrack see (and ignore) the partitions' add events
        ports = self.api.ports()
        check(sorted(ports) == sorted(LABELS), f"the API still shows exactly the ports {LABELS}")
        kernel_names = [p["device"]["kernel_name"] for p in ports.values() if p.get("device")]
        check(kernel_names == [name], f"only /dev/{name} is a port's device: {kernel_names}")
        devices = self.api.get("/api/v1/devices")
        text = json.dumps(devices)
        check(f'"{name}1"' not in text and f'"{name}2"' not in text,
              "no partition among the API's devices")
        seen = {p["device"]["kernel_name"] for p in self.events.port_events() if p.get("device")}
        check(not any(n.startswith(name) and n != name for n in seen),
              f"no port event ever showed a partition of {name}")
        current = self.api.get("/api/v1/runs/current")
        check(current["passed"] == 1 and current["failed"] == 0 and current["active"] == 0,
              "the run counts 1 passed, nothing else")
        self.vm.unplug(stick)
        self.wait_ports(lambda ps: ps["A6"]["state"] == "empty", 30)
        self.stop_run()
        log(f"  run {run['id']} done")

    def scenario_eject(self, image, digest):
        """Eject on pass: the guest kernel lets go of the passed stick."""
        log("== scenario 3: eject on pass")
        self.arm(digest, eject_on_pass=True)
        stick = self.stick("eject7", "A1", "VMEJECT7")
        t = time.monotonic()
        self.vm.plug_enumerated(stick)
        # The port is emptied as soon as the kernel has let go of the stick, so
        # the moment it shows `ejected: true` is caught on the event stream.
        deadline = time.monotonic() + 90
        while True:
            mine = [p for p in self.events.port_events("A1")
                    if (p.get("device") or {}).get("serial") == "VMEJECT7"]
            ejected = [p for p in mine if p.get("ejected")]
            if ejected:
                break
            if any(p["state"] in ("failed", "refused") for p in mine) or \
                    time.monotonic() > deadline:
                raise CheckFailed(f"A1 was not ejected: {json.dumps(mine[-3:])}")
            time.sleep(0.2)
        self.timings["scenario 3 (eject)"] = time.monotonic() - t
        p = ejected[0]
        name = p["device"]["kernel_name"]
        check(p["state"] == "passed" and p["verdict"] == {"verdict": "pass"}
              and p["ejected"] is True,
              f"the API showed A1 (VMEJECT7, /dev/{name}) passed and ejected: true")
        deadline = time.monotonic() + 20
        while True:
            out = self.vm.console.run(f"ls /sys/block; [ -e /sys/block/{name} ] && echo STILL-THERE; true")
            if "STILL-THERE" not in out:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"/sys/block/{name} is still there after the eject")
            time.sleep(0.3)
        check(True, f"the guest kernel let go of {name}: /sys/block has {out.split() or 'nothing'}")
        a1 = self.api.ports()["A1"]
        log(f"  A1 after the eject: state={a1['state']} ejected={a1['ejected']} "
            f"device={a1['device'] and a1['device']['serial']}")
        self.check_image_on(stick, image, "A1 (ejected)")
        # The stick is still in its (virtual) port: the operator pulls it now.
        self.vm.unplug(stick)
        self.stop_run()

    def scenario_reset(self, image, digest):
        """Reset before the read-back over real USB: the stick leaves the guest
        and comes back as a new sdX in the same port with the same serial, and
        its attempt carries on and passes; a stick pulled while it resets fails
        as removed. Measures what the reset adds per stick."""
        log(f"== scenario 4: reset before the read-back ({self.args.usb_reset})")
        run = self.arm(digest)
        stick = self.stick("reset8", "A2", "VMRESET8")
        log_from = len(self.flashrack_log())
        t = time.monotonic()
        self.vm.plug_enumerated(stick)
        ports = self.wait_ports(lambda ps: ps["A2"]["state"] in ("passed", "failed"), 120)
        self.timings["scenario 4 (reset, pass)"] = time.monotonic() - t
        p = ports["A2"]
        check(p["verdict"] == {"verdict": "pass"}, f"A2 (VMRESET8) passed: {json.dumps(p['verdict'])}")
        check((p.get("figures") or {}).get("verified_after_reset") is True,
              "A2's pass says its read-back followed a reset (verified_after_reset: true)")
        # The API can show the verdict a moment before the event stream
        # delivers it: the states are read once the stream has it too (they
        # once ended at "verifying", the pass on its way).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.events.lock:
                if any(n == "port" and v["port"]["label"] == "A2" and v["port"]["state"] == "passed"
                       and at >= t for at, n, v in self.events.events):
                    break
            time.sleep(0.1)
        with self.events.lock:
            timed = [(at, v["port"]) for at, n, v in self.events.events
                     if n == "port" and v["port"]["label"] == "A2" and at >= t]
        mine = [(at, e) for at, e in timed
                if (e.get("device") or {}).get("serial") == "VMRESET8" or e["state"] == "resetting"]
        states = []
        for _, e in mine:
            if not states or states[-1] != e["state"]:
                states.append(e["state"])
        names = []
        for _, e in mine:
            name = (e.get("device") or {}).get("kernel_name")
            if name and name not in names:
                names.append(name)
        log(f"  A2 states: {' -> '.join(states)}; kernel names: {names}")
        check("resetting" in states and states.index("resetting") < states.index("verifying"),
              "A2 showed 'resetting' before 'verifying'")
        # One attempt from its first stage to its verdict: the capacity probe's
        # reset (preparing -> resetting -> preparing) and the one before the
        # read-back are stages of it; an empty port, a stick detected anew or a
        # failure in between would be a removal and a second attempt.
        attempt = states[states.index("preparing"):] if "preparing" in states else []
        in_attempt = {"preparing", "resetting", "writing", "flushing", "verifying", "passed"}
        check("empty" not in states and attempt and set(attempt) <= in_attempt
              and attempt[-1] == "passed" and attempt.count("passed") == 1,
              "the reset was part of the attempt: no empty port, no second attempt")
        # The kernel may give the returning disk its old name again (the name
        # was freed when it left); what says it left and came back is the
        # station's log, and its new disk (a new diskseq) is what the target
        # was pinned to.
        left = f"left the system during its reset port=A2 kernel_name={names[0]}"
        back = f"back from its reset port=A2 kernel_name={p['device']['kernel_name']}"
        # The log reaches the host through the guest's serial port a little
        # after the API shows the verdict: wait (10 s at most) for both lines.
        # Only what the station logged since A2's stick was plugged counts: the
        # same lines may be there from scenario 1 (A2's stick there can come
        # back from its reset as sda).
        def came_back(text):
            at = text.rfind(left)
            return at >= 0 and text.find(back, at) > at

        # With usbdevfs, usb-storage may absorb the port reset (its pre- and
        # post-reset handlers): the disk stays, nothing leaves, and the
        # target says so in its own line (before= and after= the same name).
        stayed = f"before={names[0]} after={names[0]} method="

        def absorbed(text):
            return any(stayed in line and "back from its reset" in line
                       for line in text.splitlines())

        deadline = time.monotonic() + 10
        text = self.flashrack_log()[log_from:]
        while not came_back(text) and not absorbed(text) and time.monotonic() < deadline:
            time.sleep(0.2)
            text = self.flashrack_log()[log_from:]
        if self.args.usb_reset == "authorize" or not absorbed(text):
            check(came_back(text),
                  f"the stick left the guest and came back in the same port "
                  f"({' -> '.join(names) if len(names) > 1 else names[0] + ', the name reused'})")
            self.figures["scenario 4 re-enumeration"] = (
                f"{self.args.usb_reset}: the disk left and came back "
                f"({' -> '.join(names) if len(names) > 1 else names[0] + ', the name reused'})")
        else:
            check(p["device"]["kernel_name"] == names[0] and not came_back(text),
                  f"usbdevfs: the driver absorbed the port reset: /dev/{names[0]} stayed, "
                  "no disk left the guest")
            self.figures["scenario 4 re-enumeration"] = (
                f"usbdevfs: usb-storage absorbed the port reset, /dev/{names[0]} stayed "
                "(no remove/add)")
        check(p["device"]["serial"] == "VMRESET8" and p["port_path"] == self.port_paths["A2"],
              "same serial, same port path after the reset")
        # The reset before the read-back: the last 'resetting' before the
        # first 'verifying' (the capacity probe resets the stick while it
        # prepares too).
        ended = next(at for at, e in mine if e["state"] == "verifying")
        before = [(at, e["state"]) for at, e in mine if at <= ended]
        flushed = max(at for at, state in before if state == "flushing")
        began = min(at for at, state in before if state == "resetting" and at >= flushed)
        self.timings["reset (one stick, resetting -> verifying)"] = ended - began
        self.figures[f"scenario 4 reset ({self.args.usb_reset})"] = (
            f"{ended - began:.2f} s resetting -> verifying")
        log(f"  the reset took {ended - began:.2f} s (resetting -> verifying, seen from the host)")
        self.check_image_on(stick, image, "A2 (reset)")
        report = self.api.get(f"/api/v1/runs/{run['id']}/report?format=json")
        rows = [r for r in report["attempts"] if r.get("serial") == "VMRESET8"]
        check(len(rows) == 1 and rows[0].get("verified_after_reset") is True,
              f"the run's report has one attempt of VMRESET8, verified after reset: {rows}")
        if self.args.deb:
            self.check_reset_permissions(p["device"]["kernel_name"])
        self.vm.unplug(stick)
        self.wait_ports(lambda ps: ps["A2"]["state"] == "empty", 30)

        # Pulled while it resets: caught on the event stream as soon as the port
        # shows 'resetting'.
        pulled = self.stick("resetpull9", "A3", "VMRPULL9")
        seen = len(self.events.port_events("A3"))
        self.vm.plug_enumerated(pulled)
        deadline = time.monotonic() + 120
        while True:
            new = self.events.port_events("A3")[seen:]
            if any(e["state"] == "resetting" for e in new):
                break
            if any(e["state"] in ("passed", "failed") for e in new) or time.monotonic() > deadline:
                raise CheckFailed(f"A3 never showed resetting: {json.dumps(new[-3:])}")
            time.sleep(0.05)
        self.vm.unplug(pulled)
        # Failed, and (once the station has seen it leave) no stick in the port.
        ports = self.wait_ports(lambda ps: ps["A3"]["state"] == "passed" or (
            ps["A3"]["state"] == "failed" and ps["A3"]["device"] is None), 60)
        v = ports["A3"]["verdict"] or {}
        log(f"  A3 pulled while resetting: {json.dumps(v)}")
        # Removed, as a rule. When the pull lands while the kernel is still
        # taking the disk away for the reset (its cache sync then hangs, and
        # the sysfs write with it, for about a minute), nothing tells the
        # station the stick was pulled rather than not coming back: it gives
        # up at its reset timeout, as lost_after_reset, and the port says so
        # then, not at the stall timeout (which would say stalled).
        check(v.get("reason") in ("removed", "lost_after_reset")
              and ports["A3"]["device"] is None,
              f"A3 (pulled while resetting) failed as removed (or lost_after_reset, "
              f"when the kernel's reset hung), with no stick: {json.dumps(v)}")
        self.stop_run()

    # The station's records, read in the guest with sqlite3: for each attempt
    # of the given runs, when its stick was detected (the port's last
    # `device_added` event at or before the attempt's start), when the attempt
    # started, and when it entered each stage (`stage_changed` events), in the
    # station's clock (unix milliseconds).
    ATTEMPT_TIMES_SQL = """
SELECT a.id AS attempt, a.run_id AS run, a.port_label AS port, d.serial AS serial,
       a.state AS state, a.started_at AS started_at, a.finished_at AS finished_at,
       (SELECT max(e.at) FROM events e WHERE e.kind = 'device_added'
          AND e.port_label = a.port_label AND e.at <= a.started_at) AS detected_at,
       (SELECT min(e.at) FROM events e WHERE e.kind = 'stage_changed'
          AND e.attempt_id = a.id AND json_extract(e.detail, '$.stage') = 'preparing')
          AS preparing_at,
       (SELECT min(e.at) FROM events e WHERE e.kind = 'stage_changed'
          AND e.attempt_id = a.id AND json_extract(e.detail, '$.stage') = 'writing')
          AS writing_at,
       (SELECT min(e.at) FROM events e WHERE e.kind = 'stage_changed'
          AND e.attempt_id = a.id AND json_extract(e.detail, '$.stage') = 'flushing')
          AS flushing_at,
       (SELECT min(e.at) FROM events e WHERE e.kind = 'stage_changed'
          AND e.attempt_id = a.id AND json_extract(e.detail, '$.stage') = 'verifying')
          AS verifying_at
FROM attempts a JOIN devices d ON d.id = a.device_id
WHERE a.run_id IN ({runs}) ORDER BY a.id;
"""

    def attempt_times(self, runs):
        """ATTEMPT_TIMES_SQL's rows for `runs`, as dictionaries."""
        sql = self.ATTEMPT_TIMES_SQL.replace("{runs}", ", ".join(str(int(r)) for r in runs))
        with open(os.path.join(self.share, "attempt-times.sql"), "w") as f:
            f.write(sql)
        out, status = self.guest("sqlite3 -json /var/lib/flashrack/flashrack.db "
                                 "</mnt/host/attempt-times.sql")
        if status != 0:
            raise CheckFailed(f"sqlite3 on the station's records: {out}")
        return json.loads(out) if out.strip() else []

    def scenario_burst(self, image, digest):
        """Sixteen sticks behind two hubs plugged at once: every one detected,
        mapped to its port, written, reset, read back and passed. Reports the
        time from plug to first byte per stick, against one stick plugged alone
        first (the ideal)."""
        log(f"== scenario 5: a burst of {len(LABELS)} sticks behind {HUBS} hubs")
        run = self.arm(digest)
        # The ideal: one stick of the same kind, alone.
        lone = self.stick("lone", LABELS[-1], "VMLONE", size=BURST_STICK_SIZE)
        watch = FirstWrites(self.vm, [lone])
        watch.start()
        t = time.monotonic()
        self.vm.plug_enumerated(lone)
        ports = self.wait_ports(
            lambda ps: ps[LABELS[-1]]["state"] in ("passed", "failed", "refused"), 120)
        self.timings["scenario 5 (one stick alone)"] = time.monotonic() - t
        watch.stop()
        check(ports[LABELS[-1]]["verdict"] == {"verdict": "pass"},
              f"the lone stick passed in {LABELS[-1]}: {json.dumps(ports[LABELS[-1]]['verdict'])}")
        lone_first = watch.first.get(lone.name)
        self.check_image_on(lone, image, f"{LABELS[-1]} (alone)")
        self.vm.unplug(lone)
        self.wait_ports(lambda ps: ps[LABELS[-1]]["state"] == "empty", 30)

        sticks = {label: self.stick(f"burst{label}", label, f"VMB{label}", size=BURST_STICK_SIZE)
                  for label in LABELS}
        watch = FirstWrites(self.vm, sticks.values())
        watch.start()
        seen = {label: len(self.events.port_events(label)) for label in LABELS}
        t = time.monotonic()
        for stick in sticks.values():
            self.vm.plug(stick)
        log(f"  {len(sticks)} sticks plugged in {time.monotonic() - t:.2f} s")

        def done(ps):
            return all(ps[label]["state"] in ("passed", "failed", "refused")
                       and (ps[label].get("device") or {}).get("serial") == sticks[label].serial
                       for label in LABELS)

        ports = self.wait_ports(done, 420)
        burst_secs = time.monotonic() - t
        self.timings[f"scenario 5 (burst of {len(sticks)})"] = burst_secs
        watch.stop()
        if watch.error:
            log(f"  (the write counters could not be read: {watch.error})")
        passed = [label for label in LABELS if ports[label]["verdict"] == {"verdict": "pass"}]
        for label in LABELS:
            p = ports[label]
            if label not in passed:
                log(f"  {label}: {p['state']} {json.dumps(p['verdict'] or p['refusal'])}")
        check(len(passed) == len(LABELS),
              f"all {len(LABELS)} sticks passed ({len(passed)} did)")
        check(all(ports[label]["device"]["serial"] == sticks[label].serial
                  and ports[label]["port_path"] == self.port_paths[label] for label in LABELS),
              "every stick is shown in the port it was plugged into (its ID_PATH in the "
              "guest's port map)")
        check(all((ports[label].get("figures") or {}).get("verified_after_reset") is True
                  for label in passed),
              "every pass was read back after a reset (verified_after_reset: true)")
        bad = [label for label in LABELS
               if sha256(read_head(sticks[label].path, len(image))) != sha256(image)]
        check(not bad, f"every stick's backing file holds the image (not: {bad or 'none'})")
        current = self.api.get("/api/v1/runs/current")
        check(current["passed"] == len(LABELS) + 1 and current["failed"] == 0
              and current["active"] == 0,
              f"the run counts {len(LABELS) + 1} passed (the lone stick and the burst), "
              f"nothing else: passed {current['passed']}, failed {current['failed']}")

        # Each port's events on the host's stream (a live view: a client that
        # falls behind gets a snapshot instead of the events it missed, and
        # under the burst this driver's reader lags by seconds; the records
        # below are the station's own times).
        with self.events.lock:
            timed = [(at, v["port"]) for at, n, v in self.events.events
                     if n == "port" and at >= t]
            timed += [(at, port) for at, n, v in self.events.events
                      if n == "snapshot" and at >= t for port in v.get("ports", [])]
        timed.sort(key=lambda x: x[0])
        # The station's records: detection -> the image's first write.
        rows = self.attempt_times([run["id"]])
        by_serial = {r["serial"]: r for r in rows}
        check(all(s.serial in by_serial for s in sticks.values()) and "VMLONE" in by_serial,
              f"the records hold an attempt of every stick ({len(rows)} attempts)")

        def detect_to_write(serial):
            r = by_serial.get(serial) or {}
            if r.get("detected_at") is None or r.get("writing_at") is None:
                return None
            return (r["writing_at"] - r["detected_at"]) / 1000

        def detect_to_start(serial):
            r = by_serial.get(serial) or {}
            if r.get("detected_at") is None or r.get("started_at") is None:
                return None
            return (r["started_at"] - r["detected_at"]) / 1000

        def prepare_to_write(serial):
            r = by_serial.get(serial) or {}
            if r.get("preparing_at") is None or r.get("writing_at") is None:
                return None
            return (r["writing_at"] - r["preparing_at"]) / 1000

        def flush_to_verify(serial):
            r = by_serial.get(serial) or {}
            if r.get("flushing_at") is None or r.get("verifying_at") is None:
                return None
            return (r["verifying_at"] - r["flushing_at"]) / 1000

        def plug_to_byte(stick):
            at = watch.first.get(stick.name) if stick is not lone else lone_first
            return None if at is None else at - stick.plugged_at

        log(f"  {'port':<5} {'serial':<8} {'plug->seen':>11} {'plug->1st byte':>15} "
            f"{'detect->start':>14} "
            f"{'detect->writing':>16} {'flush->verify':>14} {'plug->verdict':>14}")
        verdict_at, detected_at = {}, {}
        for label in LABELS:
            at = next((at for at, e in timed if e["label"] == label
                       and (e.get("device") or {}).get("serial") == sticks[label].serial), None)
            if at is not None:
                detected_at[label] = at - sticks[label].plugged_at
        for label in LABELS:
            at = next((at for at, e in timed if e["label"] == label
                       and e["state"] in ("passed", "failed")), None)
            if at is not None:
                verdict_at[label] = at - sticks[label].plugged_at

        def fmt(x, width):
            return f"{'-':>{width}}" if x is None else f"{x:>{width - 2}.2f} s"

        for label in LABELS:
            st = sticks[label]
            log(f"  {label:<5} {st.serial:<8} {fmt(detected_at.get(label), 11)} "
                f"{fmt(plug_to_byte(st), 15)} "
                f"{fmt(detect_to_start(st.serial), 14)} "
                f"{fmt(detect_to_write(st.serial), 16)} {fmt(flush_to_verify(st.serial), 14)} "
                f"{fmt(verdict_at.get(label), 14)}")
        log(f"  {LABELS[-1]:<5} {'VMLONE':<8} {fmt(None, 11)} {fmt(plug_to_byte(lone), 15)} "
            f"{fmt(detect_to_start('VMLONE'), 14)} "
            f"{fmt(detect_to_write('VMLONE'), 16)} {fmt(flush_to_verify('VMLONE'), 14)}"
            "  (plugged alone)")

        def spread(name, values, ideal):
            values = sorted(v for v in values if v is not None)
            if not values:
                log(f"  {name}: no figures")
                return
            text = (f"min {values[0]:.2f} s, median {statistics.median(values):.2f} s, "
                    f"max {values[-1]:.2f} s over {len(values)} sticks")
            if values[0] >= 0.05:
                text += f"; slowest/fastest {values[-1] / values[0]:.1f}"
            if ideal:
                text += f", slowest/alone ({ideal:.2f} s) {values[-1] / ideal:.1f}"
            log(f"  {name}: {text}")
            self.figures[name] = text

        spread("plug -> the station shows the stick (host: first port event with its serial)",
               detected_at.values(), None)
        spread("plug -> first byte on the stick (host: QEMU's write counter)",
               [plug_to_byte(s) for s in sticks.values()], plug_to_byte(lone))
        spread("detection -> attempt started (station records: device_added -> "
               "attempts.started_at)",
               [detect_to_start(s.serial) for s in sticks.values()], detect_to_start("VMLONE"))
        spread("detection -> first write of the image (station records: device_added -> "
               "stage_changed writing)",
               [detect_to_write(s.serial) for s in sticks.values()], detect_to_write("VMLONE"))
        spread(f"preparing -> writing: the open and the capacity probe with its reset "
               f"({self.args.usb_reset}; station records: stage_changed)",
               [prepare_to_write(s.serial) for s in sticks.values()], prepare_to_write("VMLONE"))
        spread(f"flush + reset + reopen ({self.args.usb_reset}; station records: stage_changed "
               "flushing -> verifying)",
               [flush_to_verify(s.serial) for s in sticks.values()], flush_to_verify("VMLONE"))
        spread("plug -> verdict (host)", verdict_at.values(), None)
        # The station once dropped the engine events still queued for an
        # attempt whose end it handled first, and their stage_changed records
        # with them (the fastest sticks of a burst).
        staged = sum(flush_to_verify(s.serial) is not None for s in sticks.values())
        check(staged == len(sticks),
              f"the records hold the flushing and verifying stages of every burst attempt "
              f"({staged} of {len(sticks)})")
        for stick in sticks.values():
            self.vm.unplug(stick)
        self.wait_ports(lambda ps: all(p["state"] == "empty" for p in ps.values()), 60)
        self.stop_run()

    # ----- main --------------------------------------------------------------------

    def run(self):
        t0 = time.monotonic()
        self.boot()
        self.start_guest()
        self.write_config()
        if self.args.deb:
            log("== the Debian package")
            self.install_package()
            self.packaged_default()
            # The operator's configuration replaces the installed one's
            # content (as an editor or `ports learn` would; owner and mode stay).
            out, status = self.guest("cat /mnt/host/station.toml >/etc/flashrack/station.toml")
            check(status == 0, "the station's configuration is written to "
                  "/etc/flashrack/station.toml")
        self.start_flashrack()
        if self.args.deb:
            self.check_privileges()
        image = random_image(1, IMAGE_SIZE)
        parts = mbr_image(2, IMAGE_SIZE)
        digest = self.import_image("test.img", image, upload=False)
        parts_digest = self.import_image("parts.img", parts, upload=True)
        self.scenario_run(image, digest)
        self.scenario_partitions(parts, parts_digest)
        self.scenario_eject(image, digest)
        # With --deb the packaged service (no capability) resets through the
        # permission 70-flashrack.rules gives group flashrack on each stick's
        # `authorized` attribute.
        self.scenario_reset(image, digest)
        burst = random_image(3, BURST_IMAGE_SIZE)
        burst_digest = self.import_image("burst.img", burst, upload=False)
        self.scenario_burst(burst, burst_digest)
        self.stop_flashrack()
        if self.args.deb:
            self.remove_package()
        self.timings["total"] = time.monotonic() - t0

    def dump_logs(self):
        print("\n===== guest console log (last 20000 characters) =====", flush=True)
        if self.vm:
            try:
                print(open(self.vm.console_log, errors="replace").read()[-20000:])
            except OSError as e:
                print(e)
            if self.vm.alive() and self.vm.console:
                try:
                    print("===== guest dmesg (tail) =====")
                    print(self.vm.console.run("dmesg | tail -n 60", timeout=10))
                except Exception as e:
                    print(f"(no dmesg: {e})")
            print("===== flashrack log =====")
            print(self.flashrack_log()[-20000:])
            try:
                print("===== qemu log =====")
                print(open(self.vm.qemu_log, errors="replace").read()[-5000:])
            except OSError as e:
                print(e)
        print("===== end of logs =====", flush=True)

    def cleanup(self):
        if self.events:
            self.events.close()
        if self.vm:
            self.vm.stop()
        if self.args.keep:
            # Renamed so that later runs do not take it for a stale one.
            kept = tempfile.mkdtemp(prefix="flashrack-vm-kept-")
            os.rmdir(kept)
            os.rename(self.workdir, kept)
            log(f"kept {kept}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def remove_stale_workdirs():
    """Removes the work directories of drivers that were killed (SIGKILL leaves
    no chance to clean up; their QEMU died with them)."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        parts = name.split("-")
        if not name.startswith("flashrack-vm-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except OSError:
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=os.path.join(ROOT, "target", "vm-cache"),
                        help="downloads and the unpacked kernel (default: target/vm-cache)")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "flashrack"),
                        help="the flashrack binary to test (default: target/release/flashrack)")
    parser.add_argument("--deb", metavar="PATH",
                        help="install this Debian package (scripts/package) in the guest and "
                             "run the station from its unit, as its user, instead of --binary")
    parser.add_argument("--no-build", action="store_true",
                        help="do not run `cargo build --release -p flashrack-cli` first")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (logs, backing files)")
    parser.add_argument("--usb-reset", choices=["authorize", "usbdevfs"], default="authorize",
                        help="how the station resets sticks before their read-back "
                             "(the configuration's [engine] usb_reset; default authorize)")
    parser.add_argument("--check-sse-shutdown", action="store_true",
                        help="also require flashrack to stop on SIGTERM while an event "
                             "stream (GET /api/v1/events) is open (fails today)")
    args = parser.parse_args()
    if args.deb and args.usb_reset != "authorize":
        # The package's udev rules give group flashrack a stick's `authorized`
        # attribute, not its /dev/bus/usb node (deploy/README.md says why).
        parser.error("--deb runs the packaged service, which resets with "
                     "--usb-reset authorize only")
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C: QEMU is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    ensure_host_packages()
    if not args.no_build and not args.deb:
        log("cargo build --release -p flashrack-cli")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "flashrack-cli"],
                       cwd=ROOT, check=True)
    build_secs = time.monotonic() - t0
    suite = Suite(args)
    ok = False
    try:
        suite.run()
        ok = not FAILED_CHECKS
    except (Exception, KeyboardInterrupt):
        traceback.print_exc()
    finally:
        if not ok:
            print("\nVM SUITE FAILED", flush=True)
            suite.dump_logs()
        suite.cleanup()
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in suite.timings.items())
    log(f"timings: packages+build {build_secs:.1f} s, {timings}")
    for name, text in suite.figures.items():
        log(f"figure: {name}: {text}")
    for what in FAILED_CHECKS:
        log(f"failed check: {what}")
    log("VM SUITE PASSED" if ok else "VM SUITE FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
