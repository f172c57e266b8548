"""`python -m resnet5m.demo_load`: the demo page under concurrent load, through Gradio's own client.

Starts `resnet5m demo` in a subprocess on 127.0.0.1, then --clients threads, each with its own client (a browser
tab's session), send --requests uploads each of the bundled example images, in turn, and check the top class
against the class the file's name gives. Prints a JSON summary: answers right and wrong, requests refused (queue
full) or failed, the answers' latency p50/p95 (upload, queue, network and the results' download, as a browser waits),
and the server's resident memory before the first request, after the last, and at its peak. Exits 1 unless every
request was answered right.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .argtypes import positive_int
from .data import CLASSES
from .demo import CONCURRENCY, EXAMPLES_DIR, QUEUE_SIZE, import_gradio, weight_choices
from .doctor import cpu_name
from .errors import UserError

if TYPE_CHECKING:
    from gradio_client import Client

STARTUP_TIMEOUT = 120.0  # seconds for the server to import torch and Gradio and open the weights, on a busy machine
API_NAME = "/classify_upload"  # the page's classify event (demo.build_app), named after its function


@dataclass
class Answer:
    """One request's outcome: "right", "wrong", "refused" (queue full) or "failed", its seconds, and what came back."""

    outcome: str
    seconds: float
    detail: str


def examples() -> list[tuple[Path, str]]:
    """The bundled example images with their true class, the start of their names (ship_test18.png: ship)."""
    pairs = [(path, path.name.split("_")[0]) for path in sorted(EXAMPLES_DIR.glob("*.png"))]
    if not pairs or any(truth not in CLASSES for _, truth in pairs):
        raise UserError(f"the example images in {EXAMPLES_DIR} are missing or not named <class>_<id>.png")
    return pairs


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now; should another program take it first, the server says so."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float | None]:
    """A process's resident memory now and at its peak, in MB (10^6 bytes); None where /proc (Linux) is missing."""
    fields = {"VmRSS": None, "VmHWM": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                fields[key] = int(value.split()[0]) * 1024 / 1e6  # reported in kB (KiB)
    except OSError:
        pass
    return {"now": fields["VmRSS"], "peak": fields["VmHWM"]}


def start_server(port: int, log: Path, arch: str | None = None) -> subprocess.Popen:
    """`resnet5m demo --port PORT` in a subprocess, its output in log; returns once the page answers."""
    command = [sys.executable, "-m", "resnet5m", "demo", "--port", str(port), *(["--arch", arch] if arch else [])]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            lines = log.read_text().strip().splitlines() or ["no output"]
            raise UserError(f"the demo server exited with status {server.returncode}: {lines[-1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    stop_server(server)
    raise UserError(f"the demo server did not answer on 127.0.0.1:{port} within {STARTUP_TIMEOUT:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    """Ask the server to stop, and kill it if it does not within 10 s."""
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_client(client: Client, images: list[tuple[Path, str]], requests: int, first: int) -> list[Answer]:
    """requests uploads through one client, one after another, starting at images[first]."""
    from gradio_client import handle_file
    from gradio_client.utils import QueueError

    answers = []
    for i in range(requests):
        path, truth = images[(first + i) % len(images)]
        start = time.perf_counter()
        try:
            top = client.predict(handle_file(str(path)), api_name=API_NAME)[0]  # the weights: the page's default
        except QueueError as e:
            answers.append(Answer("refused", time.perf_counter() - start, str(e)))
            continue
        except Exception as e:  # any other failure is counted and shown, not raised: the summary names it
            answers.append(Answer("failed", time.perf_counter() - start, f"{type(e).__name__}: {e}"))
            continue
        got = (top or {}).get("label")
        answers.append(Answer("right" if got == truth else "wrong", time.perf_counter() - start, f"{path.name}: {got}"))
    return answers


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (the smallest value that q% of the values do not exceed); None when empty."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)] if ordered else None


def load_test(clients: int, requests: int, *, arch: str | None = None) -> dict:
    """Serve the demo, run clients x requests against it, and summarize (see the module's docstring)."""
    import_gradio()  # a missing Gradio is named at once; it also turns the client's usage analytics off
    from gradio_client import Client

    images = examples()
    weight_choices(arch=arch)  # weights the server would refuse are named here, before it starts
    with tempfile.TemporaryDirectory(prefix="resnet5m-demo-load-") as tmp:
        port = free_port()
        server = start_server(port, Path(tmp) / "server.log", arch)
        sessions: list[Client] = []
        try:
            before = rss_mb(server.pid)["now"]
            url = f"http://127.0.0.1:{port}/"
            # Each client opens its session before any request, so that the requests all start together
            sessions = [Client(url, verbose=False, download_files=Path(tmp) / "downloads") for _ in range(clients)]
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                jobs = [pool.submit(run_client, c, images, requests, i) for i, c in enumerate(sessions)]
                answers = [a for job in jobs for a in job.result()]
            wall = time.perf_counter() - start
            after = rss_mb(server.pid)
        finally:
            for session in sessions:
                session.close()
            stop_server(server)
    seconds = [a.seconds for a in answers if a.outcome in ("right", "wrong")]
    counts = {kind: sum(a.outcome == kind for a in answers) for kind in ("right", "wrong", "refused", "failed")}
    return {
        "clients": clients,
        "requests_per_client": requests,
        "requests": len(answers),
        **counts,
        "all_right": counts["right"] == len(answers),
        "latency_p50_s": _round(percentile(seconds, 50)),
        "latency_p95_s": _round(percentile(seconds, 95)),
        "requests_per_s": round(len(answers) / wall, 2),
        "wall_s": round(wall, 1),
        "server_rss_mb": {"before": _round(before, 0), "after": _round(after["now"], 0), "peak": _round(after["peak"], 0)},
        "queue": {"concurrency_limit": CONCURRENCY, "max_size": QUEUE_SIZE},
        "host": cpu_name(),
        "problems": sorted({a.detail for a in answers if a.outcome != "right"})[:5],  # a few, to show what went wrong
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its JSON summary; 1 unless every request was answered right, 2 on a setup error."""
    parser = argparse.ArgumentParser(prog="python -m resnet5m.demo_load", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=positive_int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--requests", type=positive_int, default=25, help="requests per client (default: 25)")
    parser.add_argument("--arch", help="which shipped weights the demo selects (default: its own default)")
    args = parser.parse_args(argv)
    try:
        summary = load_test(args.clients, args.requests, arch=args.arch)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0 if summary["all_right"] else 1


if __name__ == "__main__":
    sys.exit(main())
