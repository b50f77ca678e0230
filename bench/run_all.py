"""`make bench`: every benchmark in turn; each writes bench/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["bench.retrieval_quality"],
    ["bench.ingest_throughput"],
    ["bench.ingest_folder"],
    ["bench.search_latency"],
    ["bench.chat_latency"],
    ["bench.ws_fanout"],
    ["bench.sse_cost"],
    ["bench.limits_cost"],
    ["bench.fanout"],
    # nginx from Debian (apt-get install -y nginx); without it this one says so and skips.
    ["bench.fanout_lb"],
    ["bench.pdf_views"],
    ["bench.web_ui"],
    ["bench.notebook_archive"],
    ["bench.ocr"],
    ["bench.soak"],
]


def main() -> int:
    failed = []
    for args in BENCHES:
        print(f"== {' '.join(args)}", flush=True)
        if subprocess.call([sys.executable, "-m", *args]) != 0:
            failed.append(args[0])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
