#!/usr/bin/env python3
"""Drive a test scenario through idlegate's HTTP API, with the standard library alone.

    idlegate lab up --config examples/azure-lb.toml --api &     # api and live view on http://127.0.0.1:9466/
    # ... servers in vm1 and vm2, a connection through rule "app" left idle (examples/api/README.md) ...
    python3 examples/api/scenario.py http://127.0.0.1:9466/ app [TOKEN_FILE]

The scenario: read the flows; change the rule's idle timeout while the box runs; wait (bounded)
on the event stream for a flow of the rule to expire; then "the load balancer is redeployed":
expire every flow that is left; at the end, whatever happened, give the rule back the idle
timeout it had. It prints what happened and exits 0, or 1 when a step fails, the API cannot be
reached or nothing expired in time (the reason on stderr, in one line), 2 for bad arguments.

The API is described in docs/src/reference/api.md.
"""

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class Unreachable(Exception):
    """The API did not answer at all: nothing listens there, or the connection failed."""


class Api:
    """The few calls the scenario makes: JSON over HTTP, and the Server-Sent Events stream."""

    def __init__(self, url, token):
        parts = urllib.parse.urlsplit(url)
        self.base = f"http://{parts.netloc}"
        self.host = parts.hostname
        self.port = parts.port or 80
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method, path, body=None):
        """(status, JSON answer); HTTP errors are answers too (their body says why)."""
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.load(e)
            except ValueError:
                return e.code, {"error": e.reason}
        except urllib.error.URLError as e:
            raise Unreachable(reason(e.reason)) from e
        except OSError as e:
            raise Unreachable(reason(e)) from e

    def events(self, deadline):
        """Yields (name, data) for every event of GET /api/events until `deadline`
        (time.monotonic()); ends there, or when the stream ends."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = dict(self.headers, Accept="text/event-stream")
        conn.request("GET", "/api/events", headers=headers)
        # Kept: a stream has no length, so http.client hands the socket to the answer alone.
        sock = conn.sock
        answer = conn.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"GET /api/events: HTTP {answer.status}: {answer.read(500).decode(errors='replace')}")
        return self._read(sock, answer, deadline)

    @staticmethod
    def _read(sock, answer, deadline):
        name, data = "message", []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                # A stream is quiet between events (a keepalive comment every 15 s): wait no
                # longer than the scenario's deadline. After a timeout the stream is given up.
                sock.settimeout(left)
                try:
                    line = answer.readline()
                except TimeoutError:
                    return
                if not line:
                    return
                line = line.decode("utf-8", errors="replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield name, json.loads("\n".join(data))
                    name, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
        finally:
            answer.close()


def reason(error):
    """An OS error said once, as the OS says it ("Connection refused"), else as it prints."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def checked_url(parser, url):
    """`url` if it is an http:// URL with a host, else a usage error (exit 2)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and parts.hostname:
        return url
    guess = f" (did you mean http://{url.rstrip('/')}/?)" if "://" not in url else ""
    parser.error(f"{url}: not an http:// URL, the API serves plain HTTP{guess}")


def flow_text(f):
    return f"{f['protocol']} {f['remote']} -> {f['public']} -> {f['private']}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the API, as `lab up --api` prints it: http://127.0.0.1:9466/")
    parser.add_argument("rule", help="the rule to change and wait on (app in examples/azure-lb.toml)")
    parser.add_argument("token_file", nargs="?", help="the file given to --api-token-file, if any")
    parser.add_argument("--idle-timeout", default="5m",
                        help="the rule's new idle timeout, as in the config file (default 5m)")
    parser.add_argument("--wait", type=float, default=60,
                        help="seconds to wait for a flow of the rule to expire (default 60)")
    args = parser.parse_args()
    url = checked_url(parser, args.url)
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().rstrip("\r\n")
        except OSError as e:
            parser.error(f"reading the token: {args.token_file}: {e.strerror}")
    api = Api(url, token)
    try:
        return scenario(api, args)
    except Unreachable as e:
        return fail(f"cannot reach {url}: {e} (is the lab up with --api?)")


def scenario(api, args):
    # 1. What the box holds now.
    status, answer = api.call("GET", "/api/flows")
    if status != 200:
        return fail(f"GET /api/flows: HTTP {status}: {answer.get('error')}")
    mine = [f for f in answer["flows"] if f["rule"] == args.rule]
    print(f"flows: {answer['count']} ({len(mine)} of rule {args.rule}); time scale {answer['time_scale']}")
    for f in answer["flows"]:
        print(f"  {f['rule']}: {flow_text(f)} {f['state']}, "
              f"expires in {f['expires_in_s']:.1f} s of {f['timeout_s']:.1f} s")

    # 2. Listen before acting, so that no event is missed.
    deadline = time.monotonic() + args.wait
    try:
        stream = api.events(deadline)
    except (OSError, RuntimeError) as e:
        return fail(f"the event stream: {e}")

    # 3. The rule's idle timeout, changed while the box runs (and given back at the end).
    before = idle_timeout_s(api, args.rule)
    path = f"/api/rules/{urllib.parse.quote(args.rule, safe='')}"
    status, answer = api.call("POST", path, {"idle_timeout": args.idle_timeout})
    if status not in (200, 202):
        known = f" (rules: {', '.join(answer['rules'])})" if "rules" in answer else ""
        return fail(f"changing rule {args.rule}: HTTP {status}: {answer.get('error')}{known}")
    if status == 202:
        # Sent to every worker, not yet confirmed by all: it runs all the same.
        print(f"rule {answer['rule']}: {answer['message']}")
    print(f"rule {answer['rule']}: idle timeout {args.idle_timeout}, runs "
          f"{answer['idle_timeout_s']:g} s; expiry {answer['expiry']}; {answer.get('applies', '')}")
    try:
        result = wait_and_redeploy(api, args, stream)
    finally:
        restore(api, args.rule, path, before)
    if result == 0:
        print("ok")
    return result


def idle_timeout_s(api, rule):
    """The rule's TCP idle timeout now, in seconds as in the config (unscaled), or None."""
    status, answer = api.call("GET", "/api/rules")
    if status != 200:
        return None
    for r in answer.get("rules", []):
        if r.get("name") == rule and r.get("tcp"):
            return r["tcp"]["idle_timeout_s"]
    return None


def restore(api, rule, path, before):
    """Gives the rule back the idle timeout it had before the scenario."""
    if before is None:
        print(f"rule {rule}: keeps the scenario's idle timeout (its old one was not known)")
        return
    try:
        status, answer = api.call("POST", path, {"idle_timeout": f"{before:g}s"})
    except Unreachable as e:
        print(f"rule {rule}: idle timeout not given back ({e})", file=sys.stderr)
        return
    if status in (200, 202):
        print(f"rule {rule}: idle timeout back to {before:g}s, as before the scenario")
    else:
        print(f"rule {rule}: idle timeout not given back: HTTP {status}: {answer.get('error')}",
              file=sys.stderr)


def wait_and_redeploy(api, args, stream):
    # 4. A flow of the rule expires.
    print(f"waiting up to {args.wait:g} s for a flow of rule {args.rule} to expire")
    expired = None
    try:
        for name, data in stream:
            if name == "expired" and data.get("rule") == args.rule:
                expired = data
                break
            if name == "sent":
                print(f"  sent {data['segment'].upper()} to the {data['to']}: {flow_text(data)}")
    except (OSError, ValueError) as e:
        return fail(f"the event stream: {e}")
    if expired is None:
        return fail(f"no flow of rule {args.rule} expired within {args.wait:g} s")
    print(f"expired: {expired['rule']}: {flow_text(expired)} after {expired['idle_for_s']:.1f} s idle "
          f"({expired['cause']}, timeout {expired['timeout_s']:.1f} s), action {expired['action']}")

    # 5. The load balancer is redeployed: every flow left is forgotten.
    status, answer = api.call("POST", "/api/expire", {"all": True})
    if status != 200:
        return fail(f"POST /api/expire: HTTP {status}: {answer.get('error')}")
    print(f"the load balancer is redeployed: expired {answer['expired']} more flow(s)")
    return 0


def fail(message):
    print(f"scenario failed: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
