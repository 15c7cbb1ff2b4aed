"""`python -m bench [--smoke] [--scenario NAME ...] [--runs N] [--out PATH]`: run the scenarios, write the results.

Full mode writes bench/RESULTS.md and bench/charts/*.png; --smoke runs every scenario at a tiny size, once, and
writes to bench/out/ (it checks that each scenario completes, not how fast). A scenario that fails is reported and
makes the exit status 1. Sections of scenarios not run this time are kept from the existing results file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import delayed, drain, fanout, ingest, lanes, latency, peers, publish, soak
from bench.context import Bench
from bench.report import Section
from bench.results import machine_header, write_results

Scenario = Callable[[Bench], Awaitable[Section]]
SCENARIOS: dict[str, Scenario] = {
    "publish": publish.run, "drain": drain.run, "latency": latency.run, "ingest": ingest.run,
    "fanout": fanout.run, "soak": soak.run, "peers": peers.run, "lanes": lanes.run,
    "delayed": delayed.run,
}
ON_DEMAND = {"peers"}  # never in the default set (nor in smoke / CI)
HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 run: check that each scenario completes")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=[],
                        help="run only this scenario (repeatable); peers runs only when named")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3; smoke 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default bench/RESULTS.md; smoke: bench/out/RESULTS-smoke.md)")
    parser.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER"),
                        help="redis-server binary (default $REDIS_SERVER, else PATH)")
    return parser.parse_args(argv)


async def run_all(names: list[str], bench: Bench) -> tuple[list[Section], list[str]]:
    sections: list[Section] = []
    failed: list[str] = []
    for name in names:
        began = time.monotonic()
        print(f"bench: {name} ...", flush=True)
        try:
            section = await SCENARIOS[name](bench)
        except Exception:
            failed.append(name)
            detail = traceback.format_exc()
            print(f"bench: {name} FAILED\n{detail}", file=sys.stderr, flush=True)
            section = Section(name, f"{name} (failed)", ["```", detail.strip()[-3000:], "```", ""])
        sections.append(section)
        print(f"bench: {name} done in {time.monotonic() - began:.1f}s", flush=True)
    return sections, failed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = args.scenario or [n for n in SCENARIOS if n not in ON_DEMAND]
    out: Path = args.out or (HERE / "out" / "RESULTS-smoke.md" if args.smoke else HERE / "RESULTS.md")
    charts_dir = out.parent / ("charts-smoke" if args.smoke else "charts")
    charts_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    bench = Bench(smoke=args.smoke, runs=args.runs or (1 if args.smoke else 3), charts_dir=charts_dir,
                  charts_link=os.path.relpath(charts_dir, out.parent), work_dir=work_dir,
                  redis_binary=args.redis_server)
    began = time.monotonic()
    try:
        header = machine_header(bench, ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
        sections, failed = asyncio.run(run_all(names, bench))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    write_results(out, header, sections)
    print(f"bench: wrote {out} in {time.monotonic() - began:.1f}s" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
