"""spark-submit entry of the sessionization job (its logic: genrec.spark.sessionize).

    spark-submit spark_jobs/sessionize.py --events work/validated/events.parquet --out work/sessionized \\
        [--config configs/demo.yaml | --config-json '{...}'] [sessionize.session_gap_minutes=20 ...]

Writes pages/, sessions/, pairs/ and _report/ (the report as one JSON line) under --out.

--events and --out may be URIs (s3a://...): on Kubernetes the sessionize task runs this file as a SparkApplication.

Under spark-submit the master and driver memory given to spark-submit win over the config's.
"""

from __future__ import annotations

import argparse
import json
import sys

from genrec.config import config_from_json, load_config
from genrec.spark.session import build_spark
from genrec.spark.sessionize import sessionize, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sessionize canonical events into training pages "
                                                 "(rules: genrec.spark.sessionize).")
    parser.add_argument("--events", required=True, help="canonical events parquet (file or folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default=None, help="genrec YAML config; its `sessionize` and `spark` sections "
                                                       "are used")
    parser.add_argument("--config-json", default=None, help="the resolved config as JSON instead of --config (what "
                                                            "the sessionize task passes to a SparkApplication)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sessionize.session_gap_minutes=20")
    args = parser.parse_args(argv)
    if args.config_json:
        cfg = config_from_json(args.config_json)
    else:
        cfg = load_config(args.config, args.overrides)
    spark = build_spark(cfg.spark, "genrec-sessionize")
    try:
        report = sessionize(spark, args.events, args.out, cfg.sessionize)
        write_report(spark, report, args.out)
        print(json.dumps(report, indent=2))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
