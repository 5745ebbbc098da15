"""Issue 42: the files one deploy request passes through, at a git revision.

Runs ``deploy(target=local, recipe=none, device=local)`` of the revision's own code (``git archive`` into a
temp folder, imported from there) with a profiler that records every call into a module of ``edgekit/``
in the host process (the device-side runner is another process and is not counted). Reported:

* ``files``: distinct ``edgekit/`` files a function of which ran (importing a module is not counted);
* ``folders``: distinct packages among them;
* ``climbs``: calls from a module into a module of a *higher* layer of the layout, with the layers
  ``cli`` < entry points (``pipeline``, ``build``, ``bench_run``, ``predict``) < ``stages`` < everything
  else (a stage calling back into the pipeline module is a climb; a helper calling a stage is one too).

Usage: python bench/deploy_walk.py [REV ...]   (default: HEAD; the calibration set and the reference
detector come from the revision's cache/shipped weights, so a run takes a few minutes)
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = r"""
import json, sys, threading
from pathlib import Path
root = Path(sys.argv[1]).resolve()
pkg = root / "edgekit"
calls, files = [], set()

def layer(rel):
    top = rel.split("/")[0].removesuffix(".py")
    if top == "cli": return 0
    if top in ("pipeline", "build", "bench_run", "predict"): return 1
    if top == "stages": return 2
    return 3

last = {"file": None}
def profile(frame, event, arg):
    if event != "call" or frame.f_code.co_name == "<module>":  # running code, not importing it
        return
    path = frame.f_code.co_filename
    if not path.startswith(str(pkg)):
        return
    rel = str(Path(path).relative_to(pkg))
    caller = frame.f_back.f_code.co_filename if frame.f_back else ""
    if caller.startswith(str(pkg)):
        crel = str(Path(caller).relative_to(pkg))
        if crel != rel:
            calls.append((crel, rel))
    files.add(rel)

sys.path.insert(0, str(root))
from edgekit.pipeline import DeployRequest, deploy
threading.setprofile(profile)
sys.setprofile(profile)
try:
    deploy(DeployRequest(target="local", recipe="none", device="local", out=Path(sys.argv[2]), progress=False,
                         command=["deploy_walk"], calib_root=Path(sys.argv[3])))
finally:
    sys.setprofile(None)
climbs = sum(1 for a, b in set(calls) if layer(b) < layer(a))
folders = {f.split("/")[0] if "/" in f else "." for f in files}
climbed = sorted({f"{a} -> {b}" for a, b in set(calls) if layer(b) < layer(a)})
print(json.dumps({"files": len(files), "folders": len(folders), "climbs": climbs,
                  "edges": len(set(calls)), "file_list": sorted(files), "climb_list": climbed}))
"""


def walk(rev: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        data = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(root, filter="data")
        argv = [sys.executable, "-c", _PROBE, str(root), str(Path(tmp) / "runs"), str(Path(tmp) / "calib")]
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"deploy at {rev} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    revs = sys.argv[1:] or ["HEAD"]
    out = REPO / "bench" / "results" / "deploy-walk.json"
    rows = json.loads(out.read_text()) if out.is_file() else {}  # other revisions' rows are kept
    for rev in revs:
        if rev == "HEAD":  # a row names the commit it measured
            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.strip()  # fmt: skip
        rows[rev] = walk(rev)
        print(rev, {k: v for k, v in rows[rev].items() if k != "file_list"}, flush=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
