"""The DICOM node of totalseg_serve against real DICOM programs: dcmtk's echoscu/storescu/storescp and Orthanc.

A fake job store stands in for the service's (it "completes" a job with a DICOM SEG that our writer made once
for this module), so these tests time the node, not the segmentation.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import REF
from totalseg.errors import UserError
from totalseg.serve.dicom_node import job_options, parse_dest, start_dicom_node

CT_DICOM = REF / "example_ct_dicom"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
PATIENT_NAME, PATIENT_ID = "Sentinel^Patient", "PID-SENTINEL-4711"
DCMTK = {name: Path("/usr/bin") / name for name in ("echoscu", "storescu", "storescp")}
ORTHANC = Path("/usr/sbin/Orthanc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (CI installs dcmtk and orthanc)")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict:
    """The example series as a PACS holds it: the shared copy is anonymised down to empty UIDs, so each file
    gets its SOP class/instance (from the file meta), one study and series UID, and a patient to look for."""
    folder = tmp_path_factory.mktemp("series")
    study, series_uid = generate_uid(), generate_uid()
    instances = []
    for path in sorted(CT_DICOM.glob("CT.*")):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
        instances.append(str(ds.SOPInstanceUID))
    assert len(instances) == 20
    return {"folder": folder, "study": study, "series": series_uid, "instances": sorted(instances),
            "files": sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def seg(series, fake_home, tmp_path_factory) -> Path:
    """A DICOM SEG of the series, made once by ``TotalSegmentator -ot dicom_seg --fastest`` (random weights)."""
    from weights_server import closed_port_url

    out = tmp_path_factory.mktemp("seg") / "seg.dcm"
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(fake_home), "TOTALSEG_WEIGHTS_URL": closed_port_url()}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    command = shutil.which("TotalSegmentator", path=str(Path(sys.executable).parent)) or "TotalSegmentator"
    # three classes keep the SEG small (2 MB; all 117 of the random networks make 50 MB to send)
    subprocess.run([command, "-i", str(series["folder"]), "-o", str(out), "-ot", "dicom_seg", "--fastest",
                    "-rs", "liver", "spleen", "kidney_left", "-d", "cpu", "-q"], env=env, check=True, timeout=300)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SEG_CLASS and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series"]
    assert len(ds.SegmentSequence) == 3
    return out


class FakeStore:
    """The job store's interface (``data``, ``submit``, ``get``, ``output_path``): a job runs once, then is done
    with ``seg`` as its output ``<job>_seg.dcm`` (or fails, with ``fail``)."""

    def __init__(self, data: Path, seg: Path, fail: bool = False):
        self.data, self.seg, self.fail = data, seg, fail
        self.submitted: list[dict] = []
        self.polls: dict[str, int] = {}

    def submit(self, input_path: Path, options: dict, origin: str = "upload") -> str:
        job = secrets.token_hex(8)
        target = self.data / "jobs" / job / "input"
        target.parent.mkdir(parents=True)
        shutil.move(str(input_path), target)  # as the service's store does: the input moves into the job
        self.submitted.append({"id": job, "input": target, "options": options, "origin": origin})
        return job

    def get(self, job_id: str) -> dict:
        self.polls[job_id] = self.polls.get(job_id, 0) + 1
        if self.polls[job_id] == 1:
            return {"id": job_id, "state": "running", "error": None, "files": []}
        if self.fail:
            return {"id": job_id, "state": "failed", "error": "the model ran out of memory", "files": []}
        name = f"{job_id}_seg.dcm"
        if not (self.data / "jobs" / job_id / name).exists():
            shutil.copyfile(self.seg, self.data / "jobs" / job_id / name)
        return {"id": job_id, "state": "done", "error": None, "files": [name, "statistics.json"]}

    def output_path(self, job_id: str, name: str) -> Path:
        return self.data / "jobs" / job_id / name


@pytest.fixture
def start_node(tmp_path):
    """Start nodes on free ports (stopped at the end); each records its notices in ``node.said``."""
    nodes = []

    def start(store, **kw):
        said: list[str] = []
        args = {"port": 0, "aet": "TOTALSEG", "dest": None, "options": {"fast": True}, "quiet_seconds": 1.0,
                "allowed_aets": None, "host": "127.0.0.1", **kw}
        node = start_dicom_node(store, notice=said.append, **args)
        node.said = said
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def storescp(tmp_path):
    """dcmtk's storescp as the destination, on a free port: ``start(port=None) -> (port, folder)``."""
    _need(DCMTK["storescp"])
    procs = []

    def start(port: int | None = None):
        port = port or _free_port()
        folder = tmp_path / f"received_{port}"
        (folder / "done").mkdir(parents=True)
        # -xcr: a marker per file once it is complete (storescp writes under the final name as data comes)
        proc = subprocess.Popen([str(DCMTK["storescp"]), "-aet", "DEST", "-od", str(folder), "-xcr",
                                 f"touch {folder}/done/#f", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        _wait_for(lambda: _echo("DEST", port) == 0, 10, "storescp to listen")
        return port, folder

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _echo(called: str, port: int, calling: str = "ECHOSCU") -> int:
    return subprocess.run([str(DCMTK["echoscu"]), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


def _storescu(port: int, files, calling: str = "STORESCU", called: str = "TOTALSEG"):
    # -xv: the series is JPEG 2000 lossless; dcmtk cannot decode it to offer an uncompressed syntax
    command = [str(DCMTK["storescu"]), "-xv", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run([*command, *map(str, files)], capture_output=True, text=True, timeout=60)


def _received(folder: Path) -> list[pydicom.Dataset]:
    """The files storescp received completely."""
    return [pydicom.dcmread(folder / p.name) for p in sorted((folder / "done").iterdir())]


def _assert_no_patient_data(said: list[str], series: dict) -> None:
    text = "\n".join(said)
    for secret in (PATIENT_NAME, PATIENT_ID, "Sentinel", series["series"], series["study"]):
        assert secret not in text


def test_dcmtk_series_in_seg_out(series, seg, tmp_path, start_node, storescp):
    """echoscu answered; storescu's series becomes one job with the options plus DICOM SEG; the SEG reaches
    storescp; the log names no patient."""
    _need(*DCMTK.values())
    dest_port, received = storescp()
    store = FakeStore(tmp_path / "data", seg)
    node = start_node(store, dest=f"DEST@127.0.0.1:{dest_port}", allowed_aets=["STORESCU", "ECHOSCU"])
    assert _echo("TOTALSEG", node.port) == 0
    sent = _storescu(node.port, series["files"])
    assert sent.returncode == 0, sent.stderr
    got = _wait_for(lambda: _received(received), 30, "the SEG at storescp")
    assert len(got) == 1 and got[0].SOPClassUID == SEG_CLASS
    assert got[0].SOPInstanceUID == pydicom.dcmread(seg).SOPInstanceUID
    assert got[0].PixelData == pydicom.dcmread(seg).PixelData
    assert got[0].ReferencedSeriesSequence[0].SeriesInstanceUID == series["series"]
    assert len(store.submitted) == 1
    job = store.submitted[0]
    assert job["options"] == {"fast": True, "output_type": ["dicom_seg"]} and job["origin"] == "dicom"
    stored = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in job["input"].iterdir())
    assert stored == series["instances"]
    assert pydicom.dcmread(next(job["input"].iterdir())).pixel_array.shape == (512, 512)
    time.sleep(1.5)  # quiet again: nothing more is submitted or sent
    assert len(store.submitted) == 1 and len(_received(received)) == 1
    _assert_no_patient_data(node.said, series)


def test_refused_calling_aet_called_aet_and_sop_class(series, seg, tmp_path, start_node):
    """Only the allowed calling AE titles, only our called AE title, only CT/MR images get in."""
    _need(*DCMTK.values())
    store = FakeStore(tmp_path / "data", seg)
    node = start_node(store, allowed_aets=["STORESCU"])
    assert _echo("TOTALSEG", node.port, calling="STORESCU") == 0
    assert _echo("TOTALSEG", node.port, calling="INTRUDER") != 0
    assert _echo("OTHER", node.port, calling="STORESCU") != 0
    refused = _storescu(node.port, series["files"][:2], calling="INTRUDER")
    assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()
    assert _storescu(node.port, [seg]).returncode != 0  # a SEG is not an image the node segments
    time.sleep(1.5)
    assert not any((tmp_path / "data" / "dicom" / "incoming").iterdir()) and not store.submitted


def test_failed_job_sends_nothing(series, seg, tmp_path, start_node, storescp):
    _need(*DCMTK.values())
    dest_port, received = storescp()
    store = FakeStore(tmp_path / "data", seg, fail=True)
    node = start_node(store, dest=f"DEST@127.0.0.1:{dest_port}", quiet_seconds=0.5)
    assert _storescu(node.port, series["files"]).returncode == 0
    _wait_for(lambda: any("ran out of memory" in s for s in node.said), 20, "the job's failure noted")
    time.sleep(0.5)
    assert not _received(received) and len(store.submitted) == 1


def _sends(data: Path) -> list[dict]:
    with sqlite3.connect(data / "dicom_node.sqlite") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM sends")]


def test_failed_send_backs_off_and_is_retried_after_restart(series, seg, tmp_path, start_node, storescp):
    """The destination is down: the send is retried with a growing wait; after a restart of the node (the
    destination now up) the SEG is sent from the database, and the series is not segmented again."""
    _need(*DCMTK.values())
    data, dest_port = tmp_path / "data", _free_port()
    store = FakeStore(data, seg)
    node = start_node(store, dest=f"DEST@127.0.0.1:{dest_port}", quiet_seconds=0.5)
    assert _storescu(node.port, series["files"]).returncode == 0
    first = _wait_for(lambda: [s for s in _sends(data) if s["attempts"] >= 1], 20, "a failed send")[0]
    second = _wait_for(lambda: [s for s in _sends(data) if s["attempts"] >= 2], 10, "a second try")[0]
    assert first["state"] == second["state"] == "pending" and "refused" in second["error"]
    assert second["next_try"] - time.time() > 2.5  # the wait doubled (2 s, then 4 s)
    node.stop()
    dest_port, received = storescp(dest_port)
    node = start_node(store, dest=f"DEST@127.0.0.1:{dest_port}", quiet_seconds=0.5)
    got = _wait_for(lambda: _received(received), 20, "the SEG after the restart")
    assert [g.SOPClassUID for g in got] == [SEG_CLASS]
    _wait_for(lambda: [s["state"] for s in _sends(data)] == ["sent"], 10, "the send noted")
    assert len(store.submitted) == 1


def test_series_received_before_a_restart_is_submitted_after_it(series, seg, tmp_path, start_node):
    """A series still arriving when the node stops is kept; the next start submits it once it is quiet."""
    _need(*DCMTK.values())
    store = FakeStore(tmp_path / "data", seg)
    node = start_node(store, quiet_seconds=3600)
    assert _storescu(node.port, series["files"][:12]).returncode == 0
    node.stop()
    node = start_node(store, quiet_seconds=0.5)
    assert _storescu(node.port, series["files"][12:]).returncode == 0
    _wait_for(lambda: store.submitted, 20, "the series submitted")
    time.sleep(1)
    assert len(store.submitted) == 1 and len(list(store.submitted[0]["input"].iterdir())) == 20


def test_dest_and_options_checked_at_start(tmp_path, seg):
    store = FakeStore(tmp_path / "data", seg)
    assert parse_dest("PACS@10.0.0.5:104") == ("PACS", "10.0.0.5", 104)
    assert parse_dest("PACS@[::1]:11112") == ("PACS", "::1", 11112)
    for bad in ("PACS@host", "10.0.0.5:104", "PACS@host:0", "A_TITLE_LONGER_THAN_16@h:104"):
        with pytest.raises(UserError, match="--dicom-dest"):
            parse_dest(bad)
    assert job_options({"fast": True}) == {"fast": True, "output_type": ["dicom_seg"]}
    assert job_options({"output_type": "nifti"})["output_type"] == ["nifti", "dicom_seg"]
    assert job_options({"output_type": ["dicom_rtstruct"]})["output_type"] == ["dicom_rtstruct"]
    assert job_options({"output_type": "nifti,dicom_seg"})["output_type"] == ["nifti", "dicom_seg"]
    with pytest.raises(UserError):
        start_dicom_node(store, port=0, aet="TOTALSEG", dest=None, options={"no_such_option": 1},
                         quiet_seconds=1, allowed_aets=None)
    with pytest.raises(UserError, match="--dicom-aet"):
        start_dicom_node(store, port=0, aet="", dest=None, options={}, quiet_seconds=1, allowed_aets=None)


# -- Orthanc, a real PACS ------------------------------------------------------------------------------------
@pytest.fixture
def orthanc(tmp_path, request):
    """``start(node_port)``: Orthanc on free loopback ports, our node (on ``node_port``) its modality."""
    _need(ORTHANC)
    import httpx

    def start(node_port: int) -> dict:
        http_port, dicom_port = _free_port(), _free_port()
        config = {"Name": "totalseg-test", "StorageDirectory": str(tmp_path / "orthanc"),
                  "IndexDirectory": str(tmp_path / "orthanc"), "HttpPort": http_port, "DicomPort": dicom_port,
                  "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [],
                  "DicomModalities": {"totalseg": ["TOTALSEG", "127.0.0.1", node_port]}}
        path = tmp_path / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(tmp_path / "orthanc.log", "wb")
        proc = subprocess.Popen([str(ORTHANC), str(path)], stdout=log, stderr=log)
        request.addfinalizer(lambda: (proc.terminate(), proc.wait(timeout=20), log.close()))
        client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
        request.addfinalizer(client.close)

        def up():
            try:
                return client.get("/system").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "orthanc.log").read_text(errors="replace")[-2000:]
                return False

        _wait_for(up, 30, "Orthanc to answer")
        return {"client": client, "dicom_port": dicom_port}

    return start


def test_orthanc_sends_series_and_gets_seg(series, seg, tmp_path, start_node, orthanc):
    """The series goes from Orthanc to our node; the SEG arrives in Orthanc, read back through its REST API."""
    store = FakeStore(tmp_path / "data", seg)
    node_port = _free_port()
    pacs = orthanc(node_port)
    node = start_node(store, port=node_port, allowed_aets=["ORTHANC"],
                      dest=f"ORTHANC@127.0.0.1:{pacs['dicom_port']}")
    client = pacs["client"]
    uploaded = [client.post("/instances", content=p.read_bytes()).json() for p in series["files"]]
    assert {u["Status"] for u in uploaded} == {"Success"} and len({u["ParentSeries"] for u in uploaded}) == 1
    assert client.post("/modalities/totalseg/echo", json={}).status_code == 200
    moved = client.post("/modalities/totalseg/store", json={"Resources": [uploaded[0]["ParentSeries"]],
                                                             "Synchronous": True})
    assert moved.status_code == 200, moved.text

    def seg_in_orthanc():
        for instance in client.get("/instances").json():
            tags = client.get(f"/instances/{instance}/simplified-tags").json()
            if tags.get("SOPClassUID") == SEG_CLASS:
                return tags
        return None

    tags = _wait_for(seg_in_orthanc, 30, "the SEG in Orthanc")
    assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == series["series"]
    assert tags["StudyInstanceUID"] == series["study"]
    assert len(client.get("/instances").json()) == 21
    assert len(store.submitted) == 1 and len(list(store.submitted[0]["input"].iterdir())) == 20
    _assert_no_patient_data(node.said, series)


# -- the real service ----------------------------------------------------------------------------------------
def test_totalseg_serve_end_to_end(series, seg, tmp_path, storescp, fake_home, request):
    """``totalseg_serve --dicom-port``: storescu's series is segmented by the service's worker; its SEG (the same
    as ``TotalSegmentator`` writes with the same options) and RTSTRUCT arrive at storescp."""
    _need(*DCMTK.values())
    import httpx
    from weights_server import closed_port_url

    dest_port, received = storescp()
    http_port, dicom_port = _free_port(), _free_port()
    options = {"fastest": True, "roi_subset": ["liver", "spleen", "kidney_left"],
               "output_type": ["dicom_seg", "dicom_rtstruct"]}
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(fake_home), "TOTALSEG_WEIGHTS_URL": closed_port_url()}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    command = shutil.which("totalseg_serve", path=str(Path(sys.executable).parent)) or "totalseg_serve"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([command, "--port", str(http_port), "--data", str(tmp_path / "service"), "-d", "cpu",
                             "--dicom-port", str(dicom_port), "--dicom-aet", "TOTALSEG",
                             "--dicom-dest", f"DEST@127.0.0.1:{dest_port}", "--dicom-options", json.dumps(options),
                             "--dicom-quiet-seconds", "1", "--dicom-allowed-aets", "STORESCU"],
                            env=env, stdout=log, stderr=log)
    request.addfinalizer(lambda: (proc.terminate(), proc.wait(timeout=30), log.close()))
    said = lambda: (tmp_path / "serve.log").read_text(errors="replace")  # noqa: E731

    def listening():
        assert proc.poll() is None, said()[-3000:]
        return _echo("TOTALSEG", dicom_port, calling="STORESCU") == 0

    _wait_for(listening, 60, "the service's DICOM node")
    assert _echo("TOTALSEG", dicom_port, calling="INTRUDER") != 0
    assert _storescu(dicom_port, series["files"]).returncode == 0
    _wait_for(lambda: len(_received(received)) == 2, 180, "the service's SEG and RTSTRUCT at storescp")
    got = _received(received)
    got_seg, = [g for g in got if g.SOPClassUID == SEG_CLASS]
    rtstruct, = [g for g in got if g.SOPClassUID == RTSTRUCT_CLASS]
    made = pydicom.dcmread(seg)
    assert got_seg.PixelData == made.PixelData and got_seg.NumberOfFrames == made.NumberOfFrames
    labels = [s.SegmentLabel for s in made.SegmentSequence]
    assert [s.SegmentLabel for s in got_seg.SegmentSequence] == labels
    assert got_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series"]
    assert sorted(r.ROIName for r in rtstruct.StructureSetROISequence) == sorted(labels)
    assert rtstruct.StudyInstanceUID == series["study"]
    jobs = httpx.get(f"http://127.0.0.1:{http_port}/api/jobs", timeout=30).json()
    jobs = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
    assert [(j["state"], j["origin"]) for j in jobs] == [("done", "dicom")]
    for secret in (PATIENT_NAME, PATIENT_ID, series["series"]):
        assert secret not in said()
