#!/usr/bin/env python3
"""A real XMPP client (slixmpp) for xmpptap's interop tests, driven by flags, reporting JSON lines.

Run it with the virtualenv that tests/support/pyenv.sh prepares. It logs in once, then does what the
flags ask, in this order, and disconnects:

  connect (TCP; Direct TLS handshake first with --mode direct-tls) -> STARTTLS (--mode starttls)
  -> SASL with the forced --mechanism -> bind -> roster (--roster) -> initial presence
  -> sync (a ping to the server: everything sent before has been processed) -> "ready"
  -> each --send, then a sync -> wait for every --expect-message-from -> disconnect.

Each line on stdout is one JSON object with "event" and "t" (seconds since start):

  start             jid, host, port, mode, mechanism (null: slixmpp's choice), trust
  connected         host, port (the TCP connection; for Direct TLS after the handshake)
  tls               version, cipher, bits, alpn, sni, verified, peer_cert_sha256, peer_dns_names
  auth              mechanism (the one used), offered (the server's list, sorted)
  session_started   jid (the bound full JID), tls (bool)
  roster            ver, items: [{jid, name, subscription, ask, groups (sorted)}] (sorted by jid)
  presence_sent
  ready             (presence processed by the server; a second client may now message this one)
  message_sent      to, body, id, type
  message_received  from, to, body, type, id (every message with a body, expected or not)
  presence_received from, type, show
  disconnected
  done              ok: true
  error             phase, reason (then the process exits non-zero)

Exit codes: 0 everything asked for happened; 1 an error (connection, TLS, certificate, SASL, stream
error, bounced message, unexpected disconnect); 2 bad usage (argparse); 3 --timeout expired (the error
line says during which phase). slixmpp's log goes to stderr (--debug: every stanza, SASL included).
"""

import argparse
import asyncio
import hashlib
import json
import logging
import os
import ssl
import sys
import time

import slixmpp
from slixmpp import JID

START = time.monotonic()


def emit(event, **fields):
    record = {"event": event, "t": round(time.monotonic() - START, 4)}
    record.update(fields)
    sys.stdout.write(json.dumps(record, sort_keys=False) + "\n")
    sys.stdout.flush()


class Failed(Exception):
    """An error that ends the run; `phase` and `reason` go to the error line."""

    def __init__(self, phase, reason):
        super().__init__(f"{phase}: {reason}")
        self.phase = phase
        self.reason = reason


def build_ssl_context(args):
    if args.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif args.ca:
        # Only this CA: a certificate from anyone else (the system roots included) is refused.
        ctx = ssl.create_default_context(cafile=args.ca)
    else:
        ctx = ssl.create_default_context()
    # check_hostname (when on) compares the certificate with the JID's domain: slixmpp passes it as
    # server_hostname for Direct TLS and for STARTTLS, which also makes it the SNI name.
    if args.mode == "direct-tls":
        ctx.set_alpn_protocols(["xmpp-client"])  # XEP-0368
    return ctx


class Client(slixmpp.ClientXMPP):
    def __init__(self, args, password):
        jid = args.jid if not args.resource else f"{args.jid}/{args.resource}"
        plugin_config = {}
        if args.mode == "plaintext":
            plugin_config["feature_mechanisms"] = {
                "unencrypted_plain": True,
                "unencrypted_scram": True,
            }
        super().__init__(jid, password, plugin_config=plugin_config, sasl_mech=args.mechanism)
        self.args = args
        self.ssl_context = build_ssl_context(args)
        self.enable_direct_tls = args.mode == "direct-tls"
        self.enable_starttls = args.mode == "starttls"
        self.enable_plaintext = args.mode == "plaintext"
        self.use_ipv6 = False
        self.whitespace_keepalive = False
        self.register_plugin("xep_0199")  # ping, as the sync point

        self.phase = "connect"
        self.waiting_for = None
        self.finishing = False
        self.tls_seen = False
        self.failure = asyncio.get_running_loop().create_future()
        self.session = asyncio.get_running_loop().create_future()
        self.expected = {JID(j).bare: 0 for j in args.expect_message_from}
        self.expected_done = asyncio.get_running_loop().create_future()
        if not self.expected:
            self.expected_done.set_result(True)

        self.add_event_handler("connected", self.on_connected)
        self.add_event_handler("connection_failed", self.on_connection_failed)
        self.add_event_handler("tls_success", self.on_tls)
        self.add_event_handler("ssl_invalid_chain", self.on_invalid_chain)
        self.add_event_handler("auth_success", self.on_auth_success)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("no_auth", self.on_no_auth)
        self.add_event_handler("stream_error", self.on_stream_error)
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message_error)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("disconnected", self.on_disconnected)

    # --- failures -------------------------------------------------------------------------
    def fail(self, reason, phase=None):
        if not self.failure.done():
            self.failure.set_exception(Failed(phase or self.phase, reason))

    def on_connection_failed(self, error):
        # slixmpp would retry forever; one attempt is what a test wants.
        self.cancel_connection_attempt()
        self.fail(f"connection failed: {error}", "connect")

    def on_invalid_chain(self, error):
        self.fail(f"certificate not accepted: {error}")

    def on_failed_auth(self, failure):
        condition = failure["condition"] if failure is not None else "?"
        text = failure["text"] if failure is not None else ""
        self.fail(f"SASL failure <{condition}/> {text}".strip(), "auth")

    def on_no_auth(self, _event):
        if self.args.mode == "starttls" and not self.tls_seen:
            self.fail("the server offered no STARTTLS; refusing to authenticate in the clear", "starttls")
            return
        offered = sorted(self.plugin["feature_mechanisms"].mech_list)
        self.fail(f"no usable SASL mechanism (wanted {self.args.mechanism or 'any'}, offered {offered})", "auth")

    def on_stream_error(self, error):
        self.fail(f"stream error <{error['condition']}/> {error['text']}".strip())

    def on_disconnected(self, reason):
        if self.finishing:
            return
        self.fail(f"disconnected unexpectedly: {reason or self.disconnect_reason or 'connection closed'}")

    # --- progress -------------------------------------------------------------------------
    def on_connected(self, _event):
        emit("connected", host=self.args.host, port=self.args.port)
        self.phase = "starttls" if self.args.mode == "starttls" else "auth"

    def on_tls(self, _event):
        self.tls_seen = True
        self.phase = "auth"
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        if obj is None:
            emit("tls")
            return
        cipher = obj.cipher() or (None, None, None)
        der = obj.getpeercert(binary_form=True)
        verified = self.ssl_context.verify_mode == ssl.CERT_REQUIRED
        names = []
        if verified:
            info = obj.getpeercert() or {}
            names = [value for kind, value in info.get("subjectAltName", ()) if kind == "DNS"]
        emit(
            "tls",
            version=obj.version(),
            cipher=cipher[0],
            bits=cipher[2],
            alpn=obj.selected_alpn_protocol(),
            sni=getattr(obj, "server_hostname", None),
            verified=verified,
            peer_cert_sha256=hashlib.sha256(der).hexdigest() if der else None,
            peer_dns_names=names,
        )

    def on_auth_success(self, _stanza):
        mechanisms = self.plugin["feature_mechanisms"]
        emit("auth", mechanism=mechanisms.mech.name, offered=sorted(mechanisms.mech_list))
        self.phase = "bind"

    def on_session_start(self, _event):
        if not self.session.done():
            self.session.set_result(True)

    def on_message(self, msg):
        if msg["type"] == "error" or not msg["body"]:
            return
        sender = msg["from"]
        emit(
            "message_received",
            **{"from": str(sender), "to": str(msg["to"]), "body": msg["body"], "type": msg["type"], "id": msg["id"]},
        )
        if sender.bare in self.expected:
            self.expected[sender.bare] += 1
            if all(self.expected.values()) and not self.expected_done.done():
                self.expected_done.set_result(True)

    def on_message_error(self, msg):
        error = msg["error"]
        self.fail(f"message to {msg['from']} bounced: <{error['condition']}/> {error['text']}".strip(), "send")

    def on_presence(self, presence):
        emit("presence_received", **{"from": str(presence["from"]), "type": presence["type"], "show": presence["show"]})

    # --- the run --------------------------------------------------------------------------
    async def step(self, phase, awaitable):
        """Enters `phase` and awaits `awaitable`, or raises the first failure reported meanwhile."""
        self.phase = phase
        return await self.wait_for(awaitable)

    async def wait_for(self, awaitable):
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self.failure}, return_when=asyncio.FIRST_COMPLETED)
        if self.failure in done:
            task.cancel()
            self.failure.result()  # raises Failed
        return task.result()

    async def sync(self, phase):
        await self.step(phase, self.plugin["xep_0199"].ping(self.boundjid.host, timeout=self.args.timeout))

    async def run(self):
        emit(
            "start",
            jid=self.args.jid,
            host=self.args.host,
            port=self.args.port,
            mode=self.args.mode,
            mechanism=self.args.mechanism,
            trust="insecure" if self.args.insecure else ("ca:" + self.args.ca if self.args.ca else "system"),
        )
        self.phase = "connect"
        self.connect(self.args.host, self.args.port)
        await self.wait_for(self.session)
        if self.args.mode != "plaintext" and not self.tls_seen:
            raise Failed("session", "session started without TLS")
        emit("session_started", jid=str(self.boundjid), tls=self.tls_seen)

        if self.args.roster:
            result = await self.step("roster", self.get_roster(timeout=self.args.timeout))
            roster = result["roster"]
            items = []
            for jid, item in sorted(roster["items"].items(), key=lambda kv: str(kv[0])):
                items.append(
                    {
                        "jid": str(jid),
                        "name": item.get("name") or "",
                        "subscription": item.get("subscription") or "none",
                        "ask": item.get("ask") or None,
                        "groups": sorted(item.get("groups") or []),
                    }
                )
            emit("roster", ver=roster["ver"] or None, items=items)

        if not self.args.no_presence:
            self.send_presence()
            emit("presence_sent")
        await self.sync("ready")
        emit("ready")

        for to, body in self.args.send:
            msg = self.make_message(mto=to, mbody=body, mtype="chat")
            msg["id"] = msg["id"] or self.new_id()
            msg.send()
            emit("message_sent", to=to, body=body, id=msg["id"], type="chat")
        if self.args.send:
            # The server has handled the messages once it answers this; a bounce would have come first.
            await self.sync("send")

        if self.expected:
            missing = sorted(j for j, n in self.expected.items() if not n)
            self.waiting_for = f"a message from {', '.join(missing)}"
            await self.step("expect", self.expected_done)

        self.finishing = True
        self.phase = "disconnect"
        await self.disconnect(wait=2.0)
        emit("disconnected")


async def main_async(args, password):
    client = Client(args, password)
    try:
        await asyncio.wait_for(client.run(), timeout=args.timeout)
    except Failed as failed:
        emit("error", phase=failed.phase, reason=failed.reason)
        client.finishing = True
        client.abort()
        return 1
    except asyncio.TimeoutError:
        during = client.phase + (f", waiting for {client.waiting_for}" if client.waiting_for else "")
        emit("error", phase=client.phase, reason=f"timeout after {args.timeout}s during {during}")
        client.finishing = True
        client.abort()
        return 3
    except Exception as exc:  # an IQ error or timeout, or a bug here: still one error line
        logging.exception("run failed")
        emit("error", phase=client.phase, reason=f"{type(exc).__name__}: {exc}")
        client.finishing = True
        client.abort()
        return 1
    emit("done", ok=True)
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jid", required=True, help="bare JID to log in as, e.g. alice@a.test")
    p.add_argument("--resource", help="resource to ask for (default: the server picks)")
    p.add_argument("--password-env", required=True, metavar="VAR", help="environment variable holding the password")
    p.add_argument("--host", required=True, help="IP or name to connect to (no SRV lookup)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument(
        "--mode",
        choices=["starttls", "direct-tls", "plaintext"],
        default="starttls",
        help="starttls: plain TCP then STARTTLS (required); direct-tls: TLS first (XEP-0368, ALPN xmpp-client); "
        "plaintext: no TLS at all",
    )
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--ca", metavar="FILE", help="trust only this CA (PEM); the certificate must name the JID's domain")
    trust.add_argument("--insecure", action="store_true", help="accept any certificate (no chain or name check)")
    p.add_argument("--mechanism", help="force this SASL mechanism, e.g. SCRAM-SHA-1, SCRAM-SHA-256, PLAIN")
    p.add_argument("--roster", action="store_true", help="fetch the roster and report its items")
    p.add_argument("--no-presence", action="store_true", help="do not send initial presence")
    p.add_argument("--send", nargs=2, action="append", default=[], metavar=("TO", "BODY"), help="send a chat message (repeatable)")
    p.add_argument(
        "--expect-message-from",
        action="append",
        default=[],
        metavar="JID",
        help="wait until a message with a body arrives from this (bare) JID (repeatable)",
    )
    p.add_argument("--timeout", type=float, default=20.0, help="limit for the whole run, seconds (default 20)")
    p.add_argument("--debug", action="store_true", help="slixmpp debug log (every stanza) on stderr")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    password = os.environ.get(args.password_env)
    if password is None:
        emit("error", phase="start", reason=f"environment variable {args.password_env} is not set")
        return 1
    return asyncio.run(main_async(args, password))


if __name__ == "__main__":
    sys.exit(main())
