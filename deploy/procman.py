"""The process manager shared by deploy/garage/cluster and deploy/fleet/fleet.

Both scripts run a set of servers on loopback for a while and must never leave one behind. They do
it the same way, which lives here:

- `up` starts a *manager*: the same script re-executed in its own session (`_manage`), logging to
  STATE/manager.log. The manager starts the servers as its children, writes STATE/env once they
  all work, and `up` prints that file and returns. A manager that fails writes STATE/failed instead.
- Every child gets PR_SET_PDEATHSIG: if the manager dies, even by SIGKILL, its children get a
  signal from the kernel. Each child runs in its own process group, and a kill takes the whole
  process tree (hashpress workers have process groups of their own).
- Other subcommands talk to the manager through files: STATE/cmd/<n>.cmd holds one JSON command;
  the manager runs it and answers in STATE/cmd/<n>.done. No socket, no port, nothing to leak.
- The manager stops by itself after --ttl, on SIGTERM/SIGINT/SIGHUP (`down` sends SIGTERM), and
  removes the state directory if it created it.

Python 3 standard library only.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PR_SET_PDEATHSIG = 1
TICK = 0.25  # seconds between two rounds of the manager loop


def _die_with_parent(sig):
    """A preexec_fn: the kernel sends `sig` to this child when the manager dies."""
    libc = ctypes.CDLL(None, use_errno=True)

    def set_it():
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    return set_it


def spawn(argv, log_path, env=None, death_signal=signal.SIGTERM, cwd=None):
    """Starts `argv` in its own session, stdout and stderr appended to `log_path`."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent(death_signal))
    finally:
        log.close()


def descendants(pid):
    """Every live process below `pid` (read from /proc), children before grandchildren."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parent_of[int(entry)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent_of.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def kill_tree(pid, sig):
    """Sends `sig` to `pid` and everything below it (listed first, so none escapes by reparenting)."""
    victims = [pid] + descendants(pid)
    for p in victims:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return victims


def alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids, timeout):
    """Waits until none of `pids` is alive; True if they all went in time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def stop_child(proc, sig=signal.SIGTERM, timeout=10.0):
    """Stops one child: see stop_children."""
    stop_children([proc], sig, timeout)


def stop_children(procs, sig=signal.SIGTERM, timeout=10.0):
    """Stops children together: `sig` to each of them alone (each stops its own children in
    order: a second signal might hurry them), then, past `timeout` seconds, SIGKILL to whatever
    is left of their process trees."""
    procs = [p for p in procs if p is not None]
    trees = {p.pid: descendants(p.pid) for p in procs}
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            trees[p.pid] += descendants(p.pid)
            p.kill()
            p.wait()
    leftovers = [pid for tree in trees.values() for pid in tree]
    if not wait_gone(leftovers, 1.0):
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_ports(n):
    """`n` distinct free loopback ports (held together while chosen, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_status(url, timeout=1.0):
    """The status of a GET, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_for(what, check, timeout):
    """Polls `check()` until it is truthy; raises RuntimeError naming `what` on timeout."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def write_atomic(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def env_lines(pairs):
    """`export K='V'` lines (shell-quoted), for `eval "$(... up)"`."""
    return "".join(f"export {k}='{v}'\n" for k, v in pairs.items())


# ------------------------------------------------------------------------------------------
# The manager's side.

class Manager:
    """What a script's manager implements: `start` (raise to fail), `tick`, `command`, `stop`."""

    state: Path

    def start(self):
        raise NotImplementedError

    def tick(self):
        """Called every TICK seconds while running."""

    def command(self, cmd):
        """Runs one command (a dict with "verb"); returns the answer's text."""
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError


def manage(mgr, ttl, remove_state):
    """The manager's main loop: start, serve commands until a signal or `ttl` seconds, stop."""
    stopping = []

    def on_signal(sig, _frame):
        stopping.append(signal.Signals(sig).name)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    cmd_dir = mgr.state / "cmd"
    cmd_dir.mkdir(exist_ok=True)
    deadline = time.monotonic() + ttl
    log(f"manager {os.getpid()} starting; stops by itself in {ttl:.0f} s")
    try:
        try:
            mgr.start()
        except Exception as e:  # noqa: BLE001 - any failure is reported to `up` and ends the run
            log(f"start failed: {e}")
            write_atomic(mgr.state / "failed", f"{e}\n")
            return 1
        write_atomic(mgr.state / "ready", "")
        while not stopping:
            if time.monotonic() > deadline:
                log(f"--ttl of {ttl:.0f} s reached: stopping by itself")
                break
            for f in sorted(cmd_dir.glob("*.cmd")):
                try:
                    cmd = json.loads(f.read_text())
                    answer = {"ok": True, "text": mgr.command(cmd)}
                except Exception as e:  # noqa: BLE001 - the answer carries it back to the caller
                    answer = {"ok": False, "text": str(e)}
                log(f"command {f.name}: {answer}")
                write_atomic(f.with_suffix(".done"), json.dumps(answer))
                f.unlink()
            try:
                mgr.tick()
            except Exception as e:  # noqa: BLE001 - a broken run stops, with the reason logged
                log(f"stopping: {e}")
                return 1
            time.sleep(TICK)
        if stopping:
            log(f"{stopping[0]}: stopping")
        return 0
    finally:
        mgr.stop()
        log("stopped; every child is gone")
        if remove_state:
            shutil.rmtree(mgr.state, ignore_errors=True)


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# The caller's side.

def make_state_dir(given, prefix):
    """(path, created): the --dir given (created if absent, kept afterwards) or a new temporary."""
    if given:
        p = Path(given).resolve()
        p.mkdir(parents=True, exist_ok=True)
        if any(p.iterdir()):
            sys.exit(f"{p} is not empty: give an empty or new --dir")
        return p, False
    return Path(tempfile.mkdtemp(prefix=prefix)), True


def launch(script, argv, state, timeout):
    """Starts the manager (`script _manage ARGV`) in its own session and waits until it is ready.

    Returns the text of STATE/env; exits with the manager's reason if it failed.
    """
    mlog = state / "manager.log"
    with open(mlog, "ab") as out:
        proc = subprocess.Popen([sys.executable, str(script), "_manage", *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    write_atomic(state / "manager.pid", f"{proc.pid}\n")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (state / "ready").exists():
            return (state / "env").read_text()
        if (state / "failed").exists() or proc.poll() is not None:
            proc.wait(timeout=60)
            tail = mlog.read_text()[-3000:] if mlog.exists() else ""
            sys.exit(f"failed to start:\n{tail}")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    sys.exit(f"not ready after {timeout:.0f} s; see the log above:\n{mlog.read_text()[-3000:]}")


def manager_pid(state):
    try:
        return int((Path(state) / "manager.pid").read_text())
    except (OSError, ValueError):
        sys.exit(f"no manager in {state} (not started, or already stopped)")


def send(state, cmd, timeout=60.0):
    """Sends one command to the manager of `state`; returns its answer, exits on failure."""
    state = Path(state)
    pid = manager_pid(state)
    if not alive(pid):
        sys.exit(f"the manager of {state} (pid {pid}) is not running")
    cmd_dir = state / "cmd"
    n = f"{time.time_ns()}-{os.getpid()}"
    write_atomic(cmd_dir / f"{n}.cmd", json.dumps(cmd))
    done = cmd_dir / f"{n}.done"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done.exists():
            answer = json.loads(done.read_text())
            done.unlink()
            if not answer["ok"]:
                sys.exit(answer["text"])
            return answer["text"]
        if not alive(pid):
            sys.exit("the manager stopped before answering")
        time.sleep(0.05)
    sys.exit(f"no answer from the manager within {timeout:.0f} s")


def down(state, timeout=60.0):
    """SIGTERM to the manager; waits for it (it stops its children); SIGKILL past `timeout`."""
    pid = manager_pid(state)
    if not alive(pid):
        print(f"manager {pid} already gone")
        return
    tree = [pid] + descendants(pid)
    os.kill(pid, signal.SIGTERM)
    if not wait_gone([pid], timeout):
        # Children die with it (parent-death signal); take the rest of the tree too.
        for p in tree + descendants(pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"manager {pid} did not stop within {timeout:.0f} s: killed")
    wait_gone(tree, 10)
