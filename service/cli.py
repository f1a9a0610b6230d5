"""``hevitpose serve``: run the pose service with uvicorn (one process, one pose worker)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from model.bundle import bundle_paths
from service.settings import DEFAULT_WEIGHTS, Settings

log = logging.getLogger("service.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hevitpose serve",
        description="Run the HEViTPose REST service. Every option also reads HEVITPOSE_<NAME> from the environment; "
        "a flag wins over the variable.",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in Docker)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--weights", help=f"serving bundle: NAME, NAME.json or NAME.safetensors (default {DEFAULT_WEIGHTS})")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], help="pose backend (default auto)")
    p.add_argument("--max-batch-size", type=int, help="crops per model call (default 32)")
    p.add_argument("--max-wait-ms", type=float, help="how long a crop waits for a fuller batch (default 5)")
    p.add_argument("--queue-size", type=int, help="images in flight before 503 (default 64)")
    p.add_argument("--request-timeout-s", type=float, help="per-request deadline before 504 (default 10)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def missing_weights_message(weights) -> str | None:
    weights_path, meta_path = bundle_paths(weights)
    missing = [str(p) for p in (weights_path, meta_path) if not p.is_file()]
    if not missing:
        return None
    return (
        f"hevitpose serve: model weights not found: {', '.join(missing)}\n"
        "Point --weights (or HEVITPOSE_WEIGHTS) at a serving bundle (NAME.safetensors + NAME.json), e.g. one written "
        "by 'hevitpose export', or create the default bundle as the README describes "
        f"(expected at {DEFAULT_WEIGHTS})."
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except Exception as exc:  # pydantic's message names the bad variable
        print(f"hevitpose serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    message = missing_weights_message(settings.weights)
    if message:
        print(message, file=sys.stderr)
        return 2
    if not settings.detector_path.is_file():
        print(f"hevitpose serve: detector model {settings.detector_path} not found (HEVITPOSE_DETECTOR_PATH)",
              file=sys.stderr)  # fmt: skip
        return 2

    import uvicorn

    from service.app import create_app
    from service.logs import setup_logging

    setup_logging(settings.log_level)
    app = create_app(settings)
    service = app.state.service
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.request_timeout_s,
        )  # fmt: skip
    )
    # A model that fails to load would leave the process up but never ready; exiting instead lets
    # Docker's restart policy and Kubernetes act on it like on any crash.
    threading.Thread(target=_stop_if_load_fails, args=(service, server), name="load-watch", daemon=True).start()
    log.info("starting", extra={"host": settings.host, "port": settings.port, "weights": str(settings.weights)})
    server.run()
    if service.load_error:
        print(f"hevitpose serve: the model failed to load: {service.load_error}", file=sys.stderr)
        return 1
    return 0


def _stop_if_load_fails(service, server) -> None:
    while not service.ready and service.load_error is None and not server.should_exit:
        time.sleep(0.2)
    if service.load_error is not None:
        server.should_exit = True  # the same graceful shutdown as on SIGTERM
