"""``totalseg_serve``: the REST API, the job store and the worker, as a real service process on a loopback port.

Every job runs with the random-weights home (tests/conftest.py) on a small crop of example_ct_sm with
``fastest``; outputs are compared byte for byte with what ``totalsegmentator()`` writes for the same input
and options. Faults are real ones: the worker and the service are killed with SIGKILL, the data folder is a
tmpfs that fills up (root only), uploads are truncated or hostile archives. The 20-concurrent-uploads test is
``slow`` (run with ``-m slow``).
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import REF, _copy_home

CT_SM = REF / "example_ct_sm.nii.gz"
DICOM = REF / "example_ct_dicom"
TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_ct(source: Path, target: Path, box=(slice(20, 60), slice(20, 60), slice(0, 30))) -> Path:
    """A small crop of a reference CT (a job of the random-weights home takes a second or two)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(source)
    data = np.asarray(img.dataobj)[box]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), target)
    return target


class Service:
    """``totalseg_serve`` started as a process (``start``), with an HTTP client that brings the token."""

    def __init__(self, data: Path, home: Path, *args: str, token: str | None = TOKEN, env: dict | None = None,
                 log: Path | None = None):
        self.data, self.home, self.args, self.token = Path(data), Path(home), list(args), token
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = log or self.data.parent / f"{self.data.name}_service.log"

    def start(self, timeout: float = 60) -> "Service":
        from weights_server import closed_port_url

        env = {k: v for k, v in os.environ.items() if k != "TOTALSEG_SERVE_TOKEN"}
        env.update({"TOTALSEG_HOME_DIR": str(self.home), "TOTALSEG_WEIGHTS_URL": closed_port_url(),
                    "PYTHONUNBUFFERED": "1", **self.env})
        command = [sys.executable, "-m", "totalseg.cli.serve", "--data", str(self.data), "-d", "cpu",
                   "--port", str(self.port), *self.args]
        if self.token:
            command += ["--token", self.token]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"totalseg_serve stopped: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("totalseg_serve did not answer")

    def client(self, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def submit(self, client: httpx.Client, path: Path, options: dict | None = None, name: str | None = None):
        with open(path, "rb") as f:
            return client.post("/api/jobs", files={"file": (name or path.name, f)},
                               data={"options": json.dumps(options or {})})

    def wait(self, client: httpx.Client, job_id: str, timeout: float = 180, states=("done", "failed", "cancelled"),
             seen: list | None = None) -> dict:
        """The job once its state is one of ``states`` (``seen`` collects each (state, progress) polled)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = client.get(f"/api/jobs/{job_id}").json()
            if seen is not None:
                seen.append((job["state"], job["progress"]))
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_ct(CT_SM, tmp_path_factory.mktemp("tiny") / "tiny.nii.gz")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, tiny) -> Path:
    folder = tmp_path_factory.mktemp("allowed")
    (folder / "case.nii.gz").write_bytes(tiny.read_bytes())
    return folder


@pytest.fixture(scope="module")
def service(tmp_path_factory, fake_home, allowed):
    s = Service(tmp_path_factory.mktemp("serve") / "data", fake_home, "--allow-root", str(allowed),
                "--max-upload-mb", "4").start()
    yield s
    s.stop()


@pytest.fixture
def client(service):
    with service.client() as c:
        yield c


def _worker(client) -> dict:
    return client.get("/api/service").json()


# -- the command ---------------------------------------------------------------------------------------------
def test_help_without_torch_or_fastapi():
    code = ("import sys\nfrom totalseg.cli.serve import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'fastapi', 'uvicorn') if m in sys.modules]\nassert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--dicom-port" in done.stdout and "--allow-root" in done.stdout


def test_public_address_needs_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TOTALSEG_SERVE_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "totalseg.cli.serve", "--host", "0.0.0.0", "--port",
                           str(free_port()), "--data", str(tmp_path / "data")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("ERROR: refusing to listen on 0.0.0.0 without a token") and done.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()


def test_token_on_every_call_but_health(service, client):
    assert httpx.get(service.url + "/api/health").status_code == 200
    for method, path in [("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/jobs/abc"),
                         ("DELETE", "/api/jobs/abc"), ("GET", "/openapi.json"), ("GET", "/static/app.js")]:
        assert httpx.request(method, service.url + path).status_code == 401, path
    wrong = httpx.get(service.url + "/api/jobs", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    login_page = httpx.get(service.url + "/")
    assert login_page.status_code == 401 and 'name="token"' in login_page.text
    # the page: the token once in a form, then a same-site cookie
    with httpx.Client(base_url=service.url) as browser:
        assert browser.post("/api/login", data={"token": "wrong"}).status_code == 401
        assert browser.post("/api/login", data={"token": TOKEN}).status_code == 303
        assert browser.get("/").status_code == 200 and "Jobs" in browser.get("/").text
        assert browser.get("/api/jobs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/files/{name}"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


# -- jobs and their outputs ----------------------------------------------------------------------------------
def test_multilabel_job_equals_totalsegmentator(service, client, tiny, use_home, tmp_path):
    from totalseg import totalsegmentator

    options = {"fastest": True, "ml": True, "statistics": True}
    answer = service.submit(client, tiny, options)
    assert answer.status_code == 201 and answer.json()["state"] == "queued"
    seen: list = []
    job = service.wait(client, answer.json()["id"], seen=seen)
    assert job["state"] == "done" and job["error"] is None and job["progress"] == 1.0
    assert job["files"] == ["segmentation.nii.gz", "statistics.json"]
    running = [p for state, p in seen if state == "running"]
    assert any(0 < p < 1 for p in running) and running == sorted(running)  # progress moves, never back

    totalsegmentator(tiny, tmp_path / "ref.nii.gz", device="cpu", quiet=True, **options)
    for name, ref in [("segmentation.nii.gz", "ref.nii.gz"), ("statistics.json", "statistics.json")]:
        got = client.get(f"/api/jobs/{job['id']}/files/{name}")
        assert got.status_code == 200 and got.content == (tmp_path / ref).read_bytes(), name

    report = client.get(f"/api/jobs/{job['id']}/report", follow_redirects=True)
    assert report.status_code == 200 and "<title>input" in report.text and "data/labels.js" in report.text
    assert client.get(f"/api/jobs/{job['id']}/report/assets/viewer.js").status_code == 200
    assert client.get(f"/api/jobs/{job['id']}/report/../../../jobs.sqlite").status_code == 404
    assert client.get(f"/api/jobs/{job['id']}/files/..%2Fjobs.sqlite").status_code == 404


def test_per_class_job_zips_the_masks_of_totalsegmentator(service, client, tiny, use_home, tmp_path):
    from totalseg import totalsegmentator

    job = service.wait(client, service.submit(client, tiny, {"fastest": True}).json()["id"])
    assert job["state"] == "done" and job["files"] == ["segmentations.zip"]
    totalsegmentator(tiny, tmp_path / "ref", device="cpu", quiet=True, fastest=True)
    got = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job['id']}/files/segmentations.zip").content))
    masks = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert len(masks) > 100 and sorted(n.split("/")[1] for n in got.namelist()) == masks
    for name in masks:
        assert got.read(f"segmentations/{name}") == (tmp_path / "ref" / name).read_bytes(), name


def test_bad_options_are_422_with_one_line(service, client, tiny):
    before = len(client.get("/api/jobs").json())
    for options, word in [({"fast": True, "bogus": 1}, "bogus"), ({"device": "gpu"}, "device"),
                          ({"task": "no_such_task"}, "no_such_task"), ("[1, 2]", "JSON object"),
                          ("{not json", "JSON object"), ({"statistics": "/etc/x.json"}, "statistics")]:
        data = {"options": options if isinstance(options, str) else json.dumps(options)}
        answer = client.post("/api/jobs", files={"file": ("a.nii.gz", tiny.read_bytes())}, data=data)
        assert answer.status_code == 422, options
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and word in detail, detail
    assert client.post("/api/jobs", files={"file": ("notes.txt", b"x")}).status_code == 422
    assert len(client.get("/api/jobs").json()) == before
    assert not any((service.data / "incoming").iterdir())


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def test_hostile_archives_and_large_uploads_refused(service, client):
    before = len(client.get("/api/jobs").json())
    for member in ["../evil.dcm", "series/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm"]:
        answer = client.post("/api/jobs", files={"file": ("series.zip", _zip({"ok.dcm": b"1", member: b"2"}))})
        assert answer.status_code == 422 and member in answer.json()["detail"], member
    assert client.post("/api/jobs", files={"file": ("series.zip", b"not a zip")}).status_code == 422
    big = os.urandom(4_500_000)  # over --max-upload-mb 4
    answer = client.post("/api/jobs", files={"file": ("big.nii.gz", big)})
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]

    def chunks():  # no Content-Length: refused as the bytes arrive
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii.gz\"\r\n\r\n"
        for _ in range(45):
            yield bytes(100_000)

    chunked = client.post("/api/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert chunked.status_code == 413
    assert len(client.get("/api/jobs").json()) == before
    assert not any((service.data / "incoming").iterdir())
    assert httpx.get(service.url + "/api/health").status_code == 200


def test_server_paths_only_under_the_allowed_root(service, client, allowed, tiny):
    inside = allowed / "case.nii.gz"
    for path in [str(CT_SM), str(allowed / ".." / tiny.parent.name / "tiny.nii.gz"), "/etc/passwd"]:
        answer = client.post("/api/jobs", data={"path": path, "options": "{}"})
        assert answer.status_code == 403 and "--allow-root" in answer.json()["detail"], path
    answer = client.post("/api/jobs", data={"path": str(inside), "options": json.dumps({"fastest": True, "ml": True})})
    assert answer.status_code == 201
    job = service.wait(client, answer.json()["id"])
    assert job["state"] == "done" and job["origin"] == "path" and inside.is_file()  # copied, not moved


def test_corrupt_upload_fails_alone(service, client, tiny):
    corrupt = tiny.read_bytes()[: len(tiny.read_bytes()) // 2]
    bad = client.post("/api/jobs", files={"file": ("cut.nii.gz", corrupt)}, data={"options": '{"fastest": true}'})
    good = service.submit(client, tiny, {"fastest": True, "ml": True})
    failed = service.wait(client, bad.json()["id"])
    assert failed["state"] == "failed" and failed["files"] == []
    assert failed["error"] and "\n" not in failed["error"] and "Traceback" not in failed["error"]
    assert service.wait(client, good.json()["id"])["state"] == "done"


def test_cancel_running_and_queued_then_delete(service, client, tiny):
    ids = [service.submit(client, tiny, {"fastest": True, "ml": True}).json()["id"] for _ in range(3)]
    pid = _worker(client)["worker_pid"]
    service.wait(client, ids[0], states=("running",))
    assert client.delete(f"/api/jobs/{ids[0]}").json() == {"id": ids[0], "state": "cancelled"}
    assert client.delete(f"/api/jobs/{ids[1]}").json()["state"] == "cancelled"
    assert _worker(client)["worker_pid"] != pid  # the running job's worker was killed and replaced
    assert service.wait(client, ids[2])["state"] == "done"
    for job_id in ids[:2]:
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["files"] == []
    for job_id in ids:
        assert client.delete(f"/api/jobs/{job_id}").json()["state"] == "deleted"
        assert client.get(f"/api/jobs/{job_id}").status_code == 404
        assert not (service.data / "jobs" / job_id).exists()


def test_worker_killed_mid_job_runs_it_again_once(service, client, tiny):
    job_id = service.submit(client, tiny, {"fastest": True, "ml": True}).json()["id"]
    seen: list = []
    while not seen or seen[-1][1] < 0.15:  # it said "Predicting..."
        service.wait(client, job_id, states=("running",), seen=seen)
    os.kill(_worker(client)["worker_pid"], signal.SIGKILL)
    job = service.wait(client, job_id)
    assert job["state"] == "done" and job["attempts"] == 2 and job["files"] == ["segmentation.nii.gz"]
    assert _worker(client)["worker_alive"]
    log = (service.data / "jobs" / job_id / "log.txt").read_text()
    assert log.count("Predicting") == 2


def test_dicom_zip_to_dicom_seg_without_patient_data_in_logs(service, client, tmp_path):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(DICOM.iterdir()):
            ds = pydicom.dcmread(f)
            ds.PatientName, ds.PatientID = "Doe^Jane", "PID4711"
            pixels = ds.pixel_array[::4, ::4].copy()  # 128 x 128: a quick job
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelSpacing = [float(v) * 4 for v in ds.PixelSpacing]
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = pixels.tobytes()
            ds["PixelData"].VR = "OW"
            out = io.BytesIO()
            ds.save_as(out)
            z.writestr(f"series/{f.name}", out.getvalue())
    answer = client.post("/api/jobs", files={"file": ("Doe_Jane_PID4711.zip", buf.getvalue())},
                         data={"options": json.dumps({"fastest": True, "output_type": ["dicom_seg"]})})
    job = service.wait(client, answer.json()["id"])
    assert job["state"] == "done", job["error"]
    [name] = [n for n in job["files"] if n.endswith(".dcm")]
    seg = pydicom.dcmread(io.BytesIO(client.get(f"/api/jobs/{job['id']}/files/{name}").content))
    assert seg.Modality == "SEG" and str(seg.PatientName) == "Doe^Jane" and seg.Rows == 128
    logs = [service.log, service.data / "worker.log", service.data / "jobs" / job["id"] / "log.txt"]
    for log in logs:
        text = log.read_text()
        assert "Doe" not in text and "PID4711" not in text, log


# -- the service stopped, the disk full, many clients --------------------------------------------------------
def test_service_killed_loses_nothing(tmp_path, fake_home, tiny):
    service = Service(tmp_path / "data", fake_home).start()
    try:
        with service.client() as client:
            ids = [service.submit(client, tiny, {"fastest": True, "ml": True}).json()["id"] for _ in range(2)]
            service.wait(client, ids[0], states=("running",))
            worker = _worker(client)["worker_pid"]
        service.stop(kill=True)
        deadline = time.time() + 10
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(worker)  # the worker died with the service: no orphan runs the job
        (service.data / "incoming" / "half.part.nii.gz").write_bytes(b"half an upload")
        service.start()
        with service.client() as client:
            jobs = [service.wait(client, i) for i in ids]
        assert [j["state"] for j in jobs] == ["done", "done"] and jobs[0]["attempts"] == 2
        assert not any((service.data / "incoming").iterdir())
    finally:
        service.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (needs root; unmounted after)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(folder: Path) -> Path:
    """Fill the disk of ``folder`` (a file that takes every free byte)."""
    filler = folder / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
    except OSError:
        pass
    return filler


def test_full_data_folder_fails_the_job_and_the_service_answers(small_disk, fake_home, tiny, tmp_path):
    service = Service(small_disk / "data", fake_home, log=tmp_path / "service.log").start()
    try:
        with service.client() as client:
            job_id = service.submit(client, tiny, {"fastest": True}).json()["id"]
            service.wait(client, job_id, states=("running",))
            filler = _fill(small_disk)
            job = service.wait(client, job_id)
            assert job["state"] == "failed" and "space" in job["error"] and "\n" not in job["error"]
            assert client.get("/api/jobs").status_code == 200
            more = _fill(small_disk / "data")  # the failed job's partial outputs were removed: full again
            refused = service.submit(client, tiny, {"fastest": True, "ml": True})
            assert refused.status_code == 422 and "space" in refused.json()["detail"]
            filler.unlink()
            more.unlink(missing_ok=True)
            again = service.submit(client, tiny, {"fastest": True, "ml": True})
            assert service.wait(client, again.json()["id"])["state"] == "done"
    finally:
        service.stop()


@pytest.mark.slow
def test_twenty_concurrent_uploads_each_done_once(tmp_path, fake_home, tiny):
    service = Service(tmp_path / "data", fake_home).start()
    try:
        with service.client(timeout=120) as client:
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: service.submit(client, tiny, {"fastest": True, "ml": True}),
                                        range(20)))
            assert [a.status_code for a in answers] == [201] * 20
            ids = [a.json()["id"] for a in answers]
            assert len(set(ids)) == 20
            jobs = [service.wait(client, i, timeout=600) for i in ids]
            assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)
            assert sorted(j["id"] for j in client.get("/api/jobs").json()) == sorted(ids)
            first = client.get(f"/api/jobs/{ids[0]}/files/segmentation.nii.gz").content
            assert all(client.get(f"/api/jobs/{i}/files/segmentation.nii.gz").content == first for i in ids)
            for i in ids:
                assert (service.data / "jobs" / i / "log.txt").read_text().count("Predicting") == 1
    finally:
        service.stop()


def test_job_progress_moves_with_the_tiles(tmp_path, use_home, tiny, monkeypatch):
    """The worker hands its predictor a progress function for the job: the tiles of the model run move the
    job's progress between the stages' values (rising, stored at most every 1 %), and it is taken back after."""
    from totalseg import Predictor
    from totalseg.serve.jobs import JobStore
    from totalseg.serve.worker import run_job

    store = JobStore(tmp_path / "data")
    job_id = store.submit(tiny, {"ml": True, "fast": True})
    stored = []
    monkeypatch.setattr(store, "set_progress", lambda job, value: stored.append(value))
    with Predictor("cpu", progress_bars=False) as predictor:
        tiles_seen = []
        predictor.progress = lambda *call: tiles_seen.append(call)  # replaced by the worker for the job
        run_job(store, predictor.segment, store.claim(), predictor)
        assert predictor.progress is None and not tiles_seen
    assert store.get(job_id)["state"] == "done", store.get(job_id)
    assert stored == sorted(stored) and stored[-1] == 0.8
    between = [v for v in stored if 0.35 < v < 0.6]  # only tiles give values between "loaded" and "predicted"
    assert between and all(b - a >= 0.01 - 1e-9 for a, b in zip(between, between[1:]))
    store.close()


def test_ray_flags_of_job_options():
    from totalseg.serve.ray_jobs import batch_flags

    flags = batch_flags({"fastest": True, "ml": False, "roi_subset": ["liver", "spleen"], "task": "total",
                         "statistics_exclude_masks_at_border": False, "nr_thr_saving": 2})
    assert flags == ["--fastest", "--roi_subset", "liver", "spleen", "--task", "total", "--stats_include_incomplete",
                     "--nr_thr_saving", "2"]


@pytest.mark.slow
def test_ray_job_equals_totalsegmentator(tmp_path, fake_home, tiny, use_home):
    """--ray: the job runs through totalseg_batch --ray on a local Ray cluster (40 s and more to start it)."""
    from totalseg import totalsegmentator

    service = Service(tmp_path / "data", fake_home, "--ray").start()
    try:
        with service.client() as client:
            options = {"fastest": True, "ml": True, "statistics": True}
            job = service.wait(client, service.submit(client, tiny, options).json()["id"], timeout=600)
            assert job["state"] == "done", job["error"]
            totalsegmentator(tiny, tmp_path / "ref.nii.gz", device="cpu", quiet=True, **options)
            for name, ref in [("segmentation.nii.gz", "ref.nii.gz"), ("statistics.json", "statistics.json")]:
                assert client.get(f"/api/jobs/{job['id']}/files/{name}").content == (tmp_path / ref).read_bytes()
    finally:
        service.stop()
