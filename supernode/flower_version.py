"""The one Flower release series whose internals this package was written against."""

from __future__ import annotations

SUPPORTED = "1.39."


class UnsupportedFlower(SystemExit):
    """Exits with a one-line reason (SystemExit prints it and exits 1)."""


def check(component: str) -> None:
    from flwr.supercore.version import package_version

    if not package_version.startswith(SUPPORTED):
        raise UnsupportedFlower(
            f"{component}: built on Flower {SUPPORTED}x internals, found flwr {package_version}; "
            f"install flwr>=1.39,<1.40 or run with federation.warm_clientapps=false")
