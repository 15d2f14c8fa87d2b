"""One QEMU virtual machine: process, QMP, serial console, emulated USB sticks.

Standard library only.
"""

import ctypes
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time

from guest import log

HUB_PORTS = 8  # QEMU's usb-hub
HUBS = 2  # two hubs, on the xHCI controller's ports 1 and 2


def _die_with_parent():
    """In the child before exec: SIGKILL it when the driver dies (PR_SET_PDEATHSIG),
    so that even a killed driver leaves no QEMU behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass



def connect_unix(path, timeout):
    """Connects to a Unix socket that QEMU may not have created yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

class QmpError(Exception):
    pass


class Qmp:
    """A QMP client; events are kept in `events` (with arrival times)."""

    def __init__(self, path, timeout=30):
        self.sock = connect_unix(path, timeout)
        self.rbuf = b""
        self.events = []
        self.lock = threading.Lock()
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"no QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self, block=True):
        while b"\n" not in self.rbuf:
            if not block and not select.select([self.sock], [], [], 0)[0]:
                return None
            data = self.sock.recv(65536)
            if not data:
                raise QmpError("QMP connection closed")
            self.rbuf += data
        line, self.rbuf = self.rbuf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, **arguments):
        with self.lock:
            msg = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                reply = self._read()
                if "event" in reply:
                    self.events.append((time.monotonic(), reply))
                    continue
                if "error" in reply:
                    raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
                return reply.get("return")

    def poll_events(self):
        """Reads the events that arrived while no command ran."""
        with self.lock:
            while True:
                reply = self._read(block=False)
                if reply is None:
                    return
                self.events.append((time.monotonic(), reply))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Console:
    """The guest's serial console: a shell on ttyS0, everything logged to a file."""

    def __init__(self, sock_path, log_path, timeout=30):
        self.log_path = log_path
        self.sock = connect_unix(sock_path, timeout)
        self.buf = b""
        self.cond = threading.Condition()
        self.closed = False
        self.seq = 0
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def _reader(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.closed = True
                    self.cond.notify_all()
                    return
                self.buf += data
                self.cond.notify_all()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout):
        """Waits for `pattern` in the console log (which has the output from
        before we connected too)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.log_text())
            if m:
                return m
            time.sleep(0.1)
        raise TimeoutError(f"console: no {pattern!r} after {timeout} s")

    def run(self, command, timeout=30, check=True):
        """Runs a shell command in the guest; returns its output (stdout+stderr)."""
        self.seq += 1
        n = self.seq
        # The markers are split by quotes in the echoed command line, so only
        # the command's own output matches them.
        line = f"echo '@@B''{n}@@'; {command} 2>&1; echo '@@E''{n}@@' $?\n"
        with self.cond:
            start = len(self.buf)
        self.sock.sendall(line.encode())
        rx = re.compile(rb"@@B%d@@\r?\n(.*?)@@E%d@@ (\d+)" % (n, n), re.S)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, start)
                if m:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise TimeoutError(f"guest command timed out: {command}")
                self.cond.wait(left)
        out = m.group(1).decode(errors="replace").replace("\r\n", "\n")
        status = int(m.group(2))
        if check and status != 0:
            raise RuntimeError(f"guest command failed ({status}): {command}\n{out}")
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Stick:
    """An emulated USB stick: a backing file, block nodes and a usb-storage device."""

    def __init__(self, name, path, size, serial, hub_port, throttle_bps=None,
                 write_error_sector=None, hub=1):
        self.name = name
        self.path = path
        self.size = size
        self.serial = serial
        self.hub = hub
        self.hub_port = hub_port
        self.throttle_bps = throttle_bps
        self.write_error_sector = write_error_sector
        self.plugged = False
        # When device_add returned (the host's monotonic clock).
        self.plugged_at = None

    @property
    def usb_port(self):
        """The port it is plugged into: `<hub>.<hub port>` on the xHCI bus."""
        return f"{self.hub}.{self.hub_port}"

    @property
    def node(self):
        return f"{self.name}-top"

    @property
    def group(self):
        return f"{self.name}-tg"


class Vm:
    def __init__(self, workdir, kernel, initrd, share, host_port, memory_mb=1024, cpus=2):
        self.workdir = workdir
        self.console_log = os.path.join(workdir, "console.log")
        self.flashrack_log = os.path.join(workdir, "flashrack.log")
        self.qemu_log = os.path.join(workdir, "qemu.log")
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        self.con_path = os.path.join(workdir, "console.sock")
        self.args = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mb),
            "-smp", str(cpus), "-nodefaults", "-nographic", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 loglevel=4 panic=-1",
            "-chardev", f"socket,id=con,path={self.con_path},server=on,wait=off,"
                        f"logfile={self.console_log}",
            "-serial", "chardev:con",
            "-chardev", f"file,id=flog,path={self.flashrack_log}",
            "-serial", "chardev:flog",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:8080",
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-virtfs", f"local,path={share},mount_tag=host,security_model=none,readonly=on",
            "-device", "qemu-xhci,id=xhci",
        ] + [a for i in range(1, HUBS + 1)
             for a in ("-device", f"usb-hub,id=hub{i},bus=xhci.0,port={i}")]
        self.proc = None
        self.qmp = None
        self.console = None
        self.sticks = {}

    def start(self, boot_timeout=90):
        t0 = time.monotonic()
        with open(self.qemu_log, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        log(f"qemu started (pid {self.proc.pid})")
        self.qmp = Qmp(self.qmp_path)
        self.console = Console(self.con_path, self.console_log)
        self.console.wait_log(r"VM-RC: ready", boot_timeout)
        # A prompt answers: the shell is up.
        self.console.run("true", timeout=30)
        log(f"guest booted in {time.monotonic() - t0:.1f} s")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stops QEMU: quit over QMP, then SIGTERM and SIGKILL by PID."""
        if self.console:
            self.console.close()
        if self.proc is None:
            return
        if self.proc.poll() is None and self.qmp:
            try:
                self.qmp.execute("quit")
            except Exception:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.qmp:
            self.qmp.close()
        log(f"qemu stopped (pid {self.proc.pid}, status {self.proc.returncode})")

    # ----- sticks ------------------------------------------------------------

    def plug(self, stick):
        """Creates the backing file (sparse) and hot-adds the stick."""
        if not os.path.exists(stick.path):
            with open(stick.path, "wb") as f:
                f.truncate(stick.size)
        q = self.qmp
        node = {"driver": "file", "filename": stick.path, "node-name": f"{stick.name}-file"}
        if stick.write_error_sector is not None:
            node = {
                "driver": "blkdebug", "node-name": f"{stick.name}-dbg", "image": node,
                "inject-error": [{"event": "write_aio", "iotype": "write", "errno": 5,
                                  "sector": stick.write_error_sector, "once": False,
                                  "immediately": False}],
            }
        node = {"driver": "raw", "node-name": f"{stick.name}-raw", "file": node}
        if stick.throttle_bps:
            q.execute("object-add", **{"qom-type": "throttle-group", "id": stick.group,
                                       "limits": {"bps-write": stick.throttle_bps}})
            node = {"driver": "throttle", "node-name": stick.node,
                    "throttle-group": stick.group, "file": node}
        else:
            node["node-name"] = stick.node
        q.execute("blockdev-add", **node)
        q.execute("device_add", driver="usb-storage", id=stick.name, drive=stick.node,
                  serial=stick.serial, bus="xhci.0", port=stick.usb_port,
                  removable=True)
        stick.plugged_at = time.monotonic()
        stick.plugged = True
        self.sticks[stick.name] = stick

    def bytes_written(self):
        """{node name: bytes written to it}, as QEMU counts them for each
        device's block backend (`query-blockstats`; named by the backend's
        top node)."""
        stats = self.qmp.execute("query-blockstats")
        return {s["node-name"]: s["stats"]["wr_bytes"] for s in stats if s.get("node-name")}

    def unthrottle(self, stick):
        if stick.throttle_bps:
            self.qmp.execute("qom-set", path=f"/objects/{stick.group}", property="limits",
                             value={})

    def device_present(self, name):
        q = self.qmp.execute("qom-list", path="/machine/peripheral")
        return any(p["name"] == name for p in q)

    def unplug(self, stick, timeout=20):
        """Pulls the stick: device_del, wait until it is gone, then delete its nodes.

        A throttled stick is unthrottled with the VM paused first: pulling one with
        requests queued in the throttle has crashed QEMU.
        """
        q = self.qmp
        paused = False
        if stick.throttle_bps:
            q.execute("stop")
            paused = True
            self.unthrottle(stick)
        try:
            q.execute("device_del", id=stick.name)
        finally:
            if paused:
                q.execute("cont")
        deadline = time.monotonic() + timeout
        while True:
            q.poll_events()
            deleted = any(e.get("event") == "DEVICE_DELETED"
                          and e.get("data", {}).get("device") == stick.name
                          for _, e in q.events)
            # DEVICE_DELETED has been seen missing (~1 in 100): the device list
            # is what counts.
            if deleted or not self.device_present(stick.name):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"device_del {stick.name}: still present after {timeout} s")
            time.sleep(0.1)
        while True:
            try:
                q.execute("blockdev-del", **{"node-name": stick.node})
                break
            except QmpError as e:
                if "in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if stick.throttle_bps:
            q.execute("object-del", id=stick.group)
        q.events = [(t, e) for t, e in q.events
                    if e.get("data", {}).get("device") != stick.name]
        stick.plugged = False
        del self.sticks[stick.name]

    def plug_enumerated(self, stick, timeout=20):
        """Plugs the stick and waits until the guest's USB core has enumerated
        it (a USB device with its serial). On a loaded host QEMU's hot-plug
        into a hub port that was just vacated has once gone unseen by the
        guest for good (no new device in its log): that is the emulated
        hardware, not the station, so such a plug is pulled and made again
        once, and logged. A second miss raises."""
        for attempt in (1, 2):
            self.plug(stick)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if stick.serial in self.usb_serials():
                    if attempt > 1:
                        print(f"[vm] {stick.name}: enumerated on the second plug", flush=True)
                    return
                time.sleep(0.3)
            if attempt == 1:
                print(f"[vm] {stick.name} ({stick.serial}) was not enumerated by the guest in "
                      f"{timeout} s; pulling and plugging it again (the emulated hot-plug)", flush=True)
                self.unplug(stick)
        raise TimeoutError(f"{stick.name} ({stick.serial}) was not enumerated by the guest after two plugs")

    def usb_serials(self):
        """The serial numbers of the guest's USB devices now."""
        out = self.console.run("cat /sys/bus/usb/devices/*/serial 2>/dev/null; true")
        return set(out.split())

    # ----- the guest's view ----------------------------------------------------

    def disks(self):
        """{kernel name: {"size": bytes, "ID_BUS": …, "ID_SERIAL_SHORT": …, "ID_PATH": …}}
        of the guest's SCSI disks, as udev knows them."""
        out = self.console.run("vm-disks")
        disks = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[0] != "DISK":
                continue
            props = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
            if not props.get("size", "").isdigit():
                continue  # going away while listed
            props["size"] = int(props.pop("size")) * 512
            disks[parts[1]] = props
        return disks

    def wait_disks(self, serials, timeout=30):
        """Waits until udev has processed a disk for each serial; returns
        {serial: (kernel name, properties)}."""
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for name, props in self.disks().items():
                if props.get("ID_PATH") and props.get("ID_SERIAL_SHORT") in serials:
                    found[props["ID_SERIAL_SHORT"]] = (name, props)
            if len(found) == len(set(serials)):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest disks: only {sorted(found)} of {sorted(serials)} "
                                   f"after {timeout} s")
            time.sleep(0.3)


class FirstWrites(threading.Thread):
    """Watches QEMU's write counters of some sticks (every `interval` seconds)
    and keeps, for each, the first moment (host monotonic clock) a byte had
    been written to it: what the stick itself saw, whoever wrote it."""

    def __init__(self, vm, sticks, interval=0.05):
        super().__init__(daemon=True)
        self.vm = vm
        self.nodes = {s.node: s for s in sticks}
        self.interval = interval
        self.first = {}  # stick name -> monotonic time
        self.stopped = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stopped.is_set() and len(self.first) < len(self.nodes):
                counts = self.vm.bytes_written()
                now = time.monotonic()
                for node, stick in self.nodes.items():
                    if stick.name not in self.first and counts.get(node, 0) > 0:
                        self.first[stick.name] = now
                self.stopped.wait(self.interval)
        except Exception as e:  # reported by the scenario
            self.error = e

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)
