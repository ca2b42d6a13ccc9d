"""Other Lightning loggers through ``--trainer.logger``: a real MLflow tracking server, and W&B offline.

Each run's metrics reach the logger, and so do the files of its run folder (the resolved config, the
health report, the run record, and the retrieval picture and vectors that replace TensorBoard's
projector)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from production_fixtures import TINY_RUN, pha_env, run_pha

pytestmark = pytest.mark.slow  # starts a server and trains

MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent))
FIT = ["fit", *TINY_RUN, "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
#: the run folder's files every logger that stores files receives
RUN_FILES = {"config.yaml", "health.json", "run_record.json"}
#: the projector's replacement at the last validation (step 4)
RETRIEVAL_FILES = {f"retrieval/step000004.{suffix}" for suffix in ("safetensors", "json", "png")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """``mlflow server`` on 127.0.0.1 (SQLite store, served artifacts), stopped after the module."""
    assert MLFLOW, "mlflow is not installed (pip install -e .[tracking])"
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            time.sleep(1)
    else:
        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
    yield uri
    os.killpg(server.pid, 9)  # the server and its workers (its own process group)
    server.wait(timeout=60)


def test_mlflow_logger_gets_metrics_config_health_and_run_files(
    mlflow_server: str, tmp_path: Path, tiny_bert: str
) -> None:
    from mlflow.tracking import MlflowClient

    run_pha(
        *FIT,
        f"--model.arch.backbone={tiny_bert}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=MLFlowLogger",
        f"--trainer.logger.tracking_uri={mlflow_server}",
        "--trainer.logger.experiment_name=pha-logger-test",
        cwd=tmp_path,
    )
    client = MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("pha-logger-test").experiment_id])
    assert {"val/avg", "train/loss", "health/max_top_axis_share"} <= run.data.metrics.keys()
    history = client.get_metric_history(run.info.run_id, "val/avg")
    assert len(history) == 2  # one per validation (steps 2 and 4)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    retrieval = {a.path for a in client.list_artifacts(run.info.run_id, "retrieval")}
    assert RUN_FILES <= top and RETRIEVAL_FILES <= retrieval, (top, retrieval)
    # the artifacts are the run folder's files (default_root_dir: MLflow's logger keeps no local folder)
    health_path = tmp_path / "health.json"
    downloaded = Path(client.download_artifacts(run.info.run_id, "health.json", str(tmp_path / "dl")))
    assert json.loads(downloaded.read_text()) == json.loads(health_path.read_text())
    config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))).read_text()
    )
    assert config["trainer"]["logger"]["init_args"]["tracking_uri"] == mlflow_server


def test_wandb_offline_run_holds_metrics_and_run_files(tmp_path: Path, tiny_bert: str) -> None:
    env = {**pha_env(), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    run_pha(
        *FIT,
        f"--model.arch.backbone={tiny_bert}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=WandbLogger",
        "--trainer.logger.offline=true",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.logger.project=pha-logger-test",
        cwd=tmp_path,
        env=env,
    )
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    files = {str(p.relative_to(run_dir / "files")) for p in (run_dir / "files").rglob("*") if p.is_file()}
    assert RUN_FILES | RETRIEVAL_FILES <= files, files
    # an offline run's metrics are history records in its .wandb file (protobuf: the keys in plain bytes)
    (records,) = run_dir.glob("run-*.wandb")
    assert all(key.encode() in records.read_bytes() for key in ("val/avg", "train/loss", "health/max_top_axis_share"))
    local = tmp_path / "health.json"  # the run folder: the logger's save_dir
    assert json.loads((run_dir / "files" / "health.json").read_text()) == json.loads(local.read_text())
