"""Screenshots of TensorBoard on a real sweep, for the README: the scalars, images and HPARAMS views.

    python scripts/tensorboard_screenshots.py --data-root ../shared/data          # writes docs/images/*.png
    python scripts/tensorboard_screenshots.py --data-root ../shared/data --seconds 60 --out /tmp/shots

Runs the 4-job sweep of the README (`experiment=lsgan_mlp_mnist loss=lsgan,hinge seed=0,1`, a time budget each) in
its usual folder under outputs/sweeps/, so running the script again reuses the finished jobs. Then it starts
`tensorboard --logdir <sweep>` on 127.0.0.1 only, opens each view in headless Chromium (`apt-get install chromium`)
and saves what a new user sees first, and stops TensorBoard.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["experiment=lsgan_mlp_mnist", "loss=lsgan,hinge", "seed=0,1"]
# (file name, TensorBoard URL after the host, window size): what the README shows. forceSVG draws the Time Series
# charts as SVG: headless Chromium has no GPU for their WebGL renderer.
VIEWS = [
    ("tensorboard_scalars.png", "?forceSVG=true#timeseries", (1500, 1300)),
    ("tensorboard_custom_scalars.png", "#custom_scalars", (1500, 1000)),
    ("tensorboard_images.png", "#images", (1500, 1100)),
    ("tensorboard_hparams.png", "#hparams", (1900, 700)),
]


def run_sweep(data_root: str, seconds: float, eval_samples: int) -> Path:
    """Train the sweep (or skip its finished jobs) and return its folder."""
    command = ["ganlab-train", "-m", *SWEEP, f"train.max_seconds={seconds}", "train.steps=100000000",
               f"eval.num_samples={eval_samples}", "device.threads=1", "log.progress=false",
               f"dataset.root={data_root}"]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    sweeps = sorted((REPO / "outputs" / "sweeps").iterdir(), key=lambda path: path.stat().st_mtime)
    return sweeps[-1]  # the folder the sweep just wrote or finished


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_runs(url: str, runs: int, timeout: float = 120) -> None:
    """Wait until TensorBoard serves and has loaded `runs` runs (it reads the event files in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as response:
                if len(json.load(response)) >= runs:
                    time.sleep(5)  # let it finish reading the runs it has listed
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"TensorBoard at {url} did not list {runs} runs within {timeout:.0f} s")


def screenshot(chromium: str, url: str, path: Path, size: tuple[int, int]) -> None:
    """One headless Chromium screenshot of `url`, after its scripts have had 20 s of virtual time to render."""
    window = f"--window-size={size[0]},{size[1]}"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", window,
         "--virtual-time-budget=20000", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    print(f"wrote {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data", help="folder holding MNIST/raw/ (dataset.root)")
    parser.add_argument("--seconds", type=float, default=20, help="training time budget of each job")
    parser.add_argument("--eval-samples", type=int, default=2000, help="samples of each job's final evaluation")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install chromium (or pass a machine that has it)")

    sweep = run_sweep(args.data_root, args.seconds, args.eval_samples)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_runs(url, runs=4)
        for name, fragment, size in VIEWS:
            screenshot(chromium, f"{url}/{fragment}", args.out / name, size)
    finally:
        board.terminate()
        board.wait(timeout=30)


if __name__ == "__main__":
    main()
