"""Nothing lost, nothing silent: typed options, valid row files, claims, writes that fail cleanly (issue 11)."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rgap.core.errors import OutputWriteError, UserInputError
from rgap.core.validation import as_bool, as_int, as_name, as_shape
from rgap.harness.collect import collect, load_rows
from rgap.harness.options import TrialOptions, threads_for
from rgap.harness.schema import ROW_COLUMNS, InvalidRowError, read_row, write_row
from rgap.harness.sweep import (
    check_sweep_config,
    claim,
    completed_rows,
    is_claimed,
    run_sweep_job,
    scan_sweep,
    trial_dir,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = ["model=fcn3", "dataset=sample_gray", "metrics.lpips=false"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_paragraph_exit_2(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("error: ")
    return " ".join(proc.stderr.split())


def valid_row(**values) -> dict:
    row = dict.fromkeys(ROW_COLUMNS)
    row.update(attack="rgap", model="fcn3", dataset="sample_gray", batch_size=1, index=0, seed=0, status="ok",
               psnr=99.5, labels_given=True, config_hash="abc")
    row.update(values)
    return row


# ------------------------------------------------------------------------------------------- typed options
@pytest.mark.parametrize("value", ["flase", "yes", 1, 0, None, 1.0])
def test_booleans_must_be_booleans(value):
    with pytest.raises(UserInputError, match="is not a boolean"):
        as_bool(value, "overwrite")
    assert as_bool(False, "overwrite") is False


@pytest.mark.parametrize("value", [1.5, "abc", "1", True, float("nan"), float("inf"), None])
def test_integers_must_be_integers(value):
    with pytest.raises(UserInputError, match="is not an integer"):
        as_int(value, "seed")
    assert as_int(2.0, "seed") == 2 and as_int(-1, "index", minimum=-1) == -1
    with pytest.raises(UserInputError, match="out of range"):
        as_int(-2, "index", minimum=-1)


def test_trial_options_refuse_truncation(trial_cfg):
    for override, message in [("seed=1.5", "seed=1.5 is not an integer"), ("batch_size=1.5", "batch_size=1.5"),
                              ("index=abc", "index='abc' is not an integer"), ("save_images=flase", "not a boolean"),
                              ("metrics.lpips=maybe", "metrics.lpips='maybe'"), ("threads=0", "threads=0"),
                              ("trace_every=2.5", "trace_every=2.5"), ("precision=float16", "valid choices")]:
        with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
            TrialOptions.from_config(trial_cfg(override))
    options = TrialOptions.from_config(trial_cfg("seed=3", "threads=2"))
    assert options.seed == 3 and options.threads == 2 and options.lpips is False


def test_sweep_options(trial_cfg):
    from omegaconf import open_dict

    cfg = trial_cfg(*FAST)
    with open_dict(cfg):
        cfg.overwrite, cfg.sweep_name, cfg.psnr_threshold = "flase", "ok", 30.0
    with pytest.raises(UserInputError, match="overwrite='flase' is not a boolean"):
        check_sweep_config(cfg)
    for bad in ["../../../../elsewhere", "/tmp/x", "a/b", "..", ".hidden", ""]:
        with pytest.raises(UserInputError, match="not a valid name"):
            as_name(bad, "sweep_name")
    assert as_name("paper_table1.v2-a", "sweep_name") == "paper_table1.v2-a"


@pytest.mark.parametrize("value", ["abc", [1, 0, 0], [3, 32], [3.5, 32, 32], "[3,32,32]"])
def test_input_shape_must_be_three_positive_integers(value):
    with pytest.raises(UserInputError, match="input_shape"):
        as_shape(value, "input_shape")
    assert as_shape([3, 32, 32], "input_shape") == (3, 32, 32)


def test_threads_auto_rule():
    assert threads_for("auto", (3, 32, 32)) == 1 and threads_for("auto", (1, 64, 64)) == 1
    assert threads_for("auto", (3, 128, 128)) >= 1 and threads_for(3, (3, 32, 32)) == 3


# --------------------------------------------------------------------------------------------- row files
def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut in header":
        path.write_bytes(data[:300])
    elif how == "cut in data":
        path.write_bytes(data[: len(data) - 20])
    elif how == "line appended":
        path.write_bytes(data + data.splitlines(keepends=True)[1])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(os.urandom(400))
    elif how == "foreign csv":
        path.write_text("a,b\n1,2\n")
    elif how == "int as float":
        path.write_text(data.decode().replace(",fcn3,sample_gray,1,", ",fcn3,sample_gray,1.0,"))
    elif how == "bad status":
        path.write_text(data.decode().replace(",ok,", ",done,"))


CORRUPTIONS = ["cut in header", "cut in data", "line appended", "empty", "random bytes", "foreign csv",
               "int as float", "bad status"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_invalid_row_file_is_named_and_nothing_is_written(tmp_path, how):
    for i in range(3):
        write_row(valid_row(index=i, config_hash=f"h{i}"), trial_dir(tmp_path, f"h{i}") / "row.csv")
    trials = collect(tmp_path)[0]
    before = trials.read_bytes()
    broken = trial_dir(tmp_path, "h1") / "row.csv"
    corrupt(broken, how)
    with pytest.raises(InvalidRowError):
        read_row(broken)
    with pytest.raises(UserInputError, match="not valid rows") as info:
        load_rows(tmp_path)
    assert str(broken) in str(info.value)
    with pytest.raises(UserInputError):
        collect(tmp_path)
    assert trials.read_bytes() == before  # the complete 3-row table is not replaced by 2 rows
    scan = scan_sweep(tmp_path)
    assert len(scan.rows) == 2 and len(scan.invalid) == 1


def test_rows_keep_their_types(tmp_path):
    for i in range(2):
        row = valid_row(index=i, config_hash=f"{i:012d}", iterations=None)
        write_row(row, trial_dir(tmp_path, f"h{i}") / "row.csv")
    table = load_rows(tmp_path)
    assert str(table["batch_size"].dtype) == "Int64" and str(table["index"].dtype) == "Int64"
    assert table["config_hash"].tolist() == ["000000000000", "000000000001"]  # text stays text
    assert table["labels_given"].tolist() == [True, True]
    with pytest.raises(TypeError, match="batch_size"):
        write_row(valid_row(batch_size=1.0), tmp_path / "x.csv")
    with pytest.raises(TypeError, match="labels_given"):
        write_row(valid_row(labels_given="yes"), tmp_path / "x.csv")


def test_legacy_rows_without_source_still_read(tmp_path):
    path = tmp_path / "row.csv"
    write_row(valid_row(), path)
    lines = path.read_text().splitlines()
    header, cells = lines[0].split(","), lines[1].split(",")
    for column in ("source", "client_mode"):  # the two columns version 1 did not have
        position = header.index(column)
        del header[position], cells[position]
    path.write_text(",".join(header) + "\n" + ",".join(cells) + "\n")
    assert read_row(path)["source"] == "" and read_row(path)["batch_size"] == 1
    assert read_row(path)["client_mode"] == ""


def test_sweep_job_reruns_an_invalid_row(trial_cfg, tmp_path):
    cfg = trial_cfg(*FAST)
    first = run_sweep_job(cfg, tmp_path)
    assert first.action == "ran" and first.row["status"] == "ok"
    assert run_sweep_job(cfg, tmp_path).action == "skipped"
    row_path = trial_dir(tmp_path, first.key) / "row.csv"
    row_path.write_bytes(row_path.read_bytes()[:300])
    again = run_sweep_job(cfg, tmp_path)
    assert again.action == "ran" and "re-running" in again.note and str(row_path) in again.note
    assert read_row(row_path)["psnr"] == first.row["psnr"]


# ------------------------------------------------------------------------------------------------- claims
def _hold_claim(directory: str, ready) -> None:
    with claim(Path(directory)) as mine:
        assert mine
        ready.set()
        time.sleep(120)


def test_claim_is_exclusive_and_released_when_its_holder_is_killed(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_claim, args=(str(tmp_path), ready))
    holder.start()
    assert ready.wait(60)
    assert is_claimed(tmp_path)
    with claim(tmp_path) as mine:
        assert mine is False
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert not is_claimed(tmp_path)  # never left stuck
    with claim(tmp_path) as mine:
        assert mine is True


def test_claimed_trial_is_left_to_its_holder(trial_cfg, tmp_path):
    from rgap.harness.sweep import trial_hash

    cfg = trial_cfg(*FAST)
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_claim, args=(str(trial_dir(tmp_path, trial_hash(cfg))), ready))
    holder.start()
    try:
        assert ready.wait(60)
        outcome = run_sweep_job(cfg, tmp_path)
        assert outcome.action == "claimed" and not completed_rows(tmp_path)
        assert scan_sweep(tmp_path).running == 1
    finally:
        holder.kill()
        holder.join()


@pytest.mark.slow
def test_two_identical_sweeps_share_the_work(tmp_path):
    args = [sys.executable, "-m", "runners.benchmark", "-m", "attack=rgap", "model=fcn3,lenet", "dataset=sample_gray",
            "index=0,1,2,3", "metrics.lpips=false", f"paths.results={tmp_path}"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ran = sum(out.count(": rgap | ") for out in outputs)
    assert ran == 8, outputs  # 8 trials, each computed by exactly one of the two sweeps
    table = pd.read_csv(tmp_path / "sweeps" / "default" / "trials.csv")
    assert len(table) == 8 and table["config_hash"].is_unique


# ------------------------------------------------------------------------------------------ failed writes
def test_full_disk_is_one_error_and_leaves_no_temporary_file(trial_cfg, tmp_path, monkeypatch):
    import rgap.core.atomic

    done = run_sweep_job(trial_cfg(*FAST, "index=0"), tmp_path)
    real_open = open

    def full_disk(path, *args, **kwargs):
        if ".trace.csv." in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rgap.core.atomic, "open", full_disk, raising=False)
    with pytest.raises(OutputWriteError, match="the disk is full") as info:
        run_sweep_job(trial_cfg(*FAST, "index=1"), tmp_path)
    assert "trace.csv" in str(info.value) and "finished trials are kept" in str(info.value)
    assert not list(tmp_path.rglob("*.tmp*"))
    assert read_row(trial_dir(tmp_path, done.key) / "row.csv")["status"] == "ok"  # completed rows stay valid
    assert len(completed_rows(tmp_path)) == 1


def test_unwritable_results_dir_is_one_paragraph(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = cli("runners.attack", *FAST, f"paths.results={blocker}/results")
    text = one_paragraph_exit_2(proc)
    assert "Could not write" in text and str(blocker) in text


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the command as user nobody, which needs root to arrange")
def test_read_only_sweep_dir_is_one_paragraph(tmp_path):
    results = tmp_path / "results"
    (results / "sweeps" / "ro").mkdir(parents=True)
    os.chmod(results / "sweeps" / "ro", 0o555)
    os.chmod(tmp_path, 0o755)
    try:
        probe = subprocess.run([sys.executable, "-c", "import rgap"], cwd=ROOT, user="nobody", capture_output=True)
    except OSError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("user nobody cannot read the project or its virtual environment here")
    proc = subprocess.run([sys.executable, "-m", "runners.benchmark", "-m", "sweep_name=ro", *FAST,
                           f"paths.results={results}"], cwd=ROOT, user="nobody", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    text = one_paragraph_exit_2(proc)
    assert "permission denied" in text and "sweeps/ro" in text


# ------------------------------------------------------------------------------------------ command lines
def test_overwrite_typo_is_refused_before_any_trial(tmp_path):
    results = f"paths.results={tmp_path}"
    first = cli("runners.benchmark", "-m", "sweep_name=ow", *FAST, "index=0,1", results)
    assert first.returncode == 0, first.stderr
    rows = completed_rows(tmp_path / "sweeps" / "ow")
    stamps = [p.stat().st_mtime_ns for p in rows]
    proc = cli("runners.benchmark", "-m", "sweep_name=ow", *FAST, "index=0,1", "overwrite=flase", results)
    assert "overwrite='flase' is not a boolean" in one_paragraph_exit_2(proc)
    assert "No trial was run" in proc.stderr
    assert [p.stat().st_mtime_ns for p in rows] == stamps


def test_non_integer_seed_in_a_sweep_is_refused_before_any_trial(tmp_path):
    proc = cli("runners.benchmark", "-m", *FAST, "seed=1,1.5", f"paths.results={tmp_path}")
    text = one_paragraph_exit_2(proc)
    assert "seed=1.5 is not an integer" in text and "sweep job" in text
    assert not completed_rows(tmp_path / "sweeps" / "default")


def test_sweep_name_cannot_leave_the_sweeps_directory(tmp_path):
    results = tmp_path / "results"
    proc = cli("runners.benchmark", "-m", *FAST, "sweep_name=../../../elsewhere", f"paths.results={results}")
    assert "sweep_name='../../../elsewhere' is not a valid name" in one_paragraph_exit_2(proc)
    assert not (tmp_path / "elsewhere").exists() and not results.exists()


def test_benchmark_without_multirun_is_a_one_job_sweep(tmp_path):
    proc = cli("runners.benchmark", *FAST, "sweep_name=single", f"paths.results={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "[sweep] 1 trial ->" in proc.stdout and "[sweep] 1/1 rows (ok 1" in proc.stdout
    table = pd.read_csv(tmp_path / "sweeps" / "single" / "trials.csv")
    assert len(table) == 1 and table["status"][0] == "ok"
    again = cli("runners.benchmark", *FAST, "sweep_name=single", f"paths.results={tmp_path}")
    assert "(row exists)" in again.stdout


def _default_sigint() -> None:
    """In the child: Ctrl-C's default disposition (a shell that starts the tests in the background sets SIGINT to
    ignored, which the child would inherit, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_sweep_says_how_to_resume(tmp_path):
    # 60 jobs of about 0.2 s: the interrupt lands while the sweep still runs even when the test is slow to see
    # the first row.
    args = [sys.executable, "-m", "runners.benchmark", "-m", "attack=rgap", "model=fcn3", "dataset=sample_gray",
            "index=range(0,60)", "metrics.lpips=false", f"paths.results={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 300
    while not completed_rows(tmp_path / "sweeps" / "default") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted:" in lines[0] and "/60 rows done" in lines[0]
    assert "run the same command again to resume" in lines[0]
    assert not list((tmp_path / "sweeps" / "default").rglob("*.tmp*"))
    for path in completed_rows(tmp_path / "sweeps" / "default"):
        read_row(path)


def test_rank_input_shape_is_checked(tmp_path):
    for value, message in [("abc", "input_shape='abc' is not a shape"),
                           ("[1,0,0]", "input_shape[1]=0 is out of range")]:
        proc = cli("runners.rank", "model=lenet", f"input_shape={value}", f"hydra.run.dir={tmp_path / 'run'}")
        assert message in one_paragraph_exit_2(proc)
        assert not (tmp_path / "run").exists()  # the rejected run leaves no empty directory


def test_rank_shows_one_progress_line_per_layer(tmp_path):
    proc = cli("runners.rank", "model=lenet", "dataset=sample_gray", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[rank] ")]
    assert [line.split(":")[0] for line in progress] == ["[rank] conv1", "[rank] conv2", "[rank] conv3", "[rank] fc1"]


def test_paper_offline_without_sweeps_is_one_paragraph(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.paper_offline", "--no-sweep", "--only", "table1",
                           "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    one_paragraph_exit_2(proc)


def test_checkpoint_directory_is_named_as_a_directory(tmp_path):
    proc = cli("runners.attack", *FAST, f"weights.checkpoint={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    text = one_paragraph_exit_2(proc)
    assert "is a directory, not a checkpoint file" in text and "does not exist" not in text
