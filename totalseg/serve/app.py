"""The REST API and the web page of ``totalseg_serve`` (FastAPI), and ``serve``, which runs them with uvicorn.

The app only stores uploads and job changes; the jobs run in the worker process (``totalseg.serve.worker``).
"""

import json
import secrets
import sqlite3
import threading
import shutil
import zipfile
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Callable

from totalseg.errors import UserError
from totalseg.serve.jobs import JobStore, UnknownJob

STATIC = Path(__file__).parent / "static"
COOKIE = "totalseg_token"
SUFFIXES = (".nii.gz", ".nii", ".zip")
CHUNK = 1 << 20


class TooLarge(Exception):
    """The request body passed the upload limit."""


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413 (by its Content-Length
    before anything is read, else as soon as the bytes received pass it)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        received, refused = 0, False

        async def limited():
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                refused = True
                raise TooLarge  # the framework may turn it into its own error response: replaced below
            return message

        async def answer(message):
            if not refused:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)

        try:
            await self.app(scope, limited, answer)
        except TooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"upload larger than the limit of {self.limit / 2**20:g} MB "
                                     "(totalseg_serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def check_archive(path: Path) -> None:
    """Refuse a zip with a member that would land outside its folder (absolute path, drive or ``..``)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        raise UserError("the upload is not a readable zip file; send a NIfTI file or a zip of a DICOM series") from None
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise UserError(f"archive member {name!r} has an absolute path or '..'; such archives are refused")


def upload_suffix(filename: str | None) -> str:
    name = (filename or "").lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UserError("send a NIfTI file (.nii, .nii.gz) or a zip of a DICOM series (.zip)")


def server_path(path: str, root: Path | None) -> Path:
    """A path on the server that a job may read: only under ``root`` (--allow-root)."""
    if root is None:
        raise PermissionError("jobs on server paths are off; start totalseg_serve with --allow-root DIR")
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise PermissionError(f"paths outside {root} are not allowed (--allow-root)")
    if not resolved.exists():
        raise UserError(f"{path} does not exist on the server")
    return resolved


def _authorized(request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.get("authorization", "")
    given = given[7:] if given.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
    return secrets.compare_digest(given.encode(), token.encode())


def create_app(config: dict, store: JobStore, worker, say: Callable[[str], None] = print):
    """The FastAPI app over ``store``; ``worker``: the ``WorkerProcess`` (restarted to cancel a running job)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    from totalseg import __version__

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="totalseg_serve", version=__version__, lifespan=lifespan,
                  description="TotalSegmentator as a service: submit a job, follow it, download its outputs.")
    _add_error_answers(app)
    _add_access(app, config.get("token"))
    _add_job_routes(app, config, store, worker, say)
    _add_report_routes(app, store)

    @app.get("/api/service")
    def service():
        """The worker's state (for monitoring and tests)."""
        return {"version": __version__, "worker_pid": worker.pid, "worker_alive": worker.alive(),
                "worker_restarts": worker.restarts, "device": config.get("device"), "engine": config.get("engine")}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_error_answers(app) -> None:
    """A user's mistake: 422 (an unknown job: 404), a refused path: 403, a database that cannot be written: 503;
    each with a one-line ``detail``."""
    from fastapi.responses import JSONResponse

    @app.exception_handler(UserError)
    async def user_error(request, e: UserError):
        return JSONResponse({"detail": str(e)}, status_code=404 if isinstance(e, UnknownJob) else 422)

    @app.exception_handler(sqlite3.OperationalError)
    async def database_error(request, e: sqlite3.OperationalError):
        return JSONResponse({"detail": f"the job database cannot be used now ({e}); is the data folder full?"},
                            status_code=503)

    @app.exception_handler(PermissionError)
    async def forbidden(request, e: PermissionError):
        return JSONResponse({"detail": str(e)}, status_code=403)


def _add_access(app, token: str | None) -> None:
    """The token on every call but the health check (a header, or the page's cookie from the login form)."""
    from fastapi import Form, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        open_paths = ("/api/health", "/api/login", "/static/style.css")
        if request.url.path in open_paths or _authorized(request, token):
            return await call_next(request)
        if request.url.path == "/":
            return HTMLResponse((STATIC / "login.html").read_text(), status_code=401)
        return JSONResponse({"detail": "missing or wrong token; send Authorization: Bearer <token>"}, status_code=401)

    @app.get("/api/health")
    def health():
        return {"status": "ok"}

    @app.post("/api/login", include_in_schema=False)
    def login(token_field: str = Form(..., alias="token")):
        if token is None or not secrets.compare_digest(token_field.encode(), token.encode()):
            return HTMLResponse((STATIC / "login.html").read_text(), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")  # not sent by other sites' pages
        return response


def _add_job_routes(app, config: dict, store: JobStore, worker, say: Callable[[str], None]) -> None:
    from fastapi import File, Form, UploadFile
    from fastapi.responses import FileResponse

    from totalseg.serve.worker import check_job_options

    @app.get("/api/jobs")
    def list_jobs():
        return store.list()

    @app.post("/api/jobs", status_code=201)
    def submit(file: UploadFile | None = File(None), options: str = Form("{}"), path: str | None = Form(None)):
        """Submit a job: ``file`` (NIfTI or DICOM zip) or ``path`` (on the server, under --allow-root), and
        ``options`` (a JSON object of totalsegmentator() keyword options)."""
        try:
            opts = json.loads(options)
        except json.JSONDecodeError:
            raise UserError('options must be a JSON object, e.g. {"fast": true, "ml": true}') from None
        check_job_options(opts)
        if (file is None) == (path is None):
            raise UserError("send either a file or a server path")
        if path is not None:
            job_id = store.submit(server_path(path, config.get("allow_root")), opts, origin="path")
        else:
            job_id = store.submit(_receive(file, store, config["max_upload"]), opts, origin="upload")
        say(f"job {job_id} queued")
        return {"id": job_id, "state": "queued"}

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str):
        return store.get(job_id)

    @app.get("/api/jobs/{job_id}/files/{name}")
    def download(job_id: str, name: str):
        return FileResponse(store.output_path(job_id, name), filename=name)

    @app.delete("/api/jobs/{job_id}")
    def delete(job_id: str):
        """Cancel a queued or running job; remove a finished one with its files."""
        state = store.cancel(job_id)
        if state == "running":
            worker.restart()
            say(f"job {job_id} cancelled; worker restarted")
            return {"id": job_id, "state": "cancelled"}
        if state == "queued":
            return {"id": job_id, "state": "cancelled"}
        store.delete(job_id)
        return {"id": job_id, "state": "deleted"}


def _add_report_routes(app, store: JobStore) -> None:
    from fastapi.responses import FileResponse, RedirectResponse

    from totalseg.serve.worker import write_report

    reports = threading.Lock()  # one report written at a time (a page asks for many files at once)

    @app.get("/api/jobs/{job_id}/report")
    def report(job_id: str):
        store.get(job_id)
        return RedirectResponse(f"/api/jobs/{job_id}/report/", status_code=307)

    @app.get("/api/jobs/{job_id}/report/{path:path}")
    def report_file(job_id: str, path: str):
        """The job's case report, written on the first request."""
        folder = store.report_dir(job_id).resolve()
        target = (folder / (path or "index.html")).resolve()
        if not target.is_relative_to(folder):
            raise UnknownJob(f"job {job_id} has no report file {path}")
        if not (folder / "index.html").is_file():
            job = store.get(job_id)
            if job["state"] != "done":
                raise UnknownJob(f"job {job_id} is {job['state']}; a report comes with a done job")
            with reports:
                if not (folder / "index.html").is_file() and not write_report(store, job_id):
                    raise UnknownJob(f"job {job_id} wrote DICOM outputs only; its report needs a NIfTI output")
        if not target.is_file():
            raise UnknownJob(f"job {job_id} has no report file {path}")
        return FileResponse(target)


def _receive(upload, store: JobStore, limit: int) -> Path:
    """Copy an upload to a temporary name in the data folder; the caller renames it into a job."""
    suffix = upload_suffix(upload.filename)
    part = store.new_upload(suffix)
    size = 0
    try:
        with open(part, "wb") as out:
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise UserError(f"upload larger than the limit of {limit / 2**20:g} MB (--max-upload-mb)")
                out.write(chunk)
        if size == 0:
            raise UserError("the upload is empty")
        if suffix == ".zip":
            check_archive(part)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise UserError(f"cannot store the upload: {e.strerror or e}; free space in the data folder") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def serve(config: dict, dicom: dict | None, *, host: str, port: int, quiet: bool = False) -> None:
    """Run the service until interrupted: jobs recovered, the worker started, the API on ``host:port``."""
    import uvicorn

    from totalseg.notice import notice_printer
    from totalseg.serve.worker import WorkerProcess

    say = notice_printer()
    store = JobStore(config["data"])
    store.clean_up()
    again = store.recover()
    if again:
        say(f"jobs queued again after a stop: {', '.join(again)}")
    worker = WorkerProcess(store, config["device"], config["engine"], config.get("threads"), config.get("ray"), say)
    node = _start_dicom(store, dicom) if dicom else None
    app = BodyLimit(create_app(config, store, worker, say), config["max_upload"])
    say(f"totalseg_serve: http://{host}:{port}/ (data in {store.data})")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet)
    finally:
        if node is not None:
            node.stop()


def _start_dicom(store: JobStore, settings: dict):
    try:
        from totalseg.serve.dicom_node import start_dicom_node
    except ImportError:
        raise UserError("the DICOM node is not available in this installation; leave out --dicom-port") from None
    return start_dicom_node(store, **settings)
