"""``totalseg_setup_manually``: create the weights home's config.json with a given installation id.

As the official tool, an id is only written when config.json does not hold one yet; an existing id is
kept (and said). The file is merged atomically under the config lock, so other keys (a licence number,
a weights mirror) stay. Nothing is ever sent anywhere: the usage-statistics keys are only written so
that the official tool reads the same file.
"""
from __future__ import annotations

import argparse
import sys

from totalseg.cli.common import run
from totalseg.errors import UserError

ID_PREFIX = "totalseg_"
ID_LENGTH = 17


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_setup_manually",
                                description="Create config.json in the weights home with a given totalseg id.")
    p.add_argument("-id", "--totalseg_id", required=True,
                   help=f"installation id: '{ID_PREFIX}' followed by 8 characters, e.g. totalseg_AB12CD34")
    return p


def check_id(totalseg_id: str) -> None:
    """The official form: starts with ``totalseg_`` and is 17 characters long."""
    if not totalseg_id.startswith(ID_PREFIX):
        raise UserError(f"totalseg_id '{totalseg_id}' must start with '{ID_PREFIX}'")
    if len(totalseg_id) != ID_LENGTH:
        raise UserError(f"totalseg_id '{totalseg_id}' has {len(totalseg_id)} characters; it must have exactly "
                        f"{ID_LENGTH} ('{ID_PREFIX}' + 8)")


def setup_config(totalseg_id: str) -> tuple[dict, bool]:
    """Write the id into config.json unless it holds one; returns the config and whether it was written."""
    from totalseg import config, home

    check_id(totalseg_id)
    current = config.read_config()
    if current.get("totalseg_id"):
        return current, False
    home.home_dir().mkdir(parents=True, exist_ok=True)
    # The official first-run keys; values already there (other than the id) are kept.
    defaults = {"send_usage_stats": True, "prediction_counter": 0}
    changes = {"totalseg_id": totalseg_id, **{k: v for k, v in defaults.items() if k not in current}}
    return config.update_config(changes), True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; config.json is unchanged")


def _run(args) -> int:
    from totalseg import home

    cfg, written = setup_config(args.totalseg_id)
    where = home.config_path()
    if written:
        print(f"Wrote totalseg_id {cfg['totalseg_id']} to {where}")
    else:
        print(f"{where} already has totalseg_id {cfg['totalseg_id']}; left unchanged (as the official tool)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
