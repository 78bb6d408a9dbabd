"""Ask the licence server whether a licence number is valid (only when a licence is being set).

``POST <server>/is_valid_license_number`` with ``{"license_number": KEY}`` answers
``{"status": "valid_license"}`` for a good one. Runs never contact the server: they check the stored
number's form offline (:func:`totalseg.config.require_license`).
"""
from __future__ import annotations

from totalseg.config import ACADEMIC_LICENSE_URL
from totalseg.errors import LicenseError, UserError
from totalseg.install.download import error_reason
from totalseg.install.source import Source


def validate_license(key: str, source: Source) -> None:
    """Return if the server accepts ``key``; raise a one-line error if it refuses or cannot be asked."""
    import requests

    url = f"{source.license_server}/is_valid_license_number"
    unstored = "nothing was stored"
    try:
        response = requests.post(url, json={"license_number": key}, timeout=(min(source.timeout, 15.0),
                                                                             min(source.timeout, 60.0)))
    except requests.exceptions.RequestException as e:
        raise UserError(f"could not reach the licence server {source.license_server} to check the licence "
                        f"({error_reason(e)}); {unstored}. Check the network or proxy, or store it unchecked "
                        "with -sv") from None
    with response:
        try:
            answer = response.json()
        except ValueError:
            answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        raise UserError(f"the licence server {source.license_server} gave no usable answer "
                        f"(HTTP {response.status_code}); {unstored}. Try again later, or store it unchecked with -sv")
    status = answer.get("status")
    if status != "valid_license":
        raise LicenseError(f"the licence server does not accept licence number {key} ({status}); {unstored}. "
                           f"Check it, or get an academic licence at {ACADEMIC_LICENSE_URL}")
