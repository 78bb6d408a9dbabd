"""The container image (Dockerfile, docker/build_base.sh, docker/build.sh): opt-in, `pytest -m container`.

Needs root, Debian's docker.io and debootstrap (`apt-get install -y docker.io debootstrap`) and a few minutes:
it starts `dockerd` if none answers, builds the Debian base image and the CPU image (Docker's cache makes a
rebuild quick), runs the seed's command line in the container on example_ct_sm with a copy of the
random-weights home mounted as the home volume, and checks that
- the masks equal those of the same command run outside the container, voxel for voxel (same affine too);
- the container runs as a non-root user (the image's default user; the outputs belong to it);
- it writes only into the mounted folders: its own filesystem is unchanged (`docker diff` is empty), the
  input folder gains only `segmentations/`, and the input file is untouched;
- without weights and without a network it stops with the usual one-line error;
and prints the image size and the build and run times.
TOTALSEG_TEST_IMAGE names the image (default totalseg:cpu); TOTALSEG_TEST_SKIP_BUILD=1 uses it as it is.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REF, _copy_home

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("TOTALSEG_TEST_IMAGE", "totalseg:cpu")
CT = REF / "example_ct_sm.nii.gz"
HOME_IN_IMAGE = "/home/totalseg/.totalsegmentator"
ARGS = ["--fast", "-d", "cpu"]  # with the seed's `-i /tmp/ct.nii.gz -o /tmp/segmentations`


def _docker(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _daemon_answers() -> bool:
    try:
        return _docker("info", check=False, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_dockerd(log: Path) -> None:
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        pytest.skip("no Docker engine here (apt-get install -y docker.io)")
    if os.geteuid() != 0:
        pytest.skip("no Docker daemon answers, and starting dockerd needs root")
    with open(log, "ab") as f:
        subprocess.Popen(["dockerd"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(120):
        if _daemon_answers():
            return
        time.sleep(0.5)
    pytest.fail("dockerd did not start:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    if not _daemon_answers():
        _start_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    if os.environ.get("TOTALSEG_TEST_SKIP_BUILD") != "1":
        if shutil.which("debootstrap") is None and _docker("image", "inspect", "totalseg-base:bookworm",
                                                           check=False).returncode != 0:
            pytest.skip("building the base image needs debootstrap (apt-get install -y debootstrap)")
        start = time.monotonic()
        r = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), IMAGE], cwd=ROOT, capture_output=True,
                           text=True, timeout=3600)
        assert r.returncode == 0, f"docker/build.sh failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        print(f"\nbuild (base + image): {time.monotonic() - start:.0f} s")
    size = int(_docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    print(f"image {IMAGE}: {size / 1e6:.0f} MB")
    return IMAGE


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _give_to_image_user(*paths: Path) -> list[str]:
    """The image's user (uid 1000) must write the mounted folders; as root we hand them over, otherwise the
    container runs as the caller (`--user uid:gid`, non-root all the same)."""
    if os.geteuid() != 0:
        return ["--user", f"{os.getuid()}:{os.getgid()}"]
    for top in paths:
        for p in [top, *top.rglob("*")]:
            os.chown(p, 1000, 1000, follow_symlinks=False)
    return []


def _compare_masks(ours: Path, theirs: Path) -> None:
    import nibabel as nib

    names = sorted(p.name for p in ours.iterdir())
    assert names == sorted(p.name for p in theirs.iterdir())
    assert len(names) > 100  # the total task's masks
    for name in names:
        a, b = nib.load(ours / name), nib.load(theirs / name)
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(a.affine, b.affine, err_msg=name)
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), f"{name}: voxels differ"


def test_container_matches_host_run(image, tmp_path):
    # Outside the container: the checkout's code with this interpreter, on its own copy of the home.
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    shutil.copy(CT, host_dir / "ct.nii.gz")
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(_copy_home(tmp_path / "host_home")),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "totalseg.cli.totalsegmentator", "-i", str(host_dir / "ct.nii.gz"),
                        "-o", str(host_dir / "segmentations"), *ARGS], capture_output=True, text=True, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr
    host_s = time.monotonic() - start

    # In the container: the seed's command line, one folder mounted as /tmp, the home as its volume, no network.
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(CT, data / "ct.nii.gz")
    ct_sha = _sha(data / "ct.nii.gz")
    home = _copy_home(tmp_path / "home")
    user = _give_to_image_user(data, home)
    name = f"totalseg-test-{os.getpid()}-{time.monotonic_ns()}"
    start = time.monotonic()
    r = _docker("run", "--name", name, "--network", "none", *user, "-v", f"{data}:/tmp",
                "-v", f"{home}:{HOME_IN_IMAGE}", image,
                "TotalSegmentator", "-i", "/tmp/ct.nii.gz", "-o", "/tmp/segmentations", *ARGS,
                check=False, timeout=1800)
    container_s = time.monotonic() - start
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        # Nothing written into the container's own filesystem (only the mounted folders).
        diff = _docker("diff", name).stdout.strip()
        assert diff == "", f"the container wrote outside its mounts:\n{diff}"
    finally:
        _docker("rm", "-f", name, check=False)
    print(f"\nTotalSegmentator {' '.join(ARGS)} on example_ct_sm: host {host_s:.0f} s, container {container_s:.0f} s")

    assert sorted(p.name for p in data.iterdir()) == ["ct.nii.gz", "segmentations"]
    assert _sha(data / "ct.nii.gz") == ct_sha
    out = data / "segmentations"
    owners = {p.stat().st_uid for p in [out, *out.iterdir()]}
    expected_uid = os.getuid() if user else 1000
    assert owners == {expected_uid} and 0 not in owners

    _compare_masks(out, host_dir / "segmentations")


def test_container_user_and_entry_points(image):
    uid = _docker("run", "--rm", "--network", "none", image, "id", "-u").stdout.strip()
    assert uid != "0" and uid == "1000"
    env = _docker("run", "--rm", "--network", "none", image, "sh", "-c", "echo $TOTALSEG_HOME_DIR").stdout.strip()
    assert env == HOME_IN_IMAGE
    # Options alone are TotalSegmentator's; the other commands are on PATH.
    r = _docker("run", "--rm", "--network", "none", image, "--list-tasks")
    assert "total" in r.stdout.split()
    _docker("run", "--rm", "--network", "none", image, "totalseg_info", "--help")


def test_container_without_weights_offline(image, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(CT, data / "ct.nii.gz")
    user = _give_to_image_user(data)
    r = _docker("run", "--rm", "--network", "none", *user, "-e", "TOTALSEG_DOWNLOAD_RETRIES=1",
                "-v", f"{data}:/tmp", image, "TotalSegmentator", "-i", "/tmp/ct.nii.gz", "-o", "/tmp/segmentations",
                *ARGS, check=False, timeout=600)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(lines) == 1 and "cannot download the weights" in lines[0], r.stderr
    assert not (data / "segmentations").exists()
