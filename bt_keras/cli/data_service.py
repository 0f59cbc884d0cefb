"""``bt-data-service``: the tf.data service servers that compute training views on other machines.

    bt-data-service dispatcher --port 5050 [--work-dir DIR]
    bt-data-service worker --dispatcher HOST:5050 [--port 5051] [--host THIS_HOST]

Run one dispatcher and any number of workers (CPU machines), then train with
``--set data.service.dispatcher=HOST:5050`` (see ``bt_keras.data.service``
and docs/scaling.md). Both run until stopped (SIGTERM or Ctrl-C). The
dispatcher prints a line whenever a worker registers (TensorFlow counts
workers but never un-counts a lost one, so a loss shows only as a stalled
share of the work that the dispatcher hands to the others after
``--worker-timeout``); with ``--work-dir`` it journals its state there and a
restarted dispatcher resumes the jobs. A worker checks that its
dispatcher can be reached before it starts (one line, exit code 2 if not).
"""

from __future__ import annotations

import signal
import sys
import threading

from bt_keras.cli import ArgumentParser, UserError, load_tensorflow, run_command

PROG = "bt-data-service"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Start a tf.data service dispatcher or worker for bt_keras training.")
    sub = p.add_subparsers(dest="role", required=True, metavar="{dispatcher,worker}")
    d = sub.add_parser("dispatcher", help="the coordinator (one per run or cluster)")
    d.add_argument("--port", type=int, required=True, help="port to listen on")
    d.add_argument("--work-dir", help="journal directory (local or gs://): a restarted dispatcher resumes from it")
    d.add_argument(
        "--worker-timeout", type=float, default=10.0, help="seconds without a heartbeat before a worker is lost"
    )
    w = sub.add_parser("worker", help="a CPU worker that computes the views")
    w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    w.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    w.add_argument(
        "--host", default="localhost", help="this worker's address as trainers reach it (default: localhost)"
    )
    for sp in (d, w):  # sub-parsers are plain argparse: give them the one-line error too
        sp.error = p.error
    return p


def _check_port(port: int, flag: str = "--port", allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port < 65536:
        raise UserError(f"{flag}: must be a port number {'0' if allow_zero else '1'}-65535, got {port}")


def _stop_event() -> threading.Event:
    """Set by SIGTERM or SIGINT, so both stop the server with exit code 0."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _dispatcher(args) -> int:
    _check_port(args.port)
    if args.worker_timeout <= 0:
        raise UserError(f"--worker-timeout: must be > 0 seconds, got {args.worker_timeout}")
    load_tensorflow()
    import tensorflow as tf

    svc = tf.data.experimental.service
    server = svc.DispatchServer(
        svc.DispatcherConfig(
            port=args.port,
            work_dir=args.work_dir,
            fault_tolerant_mode=args.work_dir is not None,
            worker_timeout_ms=int(args.worker_timeout * 1000),
        )
    )
    journal = f" (journal in {args.work_dir})" if args.work_dir else ""
    print(f"{PROG}: dispatcher listening on port {args.port}{journal}", flush=True)
    stop, seen = _stop_event(), 0
    while not stop.wait(0.5):
        # The only view of the workers the server gives (a count that never goes down: measured on TF 2.21).
        n = server._num_workers()
        if n > seen:
            print(f"{PROG}: worker joined: {n} worker{'s' if n != 1 else ''} registered so far", flush=True)
            seen = n
    server.stop()
    return 0


def _worker(args) -> int:
    from bt_keras.data.service import check_reachable

    _check_port(args.port, allow_zero=True)
    check_reachable(args.dispatcher, key="--dispatcher")  # one line now, not silent retries later
    load_tensorflow()
    import tensorflow as tf

    svc = tf.data.experimental.service
    address = args.dispatcher[len("grpc://") :] if args.dispatcher.startswith("grpc://") else args.dispatcher
    server = svc.WorkerServer(
        svc.WorkerConfig(
            dispatcher_address=address, worker_address=f"{args.host}:%port%", port=args.port, heartbeat_interval_ms=1000
        )
    )
    print(f"{PROG}: worker on {args.host}:{server._address.rsplit(':', 1)[1]} for dispatcher {address}", flush=True)
    stop = _stop_event()
    stop.wait()
    server.stop()
    return 0


def _body(argv) -> int:
    args = _parser().parse_args(argv)
    return _dispatcher(args) if args.role == "dispatcher" else _worker(args)


def main(argv=None) -> int:
    """Entry point of the ``bt-data-service`` console script."""
    return run_command(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
