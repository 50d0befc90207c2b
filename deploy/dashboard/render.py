"""Draw the chart's Grafana dashboard from a real run: `make dashboard-shot`.

No Grafana here (it is neither a Python nor a Go module this machine can fetch), so the picture is
made the next most honest way: the real services run the demo (upload, curation, a LoRA job,
evaluation, export) with their ``/metrics`` endpoints on; a real Prometheus (built from its Go
module by ``make prometheus``) scrapes them every second with the ``service`` label the chart's
ServiceMonitor gives; then every panel of ``helm/tuneforge/dashboards/tuneforge.json`` is evaluated
by that Prometheus (``/api/v1/query_range`` with the panel's own PromQL, Grafana's variables
substituted: ``$__rate_interval`` -> ``--rate-interval``, ``$tenant`` -> ``.*``, ``$__range`` -> the
run's length) and drawn with matplotlib in the dashboard's layout (rows, titles, legends). Nothing
is invented: an empty panel means its series had no samples in the run.

    .venv/bin/python deploy/dashboard/render.py --out docs/dashboard.png [--tiny] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "tuneforge" / "dashboards" / "tuneforge.json"
PROMETHEUS = Path.home() / ".cache" / "tuneforge" / "prometheus" / "prometheus-v0.316.0"  # make prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_prometheus(binary: Path, work: Path, targets: dict[str, int]) -> tuple[subprocess.Popen[bytes], str]:
    """A real Prometheus scraping each service's /metrics every second; returns (process, base URL)."""
    if not binary.exists():
        raise SystemExit(f"no Prometheus at {binary}: run `make prometheus` first (builds it from its Go module)")
    scrape = [{"job_name": name, "scrape_interval": "1s", "scrape_timeout": "900ms",
               "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}]}
              for name, port in targets.items()]
    config = work / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": scrape}))  # JSON is YAML
    port = _free_port()
    log = open(work / "prometheus.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen([str(binary), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            up = _get(f"{url}/api/v1/query?query=up")["data"]["result"]
            if len(up) == len(targets) and all(r["value"][1] == "1" for r in up):
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"Prometheus did not scrape every service within 60 s; see {work / 'prometheus.log'}")
        time.sleep(0.5)


def _background_reads(client: Any, stop: threading.Event) -> None:
    """A bounded trickle of reads (about 4/s) as a dashboard user's CLI would make."""
    from tuneforge.datasets.v1 import datasets_pb2 as ds
    from tuneforge.training.v1 import training_pb2 as tr

    while not stop.wait(0.25):
        try:
            client.training.ListJobs(tr.ListJobsRequest())
            client.datasets.ListDatasets(ds.ListDatasetsRequest())
        except Exception:  # noqa: BLE001 - a read refused mid-shutdown is fine: the figure shows codes
            continue


def start_stack(run_dir: Path, tiny: bool, base: int, metrics_base: int) -> tuple[list[Any], Any, str, Path]:
    """The four services with metrics on (as ``make demo`` starts them): (processes, client, base model, models dir)."""
    from tuneforge.cli import demo, stack
    from tuneforge.client import Client

    models_dir = run_dir / "models"
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    os.environ.update({"TUNEFORGE_MODELS_DIR": str(models_dir), "TUNEFORGE_DATA_DIR": str(run_dir / "data")})
    base_name = demo.prepare_base_model(models_dir, tiny)
    procs = stack.start(base, run_dir, metrics_base_port=metrics_base)
    try:
        client = Client.connect({p.name: p.address for p in procs}, stack.dev_token(run_dir), timeout=600)
    except BaseException:
        stack.stop(procs)
        raise
    return procs, client, base_name, models_dir


def wait_scraped_after(url: str, moment: float, targets: int, timeout: float = 60.0) -> None:
    """Until every target has a scrape later than ``moment`` (the run's last values are stored)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _get(f"{url}/api/v1/query?query=timestamp(up)")["data"]["result"]
        if len(rows) == targets and all(float(r["value"][1]) > moment for r in rows):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus has not scraped every service since the run ended: {rows}")
        time.sleep(0.5)


def query_panel(url: str, expr: str, start: float, end: float, step: float, rate_interval: str) -> list[dict[str, Any]]:
    """One panel target evaluated by Prometheus over the run, Grafana's variables substituted."""
    length = max(math.ceil(end - start), 1)
    promql = (expr.replace("$__rate_interval", rate_interval).replace("$__range", f"{length}s")
              .replace('=~"$tenant"', '=~".*"'))
    query = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    body = _get(f"{url}/api/v1/query_range?{query}", timeout=30)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {promql!r}: {body}")
    return list(body["data"]["result"])


def _legend(metric: dict[str, str], fmt: str) -> str:
    if fmt and fmt != "__auto":
        out = fmt
        for k, v in metric.items():
            out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
        return out
    return ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"


def draw(dashboard: dict[str, Any], results: dict[int, list[tuple[str, list[dict[str, Any]]]]],
         start: float, end: float, out: Path, subtitle: str) -> None:
    """The dashboard's grid (24 columns, rows as section titles) as one PNG, Grafana's dark look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.62, 0.42  # inches per grid unit
    fig = plt.figure(figsize=(24 * unit_w, bottom * unit_h + 1.0), facecolor="#111217")
    fig.suptitle(f"{dashboard.get('title', 'tuneforge')} — {subtitle}", color="#d8d9da", fontsize=13,
                 x=0.01, ha="left", y=1 - 0.25 / (bottom * unit_h + 1.0))
    top_pad = 0.9 / (bottom * unit_h + 1.0)
    for index, panel in enumerate(panels):
        g = panel["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        height = g["h"] / bottom * (1 - top_pad)
        lower = 1 - top_pad - (g["y"] + g["h"]) / bottom * (1 - top_pad)
        if panel.get("type") == "row":
            fig.text(left + 0.005, lower + height * 0.3, panel.get("title", ""), color="#ccccdc", fontsize=11,
                     fontweight="bold")
            continue
        ax = fig.add_axes((left + 0.035, lower + 0.05 * height + 0.012, width - 0.045, height * 0.70))
        ax.set_facecolor("#181b1f")
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=7)
        ax.set_title(panel.get("title", ""), color="#d8d9da", fontsize=9, loc="left")
        drawn = 0
        for legend_fmt, series in results.get(index, []):
            for s in series:
                xs = [float(t) - start for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
                if not finite:
                    continue
                ax.plot([x for x, _ in finite], [y for _, y in finite], linewidth=1.2,
                        label=_legend(s["metric"], legend_fmt)[:48])
                drawn += 1
        ax.set_xlim(0, max(end - start, 1))
        ax.set_xlabel("seconds into the run", color="#9fa7b3", fontsize=7)
        if drawn:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#ccccdc",
                      ncol=2 if drawn > 4 else 1)
        else:
            ax.text(0.5, 0.5, "no samples in this run", color="#6e7681", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--prometheus", type=Path, default=PROMETHEUS, help="the Prometheus binary (make prometheus)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run" / "dashboard")
    parser.add_argument("--tiny", action="store_true", help="a tiny model built on the fly instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=12, help="training steps of the demo job")
    parser.add_argument("--rate-interval", default="10s", help="what $__rate_interval becomes (>= 4 scrapes)")
    args = parser.parse_args(argv)

    from tuneforge.cli import stack
    from tuneforge.cli._demo_flow import DemoFlow
    from tuneforge.cli.demo import make_rows

    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="prom-", dir=run_dir))
    from tuneforge.cli.demo import _free_base_port

    base = _free_base_port(8)  # gRPC ports base..base+3, metrics ports base+4..base+7
    metrics_base = base + 4
    procs, client, base_name, models_dir = start_stack(run_dir, args.tiny, base, metrics_base)
    prom = None
    try:
        prom, url = start_prometheus(args.prometheus, work, {name: metrics_base + i for i, name in enumerate(stack.SERVICES)})
        stop = threading.Event()
        reads = threading.Thread(target=_background_reads, args=(client, stop), daemon=True)
        start = time.time()
        reads.start()
        try:
            DemoFlow(client, run_dir, base_name, models_dir, args.steps).run(make_rows())
        finally:
            stop.set()
            reads.join()
        end = time.time()
        wait_scraped_after(url, end + 1, len(stack.SERVICES))  # the run's last values are stored
        dashboard = json.loads(DASHBOARD.read_text())
        results: dict[int, list[tuple[str, list[dict[str, Any]]]]] = {}
        step = max((end - start) / 240, 1.0)
        for index, panel in enumerate(dashboard["panels"]):
            for target in panel.get("targets", []):
                series = query_panel(url, target["expr"], start, end, step, args.rate_interval)
                results.setdefault(index, []).append((target.get("legendFormat", ""), series))
        when = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M UTC")
        model = "tiny Llama" if args.tiny else "SmolLM2-135M-Instruct"
        draw(dashboard, results, start, end, args.out,
             f"make demo ({model}, LoRA, {args.steps} steps) on 127.0.0.1, {when}, {end - start:.0f} s, "
             "scraped by Prometheus every 1 s")
        print(f"dashboard drawn from {sum(len(s) for v in results.values() for _, s in v)} series: {args.out}")
        return 0
    finally:
        try:
            if prom is not None:
                prom.terminate()
                try:
                    prom.wait(30)
                except subprocess.TimeoutExpired:
                    prom.kill()
        finally:
            stack.stop(procs)


if __name__ == "__main__":
    sys.exit(main())
