"""Benchmark the score-cache join at scale: the old dict join against the Arrow/searchsorted one.

    python scripts/bench_cache.py [--sizes 100000 1000000 10000000] [--out runs/bench_cache] [--smoke]

For each size it writes a synthetic cache through the real writer (`write_shard` + manifest; random 20-hex-char
ids, which the writer treats as user ids, so the join verifies every pair's texts: the worst case) and
synthetic training rows (a `datasets.Dataset` saved with `save_to_disk`, loaded back memory-mapped, in another
order than the cache). Each (size, method) then runs in a fresh subprocess, which measures the join's seconds
and the peak RSS it adds per pair: from after the rows are loaded and touched once (as the data module does)
to after every row's score has been read through the dataset's item path (`rows[i:i + B]`).
Writes `<out>/report.json` and `<out>/report.md`, and copies the table into docs/cache-scale.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("new", "old")  # new first: the old join at 10^7 pairs may meet the cap
BATCH = 4096  # rows per item-path read when fetching every score


def status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakRSS:
    """Peak RSS from now on: the kernel's VmHWM after resetting it (clear_refs 5), else a 5 ms sampler."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.how = "VmHWM reset by /proc/self/clear_refs"
        except OSError:
            self.how = "VmRSS sampled every 5 ms"
        self.sampled, self.stop = status("VmRSS"), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.sampled = max(self.sampled, status("VmRSS"))

    def peak(self) -> int:
        self.stop.set()
        self.thread.join()
        return max(self.sampled, status("VmHWM")) if self.how.startswith("VmHWM") else self.sampled


def old_dict_join(directory: Path, rows):  # noqa: ANN001, ANN201 - a frozen copy of the join before issue 13
    """The reference: `ScoreCache.scores()` + `join_caches` as they were (every score in a Python dict)."""
    import numpy as np
    import pyarrow.parquet as pq

    from distill.score_cache import apply_transform, sha256_file

    manifest = json.loads((directory / "manifest.json").read_text())
    scores: dict = {}
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        if not path.is_file() or sha256_file(path) != shard["sha256"]:
            raise ValueError(f"{path}: corrupt shard")
        table = pq.read_table(path)
        column = "score" if "score" in table.column_names else "scores"
        raw = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
        values = apply_transform(raw, manifest["teacher"]["score_transform"], manifest["data"].get("label_range"))
        scores.update(zip(table.column("pair_id").to_pylist(), values.tolist()))
    key = "pivot_id" if "pivot_id" in rows.column_names else "pair_id"
    ids = rows[key]
    missing = [i for i, pid in enumerate(ids) if pid not in scores]
    if missing:
        raise ValueError(f"{len(missing)} pairs have no score")
    return rows.add_column("score", [scores[pid] for pid in ids])


def prepare(n: int, folder: Path, shard_size: int, seed: int = 0) -> None:
    """A cache of n pairs written by `write_shard` + manifest, and the same pairs as training rows on disk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    from distill.cache_keys import CHUNK, text_keys
    from distill.score_cache import sha256_file, shard_name, write_json_atomic, write_shard

    if (folder / "done").is_file():
        return
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, 10), dtype=np.uint8)  # 80 random bits per id: 20 hex chars, as make_pair_id
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    hexed = np.empty((n, 20), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    ids = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.arange(0, 20 * n + 1, 20, dtype=np.int32)),
                                                 pa.py_buffer(hexed.tobytes())])
    numbers = pc.cast(pa.array(rng.integers(0, 10**6, n)), pa.string())
    text_a = pc.binary_join_element_wise("a man plays the guitar number", numbers, " ")
    text_b = pc.binary_join_element_wise("someone plays music", numbers, "on the street", " ")
    scores = rng.normal(size=n).astype(np.float32)
    keys = np.concatenate([text_keys(text_a[i:i + CHUNK], text_b[i:i + CHUNK]) for i in range(0, n, CHUNK)])
    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    listed = []
    for s in range(0, n, shard_size):
        e = min(s + shard_size, n)
        write_shard(cache, s, e, ids[s:e].to_pylist(), scores[s:e], keys[s:e])
        path = cache / shard_name(s, e)
        listed.append({"file": path.name, "start": s, "end": e, "rows": e - s, "sha256": sha256_file(path)})
    write_json_atomic(cache / "manifest.json", {
        "format": 1, "teacher": {"class_path": "synthetic", "score_transform": "sigmoid"},
        "data": {"fingerprint": "0" * 64, "source": "synthetic", "split": "train", "n_pairs": n, "label_range": None},
        "shards": listed, "complete": True})
    order = pa.array(rng.permutation(n))  # the training rows in another order than the cache
    table = pa.table({"pair_id": ids, "text_a": text_a, "text_b": text_b}).take(order)
    Dataset(table).save_to_disk(str(folder / "rows"))
    (folder / "done").write_text("ok\n")


def worker(n: int, method: str, folder: Path) -> dict:
    """One measurement in this (fresh) process; returns the figures."""
    import pyarrow.compute as pc
    from datasets import load_from_disk

    from distill.cache_join import ScoreCache, join_caches

    rows = load_from_disk(str(folder / "rows"))  # memory-mapped, like the data module's tokenised Arrow file
    for batch in rows.with_format("arrow").iter(batch_size=1 << 16):  # touch every page once
        for column in batch.columns:
            pc.sum(pc.binary_length(column))
    base = status("VmRSS")
    peak = PeakRSS()
    start = time.perf_counter()
    joined = old_dict_join(folder / "cache", rows) if method == "old" else join_caches([ScoreCache(folder / "cache")],
                                                                                        rows)
    join_s = time.perf_counter() - start
    start, total = time.perf_counter(), 0.0
    for i in range(0, len(joined), BATCH):
        total += sum(joined[i:i + BATCH]["score"])
    fetch_s = time.perf_counter() - start
    top = peak.peak()
    return {"size": n, "method": method, "join_s": join_s, "s_per_1M": join_s / n * 1e6, "fetch_s": fetch_s,
            "baseline_rss": base, "peak_rss_added": top - base, "bytes_per_pair": (top - base) / n,
            "rss_after_added": status("VmRSS") - base, "peak_measured_by": peak.how, "checksum": total}


def measure(n: int, method: str, folder: Path, left: float) -> dict:
    """One (size, method) measurement in a fresh process, within `left` seconds."""
    if left < 10:
        return {"size": n, "method": method, "error": "skipped: the time cap was spent"}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(n), method, str(folder)],
                              capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"size": n, "method": method, "error": "stopped at the time cap"}
    if proc.returncode:
        return {"size": n, "method": method, "error": f"failed: {proc.stderr.strip().splitlines()[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) * 1024
    import datasets
    import numpy
    import pyarrow

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem / 2**30, 1), "python": platform.python_version(),
            "numpy": numpy.__version__, "pyarrow": pyarrow.__version__, "datasets": datasets.__version__,
            "kernel": platform.release()}


def markdown(report: dict) -> str:
    lines = ["| pairs | join | s per 1M pairs | fetch every score (s) | peak RSS added | bytes/pair |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['size']:,} | {r['method']} | {r['error']} | | | |")
            continue
        lines.append(f"| {r['size']:,} | {r['method']} | {r['s_per_1M']:.2f} | {r['fetch_s']:.1f} | "
                     f"{r['peak_rss_added'] / 2**20:,.0f} MiB | {r['bytes_per_pair']:.1f} |")
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM (shared with other jobs); "
              f"Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, datasets {m['datasets']}.",
              f"Date: {report['date']}. Command: `{report['command']}`. Shards of {report['shard_size']} pairs. "
              f"Peak RSS: {next((r['peak_measured_by'] for r in report['results'] if 'error' not in r), '?')}. "
              f"The new join ran "
              f"{report['repeat']} times per size in fresh processes (the fastest shown; all in report.json), "
              f"the old one once."]
    if report.get("checks"):
        lines += ["", *(f"- {c}" for c in report["checks"])]
    return "\n".join(lines) + "\n"


def checks(results: list[dict]) -> list[str]:
    new = {r["size"]: r for r in results if r["method"] == "new" and "error" not in r}
    out = []
    if 10**7 in new:
        b = new[10**7]["bytes_per_pair"]
        out.append(f"new join at 10^7 pairs adds {b:.1f} bytes/pair of peak RSS (target <= 48): "
                   f"{'met' if b <= 48 else 'NOT met'}")
    if 10**6 in new and 10**7 in new:
        g = new[10**7]["s_per_1M"] / new[10**6]["s_per_1M"]
        out.append(f"new join's time per pair grows {g:.2f}x from 10^6 to 10^7 (target <= 1.3): "
                   f"{'met' if g <= 1.3 else 'NOT met'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--out", default="runs/bench_cache")
    parser.add_argument("--smoke", action="store_true", help="one tiny size, to check the script runs")
    parser.add_argument("--shard-size", type=int, default=2048, help="pairs per shard (`distill cache` default)")
    parser.add_argument("--cap", type=float, default=900, help="seconds for the whole run; later runs are skipped")
    parser.add_argument("--repeat", type=int, default=2, help="runs of the new join per size (the fastest is kept: "
                        "other jobs on the machine only ever add time); the old one runs once")
    parser.add_argument("--worker", nargs=3, metavar=("SIZE", "METHOD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], Path(args.worker[2]))))
        return
    began, out = time.monotonic(), Path(args.out)
    sizes = [20_000] if args.smoke else args.sizes
    results = []
    for n in sizes:
        folder = out / "data" / str(n)
        t = time.monotonic()
        prepare(n, folder, args.shard_size)
        print(f"{n:,} pairs prepared in {time.monotonic() - t:.0f} s", flush=True)
        for method in METHODS:
            runs = [measure(n, method, folder, args.cap - (time.monotonic() - began))
                    for _ in range(args.repeat if method == "new" else 1)]
            done = [r for r in runs if "error" not in r]
            result = min(done, key=lambda r: r["join_s"]) if done else runs[0]
            result["join_s_runs"] = [r["join_s"] for r in done]
            results.append(result)
            print(json.dumps(result), flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "scripts/bench_cache.py", *sys.argv[1:]]), "shard_size": args.shard_size,
              "repeat": args.repeat,
              "machine": machine(), "results": results, "checks": checks(results)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "report.md").write_text(table)
    if not args.smoke:
        intro = (ROOT / "docs/cache-scale.md").read_text().split("<!-- table -->")[0] if (
            ROOT / "docs/cache-scale.md").is_file() else "# Score-cache join at scale\n\n"
        (ROOT / "docs/cache-scale.md").write_text(intro + "<!-- table -->\n" + table)
    print(table)


if __name__ == "__main__":
    main()
