"""``flbackdoor-tls``: certificates and SuperNode keys for a federation outside loopback.

    flbackdoor-tls make certs --san 10.0.0.5 --san server.lan --node benign-0 --node malicious-1
    flbackdoor-tls node-key keys/benign-0                 # on a client machine: its own key pair
    flbackdoor-tls register 127.0.0.1:9093 --ca certs/public/ca.crt certs/public/nodes/*.pub

``make`` writes one folder per holder (:mod:`launcher.federation.tls`): ``superlink/`` (the only
place server.key is), ``nodes/<name>/`` (one SuperNode's key and ca.crt), ``public/`` (ca.crt and
the public keys).

``register`` names each node after its key file (``benign-0.pub`` -> ``benign-0``); a key already
registered counts as done, so it can run on every start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher.federation.submit import CONNECTION, flwr_bin, flwr_env, write_flwr_home
from launcher.federation.tls import (
    ServerCerts,
    _write,
    node_dir,
    node_private_key,
    public_key,
    write_node_key,
    write_server_certs,
)


class RegistrationFailed(RuntimeError):
    """The SuperLink did not accept a SuperNode's public key."""


def make(folder: Path, sans: list[str], nodes: list[str], keep_existing: bool = False,
         keep_ca_key: bool = True, owner: str = "") -> list[str]:
    """CA + server certificate (unless ``keep_existing`` and they exist) and a key pair per node
    name, each node's in its own ``folder/nodes/<name>/`` with a copy of ``ca.crt``, its public
    key also in ``folder/public/nodes/``; returns what it wrote. ``owner`` (``uid:gid``): hand
    every file and folder to that user (compose runs this step as root so that it can write the
    per-holder volumes, then gives them to ``FLBACKDOOR_USER``)."""
    written = []
    server = ServerCerts.in_folder(folder)
    if not (keep_existing and server.cert.exists() and server.key.exists() and server.ca.exists()):
        write_server_certs(folder, sans)
        if not keep_ca_key:  # one-host setups (compose) never sign another certificate
            (folder / "ca.key").unlink()
        written += [str(server.ca), str(server.cert), str(server.key)]
    ca = server.ca.read_bytes()
    for name in nodes:
        key = node_private_key(folder, name)
        pub = key.with_name(name + ".pub")
        if not (keep_existing and key.exists() and pub.exists()):
            write_node_key(key)
            written.append(str(pub))
        _write(node_dir(folder, name) / "ca.crt", ca)  # the CA of today's server certificate
        _write(public_key(folder, name), pub.read_bytes())
    if owner:
        uid, gid = (int(v) for v in owner.split(":"))
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, uid, gid)
    return written


def register(address: str, ca: str, public_keys: list[Path], attempts: int = 30,
             wait: float = 2.0) -> None:
    """Register each key with the SuperLink's Control API at ``address`` (TLS, ``ca``)."""
    with tempfile.TemporaryDirectory(prefix="flbackdoor-register-") as tmp:
        env = flwr_env(write_flwr_home(Path(tmp), address, insecure=False, root_certificates=ca))
        for key in public_keys:
            cmd = [flwr_bin("flwr"), "supernode", "register", str(key), CONNECTION,
                   "--name", key.name.removesuffix(".pub")]
            for attempt in range(attempts):
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
                text = out.stdout + out.stderr
                if out.returncode == 0 or "already in use" in text:
                    print(f"registered {key.name}")
                    break
                if "unavailable" not in text.lower() or attempt == attempts - 1:
                    raise RegistrationFailed(f"{key}: {' '.join(text.split())[-300:]}")
                time.sleep(wait)  # the SuperLink is still starting


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flbackdoor-tls", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="CA, SuperLink certificate and SuperNode key pairs")
    mk.add_argument("folder", type=Path)
    mk.add_argument("--san", action="append", default=[],
                    help="an address or host name clients dial (repeat); 127.0.0.1 and "
                         "localhost are always added")
    mk.add_argument("--node", action="append", default=[], help="a SuperNode key pair to make")
    mk.add_argument("--keep-existing", action="store_true", help="keep files already there")
    mk.add_argument("--discard-ca-key", action="store_true",
                    help="do not keep ca.key (nothing else will ever be signed)")
    mk.add_argument("--owner", default="", metavar="UID:GID",
                    help="give every file and folder written to this user (run as root)")
    nk = sub.add_parser("node-key", help="one SuperNode key pair: PATH and PATH.pub")
    nk.add_argument("path", type=Path)
    rg = sub.add_parser("register", help="register SuperNode public keys with a SuperLink")
    rg.add_argument("superlink", help="the SuperLink's Control API, host:port")
    rg.add_argument("--ca", required=True, help="the CA certificate (ca.crt)")
    rg.add_argument("keys", nargs="+", type=Path, help="public keys (NAME.pub)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "make":
            if not args.san:
                ap.error("make needs at least one --san: the address or name clients dial")
            for path in make(args.folder, args.san, args.node, args.keep_existing,
                             not args.discard_ca_key, args.owner):
                print(f"wrote {path}")
        elif args.cmd == "node-key":
            print(f"wrote {args.path} and {write_node_key(args.path)}")
        else:
            register(args.superlink, args.ca, args.keys)
    except (RegistrationFailed, OSError) as err:
        print(f"flbackdoor-tls: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
