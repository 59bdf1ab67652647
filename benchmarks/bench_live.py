#!/usr/bin/env python3
"""Live tracing cost: 4 KiB random reads against qemu-storage-daemon, direct and through ``vqtrace live``.

One run measures, at queue depth 1 and 32, the Python front-end (vqtrace.vhost.load)
reading from qemu-storage-daemon's vhost-user-blk export directly, then through the
vqtrace proxy (``vqtrace live --socket ... --backend ... -w trace.pcapng``, its own
process, tracing every message, notification and chain to a pcapng file). The runs
alternate (direct, proxy, direct, proxy ...) and the best of each is kept, so load
from other processes on the machine hits both alike. Figures:

- ``live_direct_iops_qd{1,32}`` / ``live_proxy_iops_qd{1,32}`` (IOPS),
- ``live_proxy_iops_ratio_qd{1,32}``: proxy IOPS / direct IOPS, best of each (x; the aim is >= 0.9 at qd32),
- ``live_proxy_iops_ratio_median_qd{1,32}``: the median of each round's own ratio (its proxy run over
  the direct run just before it: the other load of the machine moves both about alike),
- ``live_proxy_added_median_latency_qd{1,32}``: proxy median latency - direct (us),
- ``live_proxy_cpu_per_request_qd{1,32}``: CPU time (user + system) the proxy process spent per
  request during the measured window of its best run (us; /proc/PID/stat, 10 ms ticks),
- ``live_{frontend,backend}_cpu_per_request_{direct,proxy}_qd{1,32}``: the same for the Python
  front-end (this process) and qemu-storage-daemon over the whole best run (warm-up and drain
  included), and ``live_busy_cores_{direct,proxy}_qd{1,32}``: the three processes' CPU over that
  run's wall time (cores): where the 2 cores go, direct and through the proxy,
- ``live_load_average``: the machine's 1-minute load average when the run ended (/proc/loadavg:
  the figures above are only comparable at a like load).

JSON lines on stdout; ``--quick`` runs shorter. Needs qemu-storage-daemon (prints nothing
and exits 0 without it, with a note on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqtrace.vhost.frontend import BlkClient
from vqtrace.vhost.harness import StorageDaemon, make_image
from vqtrace.vhost.live import wait_for_path
from vqtrace.vhost.load import LoadResult, RandomReads

IMAGE_SIZE = 64 << 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (the front-end) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(socket_path: Path, depth: int, seconds: float, probe=None) -> LoadResult:
    client = BlkClient.connect(socket_path, queue_size=128)
    try:
        return RandomReads(client, depth).run(seconds, probe=probe)
    finally:
        client.close()


def measure_cpu(socket_path: Path, depth: int, seconds: float, pids: dict[str, int], probe=None
                ) -> tuple[LoadResult, dict[str, float]]:
    """:func:`measure`, and the CPU seconds this process (``frontend``), each of ``pids`` and the wall
    clock (``wall``) spent over the whole run."""
    def now() -> dict[str, float]:
        return {"frontend": own_cpu_seconds(), "wall": time.monotonic(),
                **{name: cpu_seconds(pid) for name, pid in pids.items()}}
    before = now()
    result = measure(socket_path, depth, seconds, probe)
    after = now()
    return result, {name: after[name] - before[name] for name in before}


def figure(name: str, value: float, unit: str) -> None:
    print(json.dumps({"figure": name, "value": round(value, 3), "unit": unit}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 3, 0.5 with --quick)")
    parser.add_argument("--rounds", type=int, help="direct/proxy pairs per depth (default 3, 1 with --quick)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (0.5 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    if not StorageDaemon.available():
        print("bench_live: qemu-storage-daemon is not installed; nothing measured", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="vqtrace-bench-") as tmp:
        base = Path(tmp)
        image = make_image(base / "disk.img", IMAGE_SIZE)
        with open(image, "r+b") as disk:  # real data, in the page cache: reads measure the path, not the disk
            chunk = bytes(range(256)) * 4096
            for _ in range(IMAGE_SIZE // len(chunk)):
                disk.write(chunk)
        with StorageDaemon(image, base / "qsd.sock") as qsd:
            proxy_sock = base / "vqtrace.sock"
            proxy = subprocess.Popen([sys.executable, "-m", "vqtrace", "live", "--socket", str(proxy_sock),
                                      "--backend", str(qsd.socket), "--device-type", "blk", "-q",
                                      "-w", str(base / "trace.pcapng")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_for_path(str(proxy_sock), 30)
                for depth in (1, 32):
                    best: dict[str, LoadResult] = {}
                    spent: dict[str, dict[str, float]] = {}
                    ratios: list[float] = []
                    for _ in range(rounds):
                        pair: dict[str, LoadResult] = {}
                        for name, path in (("direct", qsd.socket), ("proxy", proxy_sock)):
                            pids = {"backend": qsd.proc.pid, **({"proxy": proxy.pid} if name == "proxy" else {})}
                            result, cpu = measure_cpu(path, depth, seconds, pids, lambda: cpu_seconds(proxy.pid))
                            pair[name] = result
                            if result.errors:
                                raise SystemExit(f"bench_live: {result.errors} reads failed ({name}, qd{depth})")
                            if name not in best or result.iops > best[name].iops:
                                best[name], spent[name] = result, cpu
                        ratios.append(pair["proxy"].iops / pair["direct"].iops)
                    direct, traced = best["direct"], best["proxy"]
                    figure(f"live_direct_iops_qd{depth}", direct.iops, "IOPS")
                    figure(f"live_proxy_iops_qd{depth}", traced.iops, "IOPS")
                    figure(f"live_proxy_iops_ratio_qd{depth}", traced.iops / direct.iops, "x")
                    figure(f"live_proxy_iops_ratio_median_qd{depth}", statistics.median(ratios), "x")
                    figure(f"live_proxy_added_median_latency_qd{depth}",
                           traced.median_latency_us - direct.median_latency_us, "us")
                    if traced.probed is not None and traced.probed[2]:
                        opened, closed, requests = traced.probed
                        figure(f"live_proxy_cpu_per_request_qd{depth}", (closed - opened) / requests * 1e6, "us")
                    for name, cpu in spent.items():
                        done = best[name].completed
                        for side in ("frontend", "backend"):
                            figure(f"live_{side}_cpu_per_request_{name}_qd{depth}", cpu[side] / done * 1e6, "us")
                        busy = sum(value for side, value in cpu.items() if side != "wall")
                        figure(f"live_busy_cores_{name}_qd{depth}", busy / cpu["wall"], "cores")
                with open("/proc/loadavg") as load:
                    figure("live_load_average", float(load.read().split()[0]), "load")
            finally:
                proxy.terminate()
                try:
                    _, err = proxy.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                    _, err = proxy.communicate(timeout=5)
            if proxy.returncode not in (0, -15) or b"Traceback" in err:
                print(f"bench_live: the proxy failed: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
