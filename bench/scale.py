"""Scale benchmark (issue 12): what each cost grows with. Every figure is measured at two or
three sizes in the same run, each on a fresh cluster of its own, so that the peak resident
memory (VmHWM) it reports is its own:

1. replication through the coordinator of a backup of many 64 KiB chunks (307,200 by default,
   18.75 GiB), with each process's peak RSS after the write, the backup, the replication and
   the check, against `rsync -a` + `sync` of a sample file (1 GiB by default) in the same run;
2. `small_chunk_time_ratio`: the same bytes replicated with 64 KiB and with 1 MiB chunks;
3. `sparse_restore_ratio`: RestoreBackup of the same data onto a disk of its own size and onto
   a sparse disk of 8 TiB (and one of 1 TiB in between);
4. `catalog_growth_ratio`: p50 of GetBackup, ListBackups (a first page of 10) and CreateBackup
   with 10, 1,000 and 10,000 backups in a region;
5. `incremental_growth_ratio`: a backup of one changed chunk on a 64 MiB and on a 64 GiB disk,
   every chunk of each holding data (64 and 65,536 chunks), after 100 earlier such backups;
   with the time to delete a backup on each and the catalog's growth per backup;
6. `unary_calls_per_s`: GetRegionInfo and GetBackup from 4 client processes, with p50 and p99;
7. `concurrent_writes`: the node's peak memory under 4, 8 and 16 WriteDisk streams;
8. `find_missing_history_ratio`: FindMissingChunks over a replica of 65,536 chunks when its
   account holds one backup of that data, and 200.

Run by `make bench` and alone by `make bench-scale` (`make bench-scale SCALE_ARGS=--quick`: small
sizes, about a minute). The last line printed is one JSON object; each figure has its `goal`
(as the issue states it) and `meets_goal`. A missed goal is reported, not an error: the bench
fails only when something breaks (a job or a backup fails, bytes read back differ). MB = 10^6
bytes. Data is unique per 64 KiB (an 8-byte number, then a fixed random block): nothing
dedups, nothing compresses, and no gigabytes of random numbers are made.

The figures are in bench/scale_replication.py (1 and 2), bench/scale_one_region.py (3 to 7) and
bench/scale_find_missing.py (8), what they share in bench/scale_support.py; this script runs them
and reports.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

# The scale figures and what they share, next to this file, and bench/backup.py's error,
# progress line and summary.
from backup import BenchError, print_summary, progress
from scale_find_missing import FindMissingFigure
from scale_one_region import LATE_SAMPLES, OneRegionFigures
from scale_support import (
    FULL,
    LARGE_CHUNK,
    MB,
    QUICK,
    REPO,
    RSS_GOAL_MB,
    SMALL_CHUNK,
    Sizes,
    size_text,
)

from csbs.processes import ProcessFailed

FIGURES = (
    "replication",
    "small_chunks",
    "sparse_restore",
    "catalog",
    "incremental",
    "unary",
    "concurrent_writes",
    "find_missing",
)


class Scale(FindMissingFigure, OneRegionFigures):
    """A run of the scale benchmark: the figures asked for, in order, then their summary."""

    def run(self, only: Sequence[str]) -> dict[str, Any]:
        steps: dict[str, Callable[[], None]] = {
            "replication": self.replication_at_scale,
            "small_chunks": self.small_chunks,
            "sparse_restore": self.sparse_restore,
            "catalog": self.catalog,
            "incremental": self.incremental,
            "unary": self.unary,
            "concurrent_writes": self.concurrent_writes,
            "find_missing": self.find_missing,
        }
        for name in FIGURES:
            if name in only:
                start = time.perf_counter()
                steps[name]()
                progress(f"{name}: done in {time.perf_counter() - start:.0f} s")
        return self.summary()

    def summary(self) -> dict[str, Any]:
        small = self.figures.get("small_chunk_time_ratio")
        scale = self.figures.get("replication")
        if small is not None and scale is not None:
            # The replication's growth: the same path at the small-chunk figure's size.
            smaller = small["runs"][str(SMALL_CHUNK)]
            scale["growth"] = [
                {k: run[k] for k in ("chunks", "seconds", "mb_s")}
                | {"peak_rss_mb": run["peak_rss_mb"]["after_replication"]}
                for run in (smaller, scale)
            ]
        worst = max((v for peaks in self.peaks.values() for v in peaks.values()), default=0.0)
        return {
            **self.figures,
            "peak_rss_mb": {
                "max": worst,
                "by_figure": self.peaks,
                "goal": f"<= {RSS_GOAL_MB:.0f} for every process in every figure",
                "meets_goal": worst <= RSS_GOAL_MB,
            },
            "sizes": asdict(self.sizes),
            "quick": bool(self.args.quick),
        }


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def print_report(summary: dict[str, Any]) -> None:
    print("csbs-sim scale benchmark (issue 12); MB = 10^6 bytes; goals are the issue's")
    print()
    rows: list[tuple[str, str]] = []

    def goal(figure: dict[str, Any]) -> str:
        return f"goal {figure['goal']}: {'met' if figure['meets_goal'] else 'MISSED'}"

    if (rep := summary.get("replication")) is not None:
        rss = rep["peak_rss_mb"]
        rows.append(
            (
                f"replication of {rep['chunks']} x 64 KiB",
                f"{rep['status']} in {rep['seconds']:.1f} s, {rep['mb_s']:.0f} MB/s, "
                f"{rep['attempts']} attempt(s); {goal(rep)}",
            )
        )
        for step, peaks in rss.items():
            rows.append(
                (f"  peak RSS MB {step}", ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
            )
        for run in rep.get("growth", []):
            rows.append((f"  at {run['chunks']} chunks", f"{run['mb_s']:.0f} MB/s"))
        peer = rep["peer"]
        if peer is not None:
            rows.append(
                (
                    f"  rsync -a + sync of {peer['bytes'] / MB:.0f} MB",
                    f"{peer['mb_s']:.0f} MB/s (replication {rep['vs_peer']:.2f} x that)",
                )
            )
    if (small := summary.get("small_chunk_time_ratio")) is not None:
        runs = small["runs"]
        rows.append(
            (
                "small_chunk_time_ratio",
                f"{small['value']:.2f} (64 KiB {runs[str(SMALL_CHUNK)]['seconds']:.2f} s, "
                f"1 MiB {runs[str(LARGE_CHUNK)]['seconds']:.2f} s); {goal(small)}",
            )
        )
    if (sparse := summary.get("sparse_restore_ratio")) is not None:
        times = ", ".join(
            f"{size_text(r['disk_bytes'])} {r['seconds']:.2f} s" for r in sparse["runs"]
        )
        rows.append(("sparse_restore_ratio", f"{sparse['value']:.2f} ({times}); {goal(sparse)}"))
    if (catalog := summary.get("catalog_growth_ratio")) is not None:
        by_call = ", ".join(f"{k} {v:.2f}" for k, v in catalog["by_call"].items())
        rows.append(
            ("catalog_growth_ratio", f"{catalog['value']:.2f} ({by_call}); {goal(catalog)}")
        )
        for level in catalog["levels"]:
            p50 = ", ".join(f"{k} {v:.2f}" for k, v in level["p50_ms"].items())
            rows.append((f"  p50 ms at {level['backups']} backups", p50))
    if (inc := summary.get("incremental_growth_ratio")) is not None:
        runs = inc["runs"]
        rows.append(
            (
                "incremental_growth_ratio",
                f"{inc['value']:.2f} (after {inc['history']} backups: "
                + ", ".join(
                    f"{size_text(run['disk_bytes'])} disk {run['after_history_p50_s']:.3f} s"
                    for run in runs.values()
                )
                + f"); {goal(inc)}",
            )
        )
        rows.append(
            (
                "  delete a backup",
                ", ".join(
                    f"{size_text(run['disk_bytes'])} disk {run['delete_p50_s']:.3f} s"
                    for run in runs.values()
                )
                + f" ({inc['delete_growth_ratio']:.2f} x); catalog "
                f"{inc['catalog_bytes_per_round'] / 1e3:.0f} kB per round of two backups",
            )
        )
    if (unary := summary.get("unary_calls_per_s")) is not None:
        for call, figure in unary["by_call"].items():
            rows.append(
                (
                    f"unary {call} x {unary['clients']} processes",
                    f"{figure['calls_per_s']:.0f} calls/s, p50 {figure['p50_ms']:.2f} ms, "
                    f"p99 {figure['p99_ms']:.2f} ms",
                )
            )
        rows.append(("unary_calls_per_s", goal(unary)))
    if (found := summary.get("find_missing_history_ratio")) is not None:
        walks = ", ".join(f"{n} held {s:.3f} s" for n, s in found["seconds"].items())
        rows.append(
            (
                "find_missing_history_ratio",
                f"{found['value']:.2f} ({found['chunks']} chunks: {walks}); {goal(found)}",
            )
        )
    rss = summary["peak_rss_mb"]
    rows.append(("largest peak RSS of any process", f"{rss['max']:.0f} MB; {goal(rss)}"))
    print_summary(rows, summary)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (about a minute), for development"
    )
    flags = {
        "chunks": (int, "64 KiB chunks replicated at scale (a multiple of 16)"),
        "small_chunk_mib": (int, "MiB replicated at 64 KiB and at 1 MiB chunks"),
        "peer_mib": (int, "MiB of the rsync sample"),
        "restore_mib": (int, "MiB of data on each disk restored"),
        "sparse_disk_gib": (int, "GiB of the largest sparse disk restored (at most 8192)"),
        "samples": (int, "calls timed per call and catalog size"),
        "history": (int, "incremental backups before the timed ones"),
        "incremental_disk_gib": (int, "GiB of the large disk of the incremental figure"),
        "incremental_small_mib": (int, "MiB of the small disk of the incremental figure"),
        "find_missing_chunks": (int, "64 KiB chunks of the find_missing figure's replica"),
        "find_missing_history": (int, "backups of that data held at its second look"),
        "unary_seconds": (float, "seconds the unary clients call"),
        "unary_clients": (int, "unary client processes"),
        "writer_mib": (int, "MiB each concurrent WriteDisk stream writes"),
    }
    for name, (kind, text) in flags.items():
        default_full, default_quick = getattr(FULL, name), getattr(QUICK, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"{text} (default {default_full}, --quick {default_quick})",
        )
    parser.add_argument(
        "--catalog",
        default=None,
        help="backups in the region at each catalog measurement, comma-separated (default "
        f"{','.join(map(str, FULL.catalog))}, --quick {','.join(map(str, QUICK.catalog))})",
    )
    parser.add_argument(
        "--writers",
        default=None,
        help="concurrent WriteDisk streams at each measurement, comma-separated (default "
        f"{','.join(map(str, FULL.writers))}, --quick {','.join(map(str, QUICK.writers))})",
    )
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"the figures to measure, comma-separated, of {','.join(FIGURES)} (default all)",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the data and choices")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds any one step may take"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the bench directory (configs, logs, data)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    lists = ("catalog", "writers")
    given = {f.name: getattr(args, f.name) for f in fields(Sizes) if f.name not in lists}
    sizes = replace(sizes, **{k: v for k, v in given.items() if v is not None})
    if args.catalog is not None:
        sizes = replace(sizes, catalog=tuple(int(x) for x in args.catalog.split(",")))
    if args.writers is not None:
        sizes = replace(sizes, writers=tuple(int(x) for x in args.writers.split(",")))
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(only) - set(FIGURES):
        parser.error(f"--only: no figure {', '.join(sorted(unknown))}")
    args.only = only
    if sizes.chunks < 64 or sizes.chunks % 16:
        parser.error("--chunks must be a multiple of 16 (whole MiB), at least 64")
    if not 1 <= sizes.sparse_disk_gib <= 8192 or sizes.sparse_disk_gib * 1024 < sizes.restore_mib:
        parser.error("--sparse-disk-gib: 1 to 8192, and at least --restore-mib")
    if sizes.incremental_disk_gib * 1024 < sizes.incremental_small_mib:
        parser.error("--incremental-disk-gib must be at least --incremental-small-mib")
    if min(sizes.catalog) < 1 or sizes.samples < 1 or sizes.history < LATE_SAMPLES:
        parser.error(f"--catalog sizes and --samples at least 1, --history at least {LATE_SAMPLES}")
    if min(sizes.small_chunk_mib, sizes.peer_mib, sizes.restore_mib) < 4:
        parser.error("--small-chunk-mib, --peer-mib and --restore-mib: at least 4")
    return args, sizes


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the processes are stopped and the directory removed


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # On the repo's filesystem, so that the peer copies where the nodes store.
    (REPO / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=REPO / "var"))
    bench = Scale(args, sizes, workdir)
    start = time.perf_counter()
    try:
        summary = bench.run(args.only)
    except (
        BenchError,
        ProcessFailed,
        grpc.RpcError,
        subprocess.CalledProcessError,
    ) as exc:
        progress(f"FAILED: {type(exc).__name__}: {exc}")
        if not args.keep:
            progress("the bench directory (configs, logs, data) is removed; --keep keeps it")
        return 1
    finally:
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["run_s"] = round(time.perf_counter() - start, 1)
    print_report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
