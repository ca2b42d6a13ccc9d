"""``pha serve``: an HTTP server for a trained model (bundle or checkpoint), on LitServe.

    pha serve --ckpt_path bundles/demo [--host 127.0.0.1] [--port 8000] [--max_batch_size 32]
    pha serve --config serve.yaml        # the same options as YAML keys

``GET /health`` answers 200 once the model is loaded; ``POST /predict`` takes one raw example (a
line of a ``pha predict`` file) or a JSON list of them and answers each with its task, prediction,
whether the router chose the task and its confidence; ``GET /tasks`` lists the served tasks.
Requests that arrive together are predicted together, tasks mixed. SIGTERM lets the requests in
flight finish (``--shutdown_timeout``) and exits. docs/production.md, "Serving", says more.
"""

from __future__ import annotations

import gc
import importlib.util
import multiprocessing
import os
import signal
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import jsonargparse
from jsonargparse import ActionConfigFile, Namespace

from pha_lightning.cli.parsing import OneLineArgumentParser
from pha_lightning.errors import SIGTERM_EXIT, ConfigError
from pha_lightning.validation import check_range, valid_values

if TYPE_CHECKING:  # imported by the functions: pha_lightning.model.serving imports LitServe, checked first
    from pha_lightning.model.serving import ServeConfig, ServedTasks


def build_parser() -> OneLineArgumentParser:
    from pha_lightning.model.serving import ServeConfig

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = OneLineArgumentParser(prog="pha serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_argument("--ckpt_path", type=str, required=True, help="a bundle (pha export) or a checkpoint (pha fit)")
    parser.add_class_arguments(ServeConfig, as_group=False)
    return parser


def parse_args(argv: list[str] | None) -> tuple[str, ServeConfig]:
    from pha_lightning.model.serving import ServeConfig

    parsed: Namespace = build_parser().parse_args(sys.argv[2:] if argv is None else argv)
    settings = {key: value for key, value in parsed.as_dict().items() if key not in ("config", "ckpt_path")}
    for key, valid in valid_values(ServeConfig).items():  # named as the option, before ServeConfig names it serve.<key>
        check_range(f"--{key}", settings[key], valid)
    return parsed.ckpt_path, ServeConfig(**settings)


def served_bundle(ckpt_path: str, folder: Path) -> tuple[str, ServedTasks]:
    """The bundle the inference workers load and the tasks requests are checked against, from a
    child process (:func:`load_served`): this process, which LitServe forks its HTTP processes
    from, then holds neither the training code nor a copy of the weights (docs/production.md, "Serve
    over HTTP", says what that saves)."""
    if not Path(ckpt_path).exists():
        raise ConfigError(f"ckpt_path {ckpt_path!r} does not exist; give a bundle (pha export) or a checkpoint")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(load_served, ckpt_path, folder).result()


def load_served(ckpt_path: str, folder: Path) -> tuple[str, ServedTasks]:
    """The model of ``ckpt_path`` loaded (checked) and its served tasks; a checkpoint is exported
    into ``folder`` as a bundle first, so the inference workers never import the training code."""
    from pha_lightning.cli.export import load_trained
    from pha_lightning.formats.bundle import is_bundle
    from pha_lightning.model.serving import ServedTasks

    model, data, extra = load_trained(ckpt_path)
    if is_bundle(ckpt_path):
        return ckpt_path, ServedTasks.of(model)
    return str(model.save_pretrained(folder / "bundle", data=data, extra=extra)), ServedTasks.of(model)


def build_server(bundle: str, served: ServedTasks, config: ServeConfig):  # noqa: ANN201 (litserve.LitServer)
    """LitServe's server over the bundle, with the request checks and ``GET /tasks``."""
    import litserve as ls

    from pha_lightning.model.serving import PHAServingAPI, RequestChecks

    server = ls.LitServer(
        PHAServingAPI(bundle, config),
        accelerator=config.accelerator,
        devices=config.devices,
        workers_per_device=config.workers_per_device,
        timeout=config.timeout,
        middlewares=[(RequestChecks, {"served": served, "max_body_bytes": config.max_body_bytes})],
    )
    server.uvicorn_graceful_timeout = config.shutdown_timeout
    listing = served.listing()
    server.app.add_api_route("/tasks", lambda: listing, methods=["GET"])
    return server


class SigtermStop:
    """SIGTERM as Ctrl+C in the server's process: LitServe then stops its HTTP servers gracefully
    (they finish the requests in flight, up to ``shutdown_timeout``) before its inference workers,
    and ``pha serve`` exits with :data:`SIGTERM_EXIT` like every ``pha`` command SIGTERM stopped.
    The HTTP servers, forked from it, install uvicorn's own handler and re-raise the signal when
    done: there it ends the process as by default."""

    def __init__(self) -> None:
        self.server_pid = os.getpid()
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() == self.server_pid:
            self.received = True
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def main(argv: list[str] | None = None) -> None:
    if importlib.util.find_spec("litserve") is None:
        raise ConfigError("pha serve needs LitServe, which is not installed: pip install 'pha-lightning[serve]'")
    ckpt_path, config = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pha-serve-") as folder:
        bundle, served = served_bundle(ckpt_path, Path(folder))
        server = build_server(bundle, served, config)
        stop = SigtermStop()
        signal.signal(signal.SIGTERM, stop)
        print(
            f"pha serve: {len(served.tasks)} tasks on http://{config.host}:{config.port} "
            "(POST /predict, GET /tasks, GET /health)",
            flush=True,
        )
        # LitServe forks its queue manager and HTTP processes from this one: with every object of the
        # imports frozen, their garbage collections never write to (and so copy) the pages they share
        gc.freeze()
        server.run(
            host=config.host,
            port=config.port,
            num_api_servers=config.num_api_servers,
            generate_client_file=False,
            log_level="warning",
        )
    if stop.received:
        print("pha serve: stopped by SIGTERM; the requests in flight were answered", file=sys.stderr, flush=True)
        raise SystemExit(SIGTERM_EXIT)


if __name__ == "__main__":
    main()
