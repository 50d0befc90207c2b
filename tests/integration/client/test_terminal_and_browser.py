"""As a person sees it: ``tuneforge jobs watch`` in a real terminal (tmux) on a real stack training a
tiny model, and the HTML reports rendered by headless Chromium (Debian's ``chromium``; ``make
browser`` installs it)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.client.conftest import job_spec
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Tmux:
    """A tmux server of our own (its own socket), one window running a shell command."""

    def __init__(self, socket: Path) -> None:
        self.base = ["tmux", "-S", str(socket)]

    def run(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        subprocess.run([*self.base, "new-session", "-d", "-x", "150", "-y", "45", "-s", "t",
                        f"env {exports} bash --norc --noprofile"], check=True, env={**os.environ, "TERM": "xterm"})
        self.keys(command, "Enter")

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "t", *keys], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True,
                              check=True).stdout

    def wait_for(self, predicate, timeout: float = 300) -> str:
        """Poll the screen until ``predicate(screen)`` holds (a condition, not a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"screen never matched; last screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def tmux(tmp_path):
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (apt-get install tmux)")
    t = Tmux(tmp_path / "tmux.sock")
    yield t
    t.close()


def _watch_command(job_id: str, tag: str) -> str:
    return f"{shlex.quote(sys.executable)} -m tuneforge.cli jobs watch {job_id}; echo {tag}=$?"


def _exited(tag: str):
    return lambda screen: re.search(rf"^{tag}=\d+", screen, re.MULTILINE) is not None


def _step(screen: str) -> int:
    found = re.findall(r"(\d+)/(\d+)\s+ETA", screen)
    return int(found[-1][0]) if found else -1


def test_jobs_watch_in_a_terminal_shows_progress_detaches_on_ctrl_c_and_exits_with_the_status(
        platform, trained, tmux):
    env = {**platform.env(), "PYTHONPATH": f"{ROOT / 'services'}:{ROOT}"}
    env = {k: v for k, v in env.items() if k.startswith(("TUNEFORGE_", "PYTHON", "PATH", "HOME", "TMPDIR", "HF_"))}
    with platform.client() as c:
        long_job = c.create_job({**job_spec(trained.version, steps=5000, every=5), "suffix": "long"})
        tmux.run(_watch_command(long_job.id, "first"), env)
        first = tmux.wait_for(lambda s: _step(s) >= 2 and "checkpoints  ckpt_" in s)
        later = tmux.wait_for(lambda s: _step(s) > _step(first))  # the bar advances
        assert "/5000" in later and re.search(r"loss\s+\d+\.\d{4}", later) and "━" in later
        assert "RUNNING" in later and "tokens/s" in later and "ETA" in later
        assert re.search(r"curve\s+[▁▂▃▄▅▆▇█]+", later), later

        tmux.keys("C-c")
        detached = tmux.wait_for(_exited("first"))
        assert "detached" in detached and re.search(r"^first=130$", detached, re.MULTILINE)
        assert c.training.GetJob(tr.GetJobRequest(job_id=long_job.id)).job.status == tr.JOB_STATUS_RUNNING

        c.training.CancelJob(tr.CancelJobRequest(job_id=long_job.id))
        short_job = c.create_job({**job_spec(trained.version, steps=3, every=3), "suffix": "short"})
        tmux.keys("clear; " + _watch_command(long_job.id, "again"), "Enter")  # re-attach: replays and ends
        cancelled = tmux.wait_for(_exited("again"))
        assert f"job {long_job.id} CANCELLED" in cancelled and re.search(r"^again=3$", cancelled, re.MULTILINE)
        tmux.keys("clear; " + _watch_command(short_job.id, "short"), "Enter")
        done = tmux.wait_for(_exited("short"))
        assert f"job {short_job.id} SUCCEEDED after 3 steps" in done and re.search(r"^short=0$", done, re.MULTILINE)
        assert "3/3" in done


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={cwd / 'profile'}", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def _pixels_near(image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return sum(1 for px in image.getdata() if all(abs(a - b) <= tol for a, b in zip(px[:3], rgb, strict=True)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make browser` installs Debian's package)")
def test_reports_render_their_charts_in_headless_chromium(platform, trained, tmp_path, monkeypatch):
    from PIL import Image

    from tuneforge.cli.__main__ import main
    from tuneforge.cli.report import COLORS

    for key, value in platform.env().items():
        if key.startswith("TUNEFORGE_"):
            monkeypatch.setenv(key, value)
    job_html, eval_html = tmp_path / "job.html", tmp_path / "eval.html"
    assert main(["jobs", "report", trained.job.id, "--out", str(job_html)]) == 0
    assert main(["eval", "report", trained.evaluation.id, "--out", str(eval_html)]) == 0

    dom = _chromium("--dump-dom", job_html.as_uri(), cwd=tmp_path).stdout
    for gid in ("loss-curve", "eval-loss-curve", "lr-curve", "tokens-curve", "checkpoint-0"):
        assert f'id="{gid}"' in dom, gid  # in the document the browser built, not only the file
    shot = tmp_path / "job.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1400", job_html.as_uri(), cwd=tmp_path)
    image = Image.open(shot).convert("RGB")
    hex_rgb = lambda h: tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))  # noqa: E731
    for name in ("loss", "eval", "ckpt", "lr", "tokens"):
        assert _pixels_near(image, hex_rgb(COLORS[name])) > 150, f"{name} curve not drawn in the screenshot"

    shot = tmp_path / "eval.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1200", eval_html.as_uri(), cwd=tmp_path)
    image = Image.open(shot).convert("RGB")
    assert _pixels_near(image, hex_rgb(COLORS["model"])) > 500 and _pixels_near(image, hex_rgb(COLORS["baseline"])) > 500
    dom = _chromium("--dump-dom", eval_html.as_uri(), cwd=tmp_path).stdout
    assert 'id="metric-perplexity-model' in dom and "<th>fine-tuned</th>" in dom
