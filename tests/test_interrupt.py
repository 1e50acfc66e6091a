"""Ctrl-C in a tool: one line saying what was saved and the command that resumes, no
KeyboardInterrupt traceback (issue 15, section 3)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import flags
from tests.conftest import REPO


def test_interrupt_prints_one_line_with_what_was_saved_and_the_command(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tools/search.py", "--output_dir=a b"])

    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        flags.interruptible(main, saved=lambda: flags.saved_checkpoints(str(tmp_path)))([])
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == ("interrupted: nothing saved yet. Resume with: "
                   "python tools/search.py '--output_dir=a b'")


def test_ctrl_c_during_a_search_says_which_epochs_are_saved(tmp_path, cifar_dir):
    out = tmp_path / "s"
    args = [sys.executable, "-u", "tools/search.py", "--dataset=folder",
            f"--data_dir={cifar_dir}", "--max_examples=128", "--image_size=16",
            "--batch_size=16", "--epochs=30", "--cells=3", "--channels=4",
            "--ops=none,max_pool_3x3,bin_conv_3x3", "--progress=epoch",
            f"--output_dir={out}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    # Ctrl-C as in a terminal: SIGINT at its default in the child, whatever an earlier
    # test or library left in this process (an ignored SIGINT is inherited, and Python
    # then installs no KeyboardInterrupt handler: the search ran to its end, exit 0)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    for line in proc.stdout:  # after epoch 1 is saved, epoch 2 starts
        if line.startswith("Epoch 2/30") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if l.startswith("interrupted:")]
    assert len(lines) == 1, err[-3000:]
    # the epochs saved when the signal landed (a tiny epoch is quick: not always 1)
    with open(out / "ckpt" / "checkpoint") as f:
        saved = int(f.readline().split('"')[1].rsplit("-", 1)[1])
    assert 1 <= saved < 30
    assert f"{saved} epoch{'s' * (saved != 1)} in {out / 'ckpt'}" in lines[0]
    assert "Resume with: python tools/search.py --dataset=folder" in lines[0]
