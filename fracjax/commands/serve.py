"""Serve a trained model: a page for X-rays and a JSON API, on this machine.

    fracjax serve exported/                  # an export folder (StableHLO or ONNX)
    fracjax serve runs/mobilenet_v3_small_hybrid --port 8080
    curl -F files=@xray.png -F explain=true http://127.0.0.1:8000/v1/predict

Binds 127.0.0.1 (this machine only) unless --host says otherwise; the API has
no authentication. The page at / needs no internet. Stops cleanly on SIGTERM
or Ctrl-C. Needs the extra "serve": pip install 'fracjax[serve]'.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import time

from fracjax.argparsing import CommandParser
from fracjax.data.pixels import MAX_SIDE

NEEDS = "fracjax serve needs FastAPI and uvicorn: pip install 'fracjax[serve]'"


def _positive(kind, most):
    """A number in (0, most]: "inf", NaN and sizes no machine holds are refused by argparse, naming the flag."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a {kind.__name__}, got {text!r}") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"must be > 0 and at most {most:,}, got {text}")
        return value
    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535 (0: any free port), got {text}")
    return value


def parser(prog: str) -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an export folder (fracjax export) or a run / checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port to listen on (default 8000; 0: any free one)")
    p.add_argument("--max-upload-mb", type=_positive(float, 1024), default=32.0, help="largest request (413 past it)")
    p.add_argument("--max-files", type=_positive(int, 1024), default=64, help="most files in one request (413 past it)")
    p.add_argument("--max-inflight-mb", type=_positive(float, 16384), default=256.0,
                   help="most bytes of uploads all requests hold at once (503 past it; at least --max-upload-mb)")
    p.add_argument("--body-timeout-s", type=_positive(float, 3600), default=60.0,
                   help="a request's body must arrive within this (408 past it: a stalled client holds nothing)")
    p.add_argument("--grace-s", type=_positive(float, 3600), default=30.0,
                   help="on SIGTERM/SIGINT, how long requests in progress may finish before the server stops anyway")
    p.add_argument("--max-pixels", type=_positive(int, MAX_SIDE**2), default=None,
                   help="largest decoded image (413 past it; default fracjax's decoder limit)")
    p.add_argument("--max-batch", type=_positive(int, 1024), default=32, help="most images run together")
    p.add_argument("--no-warmup", action="store_true",
                   help="start without compiling every batch size first (the first requests then wait for compiles)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="how long a batch waits for more images after its first (default 0: a batch is what "
                        "queued while the model ran the one before, so a lone request never waits)")
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"--host/--port: cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(128)
    return sock


def main(argv=None, prog: str = "fracjax serve") -> int:
    args = parser(prog).parse_args(argv)
    if not 0 <= args.max_wait_ms <= 1000:
        print(f"error: --max-wait-ms must be in 0..1000, got {args.max_wait_ms}", file=sys.stderr)
        return 2
    if args.max_inflight_mb < args.max_upload_mb:
        print(f"error: --max-inflight-mb ({args.max_inflight_mb:g}) must be at least --max-upload-mb "
              f"({args.max_upload_mb:g})", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from fracjax.deploy.server import Limits, create_app
    except ImportError as err:
        print(f"error: {NEEDS} ({err})", file=sys.stderr)
        return 2
    from fracjax import caches
    from fracjax.checkpoint import CheckpointCorruptError
    from fracjax.deploy import ExportError
    from fracjax.deploy.batcher import warm_up
    from fracjax.deploy.served import open_served

    try:
        sock = _bind(args.host, args.port)  # a port in use is refused before the model is loaded
        served = open_served(args.model)
    except (OSError, ValueError, ExportError, CheckpointCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    warmed = ""
    if not args.no_warmup:
        started, compiles = time.perf_counter(), caches.compile_counts()
        sizes = warm_up(served.run, served.image_size, args.max_batch)
        warmed = (f"; batch sizes {', '.join(map(str, sizes))} compiled in {time.perf_counter() - started:.1f} s"
                  f"{caches.cache_note(compiles)}")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                    max_files=args.max_files, max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024),
                    body_timeout_s=args.body_timeout_s)
    app = create_app(served, limits, args.max_batch, args.max_wait_ms / 1000)
    m = served.card["model"]
    reach = ("this machine only; --host 0.0.0.0 to accept other machines" if _is_loopback(args.host) else
             "REACHABLE FROM OTHER MACHINES, with no authentication")
    port = sock.getsockname()[1]
    print(
        f"fracjax serve: {m['model']}/{m['head']} ({served.card['format']}) on http://{args.host}:{port} "
        f"({reach}); Grad-CAM: {'yes' if served.explainer else 'no (' + served.no_explanation + ')'}{warmed}",
        flush=True,
    )
    stopped_by: list = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # uvicorn shuts down gracefully on these, then re-raises them to the handler it found: this one,
        # so that the process ends with status 0 and says so (the default handler would kill it).
        signal.signal(sig, lambda number, frame: stopped_by.append(signal.Signals(number).name))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=args.grace_s)).run(
        sockets=[sock])
    print(f"fracjax serve: stopped ({', '.join(stopped_by) or 'server exited'})", flush=True)
    return 0
