"""Export rate: samples per second of `jsonl` (today's flat export) and of the `sft` / `internvl` dataset
folders (records plus each image written once), on a SQLite run of JOBS jobs x SAMPLES samples whose jobs
share IMAGES local JPEGs. Each export runs in a fresh process; its peak RSS growth is reported too.

  python bench/export_rate.py --jobs 125000 --samples 8 --images 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.reports.export import ExportFilter, export_run
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.runs import get_run

_, sessions = open_ledger(sys.argv[1], auto_migrate=False)
with sessions() as session:
    run = get_run(session, "large")
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
report = export_run(sessions, run=run, fmt=sys.argv[3], out=Path(sys.argv[2]), selection=ExportFilter(),
                    store=ObjectStores(s3_endpoint_url=None))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": report.rows, "seconds": seconds, "images": report.images_written,
                  "growth_mib": peak - baseline}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=125_000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--formats", default="jsonl,sft,internvl")
    args = parser.parse_args()
    import tests.integration.test_export as fill  # the flat-memory test's filler: jobs, attempts, results by SQL

    fill.LARGE_JOBS, fill.LARGE_SAMPLES, fill.LARGE_IMAGES = args.jobs, args.samples, args.images
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        url = f"sqlite:///{work / 'ledger.db'}"
        fill._fill_large_run(url, work / "images")
        for fmt in args.formats.split(","):
            out = work / f"out-{fmt}"
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, url, str(out), fmt], capture_output=True, text=True, check=True
            )
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            rate = measured["rows"] / measured["seconds"]
            print(json.dumps({"format": fmt, **measured, "samples_per_s": round(rate)}))


if __name__ == "__main__":
    main()
