"""``python -m pipeline.engine [--host H] [--port P] [--data-dir D] [--workers N] ...``

The engine in the foreground, like ``faceflow engine serve`` (same options), without
Click: the library never imports it. Crash tests start this as a subprocess.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.engine.server import build_config, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.engine")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8480)
    parser.add_argument("--data-dir", type=Path, default=Path("engine-data"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--qps", type=float, default=None)
    parser.add_argument("--daily-quota", type=int, default=None)
    parser.add_argument("--token-ttl", type=float, default=2592000.0)
    parser.add_argument("--detector", choices=("hog", "cnn"), default="hog")
    parser.add_argument("--store", default=None, help="postgresql:// URL of a shared store")
    parser.add_argument("--model", choices=("dlib", "sface"), default="dlib")
    parser.add_argument("--store-threads", type=int, default=16)
    args = parser.parse_args(argv)
    config = build_config(args.data_dir, workers=args.workers, qps=args.qps,
                          daily_quota=args.daily_quota, token_ttl=args.token_ttl,
                          detector=args.detector, store_url=args.store, model=args.model,
                          store_threads=args.store_threads)
    serve(config, args.host, args.port)


if __name__ == "__main__":
    main()
