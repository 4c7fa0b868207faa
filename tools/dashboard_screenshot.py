#!/usr/bin/env python3
"""Screenshot of a live page in headless chromium after WAIT real seconds.

    tools/dashboard_screenshot.py URL OUT.png [WAIT] [WIDTHxHEIGHT]

Made for docs/dashboard.png: unlike `chromium --screenshot`, which shoots at
load (or after a virtual-time budget, where the page's one-second polls
come back to back), this lets the dashboard poll a real server in real time
for WAIT seconds first. It speaks the DevTools protocol over
--remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON): nothing
listens on a port and nothing but Python's standard library is needed.
"""
import base64, json, os, shutil, subprocess, sys, tempfile, time

url, out = sys.argv[1], sys.argv[2]
wait = float(sys.argv[3]) if len(sys.argv) > 3 else 90
size = sys.argv[4] if len(sys.argv) > 4 else "1400x1000"
w, h = size.split("x")
browser = os.environ.get("HASHPRESS_CHROMIUM") or shutil.which("chromium") or sys.exit("chromium not found")

to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()
profile = tempfile.mkdtemp(prefix="dash-shot-")
args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={w},{h}", url]
proc = subprocess.Popen(
    ["sh", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', browser, *args],
    pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": profile})
os.close(to_chrome_r)
os.close(from_chrome_w)

buf, next_id = b"", 0
def call(method, params=None, session=None):
    global buf, next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = os.read(from_chrome_r, 1 << 16)
            if not chunk:
                sys.exit("chromium closed the pipe")
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        reply = json.loads(raw)
        if reply.get("id") == next_id:
            if "error" in reply:
                sys.exit(f"{method}: {reply['error']}")
            return reply["result"]

try:
    deadline = time.time() + 15
    page = None
    while page is None and time.time() < deadline:
        page = next((t for t in call("Target.getTargets")["targetInfos"] if t["type"] == "page"), None)
        time.sleep(0.2)
    session = call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
    time.sleep(wait)
    shot = call("Page.captureScreenshot", {"format": "png"}, session)
    with open(out, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    call("Browser.close")
finally:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(profile, ignore_errors=True)
print(out)
