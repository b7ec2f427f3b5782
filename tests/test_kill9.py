"""kill -9 at random moments: every restart resumes from the newest complete checkpoint.

`scripts/kill9_trials.py` does the work (README, "Preemption and kill -9" has its 10-trial
run); the suite runs a few trials so that a regression shows in CI.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kill9_trials_resume_and_end_with_the_uninterrupted_losses(tmp_path):
    out = tmp_path / "kill9.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "kill9_trials.py"),
            "--trials=3",
            "--num_steps=600",
            "--checkpoint_every=50",
            f"--root={tmp_path / 'runs'}",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["metrics_equal_to_uninterrupted"]
    assert summary["all_resumed_from_newest_complete"]
    assert summary["trials"] >= 1
