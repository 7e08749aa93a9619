"""kedro viz, offline: the static site built by `kedro viz build` renders the five stages in headless
Chromium, and `kedro viz run` serves the project's graph (stopped as a process group, docs/stack-notes.md)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from starft_pipeline.pipeline_registry import STAGES
from starft_pipeline.train.methods import METHODS
from tests.helpers import copy_project, kedro_env

pytestmark = pytest.mark.slow

KEDRO = str(Path(sys.executable).with_name("kedro"))
#: One node per stage that the flowchart shows at top level (finetune's nodes sit in method namespaces).
STAGE_NODES = ("prepare_datasets", "generate_descriptions", "build_teacher_cache", "collect_results")
LAYERS = ("raw", "intermediate", "primary", "feature", "models", "model_output", "reporting")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
)


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.fail("headless Chromium is needed: `apt-get install -y chromium` (scripts/test.sh does it)")
    return path


@pytest.fixture(scope="module")
def viz_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("viz") / "project")


@pytest.fixture(scope="module")
def viz_site(viz_project: Path) -> Path:
    completed = subprocess.run(
        [KEDRO, "viz", "build"], cwd=viz_project, env=kedro_env(), capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    site = viz_project / "build"
    assert (site / "index.html").is_file() and (site / "api" / "main").is_file()
    return site


@pytest.fixture(scope="module")
def site_url(viz_site: Path) -> Iterator[str]:
    """The static site served on 127.0.0.1 (a free port) for the module's tests."""
    handler = functools.partial(_QuietHandler, directory=str(viz_site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def run_chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir()
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_static_site_lists_stages_layers_and_namespaces(viz_site: Path) -> None:
    main = json.loads((viz_site / "api" / "main").read_text())
    tags = {tag["id"] for tag in main["tags"]}
    assert set(STAGES) <= tags
    assert [layer for layer in main["layers"] if layer in LAYERS] == list(LAYERS)
    names = {node["name"] for node in main["nodes"]}
    assert set(STAGE_NODES) <= names
    assert {"evaluation", *METHODS} <= names  # the methods' and the one-pass evaluation's namespaces, collapsed
    datasets = [node for node in main["nodes"] if node["type"] == "data"]
    assert all(node.get("layer") for node in datasets if node["name"] in {"results", "teacher_cache", "dataset_index"})


def test_flowchart_renders_in_headless_chromium(site_url: str, tmp_path: Path) -> None:
    dom = run_chromium(site_url, tmp_path / "dom-profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    html = dom.stdout
    for name in (*STAGE_NODES, "evaluation", *METHODS):  # evaluation: the one-pass namespace
        assert f">{name}<" in html, f"node {name!r} is not on the rendered page"
    for layer in ("intermediate", "feature", "reporting"):
        assert f">{layer}<" in html, f"layer band {layer!r} is not on the rendered page"


def test_screenshot_is_not_blank(site_url: str, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    shot = tmp_path / "kedro_viz.png"
    completed = run_chromium(site_url, tmp_path / "shot-profile", f"--screenshot={shot}")
    assert completed.returncode == 0 and shot.is_file(), completed.stderr[-3000:]
    keep = os.environ.get("STARFT_VIZ_SCREENSHOT")
    if keep:  # e.g. to look at it: STARFT_VIZ_SCREENSHOT=/tmp/viz.png pytest tests/e2e/test_viz_browser.py
        shutil.copy(shot, keep)
    image = Image.open(shot).convert("L")
    assert image.size == (1600, 1000)
    stddev = ImageStat.Stat(image).stddev[0]
    colours = len(image.getcolors(maxcolors=1 << 16) or range(1 << 16))
    assert stddev > 10 and colours > 16, f"screenshot looks blank (std {stddev:.1f}, {colours} grey levels)"


def _free_port() -> int:
    """A free port below 49152: `kedro viz run` refuses the dynamic range the OS hands out for port 0."""
    for port in random.Random().sample(range(20_000, 49_000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port between 20000 and 49000 on 127.0.0.1")


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process`` (its own session), SIGKILL what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_kedro_viz_run_serves_the_graph_and_stops_as_a_group(viz_project: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = (tmp_path / "viz_run.log").open("w")
    process = subprocess.Popen(
        [KEDRO, "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
        cwd=viz_project,
        env=kedro_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: `kedro viz run` leaves a listening child behind
    )
    try:
        deadline, body = time.monotonic() + 240, None
        while time.monotonic() < deadline and process.poll() is None:
            body = _get(f"http://127.0.0.1:{port}/api/main")
            if body:
                break
            time.sleep(1)
        assert body, f"kedro viz run did not serve /api/main:\n{(tmp_path / 'viz_run.log').read_text()[-3000:]}"
        assert set(STAGE_NODES) <= {node["name"] for node in json.loads(body)["nodes"]}
    finally:
        _stop_group(process)
        log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _get(f"http://127.0.0.1:{port}/api/main") is not None:
        time.sleep(1)
    assert _get(f"http://127.0.0.1:{port}/api/main") is None, "a kedro viz process still listens"
