"""A small SFTP server for the writable-remote test (tests/test_ssh_remote.py): asyncssh's own SFTP
server, bound to 127.0.0.1, key authentication only (the host key and the one authorized client key
are files the test generates in its tmp_path), every client confined to ``--root``.

    python tests/sftp_server.py --root DIR --host-key FILE --authorized-keys FILE [--write-delay S]

Prints ``listening on 127.0.0.1 port N`` once it accepts connections, then serves until killed.
``--write-delay`` holds each write request for S seconds, the way a slow link would, so that a test
can kill a client midway through a push with some objects sent and some not (on loopback a tiny
pipeline's cache goes in well under a second)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncssh


class SlowSFTPServer(asyncssh.SFTPServer):
    delay = 0.0

    async def write(self, file_obj, offset, data):
        if self.delay:
            await asyncio.sleep(self.delay)
        return super().write(file_obj, offset, data)


async def serve(args: argparse.Namespace) -> None:
    SlowSFTPServer.delay = args.write_delay
    server = await asyncssh.listen(
        "127.0.0.1", args.port, server_host_keys=[args.host_key], authorized_client_keys=args.authorized_keys,
        sftp_factory=lambda channel: SlowSFTPServer(channel, chroot=args.root),
        allow_scp=False, password_auth=False, kbdint_auth=False)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1 port {port}", flush=True)
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the folder clients see as /")
    parser.add_argument("--host-key", required=True, help="the server's private host key")
    parser.add_argument("--authorized-keys", required=True, help="the public keys allowed in (OpenSSH format)")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--write-delay", type=float, default=0.0, help="seconds each write request is held")
    args = parser.parse_args()
    if args.write_delay < 0:
        parser.error(f"--write-delay must be >= 0, not {args.write_delay}")
    try:
        asyncio.run(serve(args))
    except (OSError, asyncssh.Error) as error:
        print(f"sftp_server: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
