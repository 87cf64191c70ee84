"""OPA's data API for CVAT, on OPA's own Go engine (opa-golib-python-bindings) instead of an `opa` binary.

CVAT asks `POST /v1/data/<package>/<rule>` with `{"input": ...}` for every permission check (`allow`) and list
filter (`filter`) and reads `{"result": ...}`. The policies are CVAT's own `.rego` files, the ones its
`/api/auth/rules` bundle holds (`cvat/apps/*/rules/*.rego`, generated ones left out), so the decisions are CVAT's.
Usage: python opa_server.py --src CVAT_SOURCE --opa-lib DIR_WITH_opa_bindings [--port 8181]
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def load_engine(src: Path):
    from opa_bindings import OpaEngine

    engine = OpaEngine()
    files = sorted(p for p in src.glob("cvat/apps/*/rules/*.rego") if not p.name.endswith(".gen.rego"))
    for path in files:
        engine.add_policy(str(path.relative_to(src)), path.read_text())
    return engine, len(files)


def make_handler(engine):
    from opa_bindings import OpaUndefinedError

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # one line a request would swamp the log: CVAT checks on every call
            pass

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.partition("?")[0].rstrip("/") == "/health":  # CVAT's health check asks /health?bundles
                return self._reply(200, {})
            self._reply(404, {"code": "not_found", "message": self.path})

        def do_POST(self):
            if not self.path.startswith("/v1/data/"):
                return self._reply(404, {"code": "not_found", "message": self.path})
            document = self.path[len("/v1/data/") :].strip("/").replace("/", ".")
            size = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(size) or b"{}")
            except json.JSONDecodeError as e:
                return self._reply(400, {"code": "invalid_parameter", "message": str(e)})
            try:
                result = engine.eval_document(document, body.get("input"))
            except OpaUndefinedError:
                return self._reply(200, {})  # as OPA: an undefined document is a reply without "result"
            except Exception as e:  # a policy error is OPA's 500, with the reason
                return self._reply(500, {"code": "internal_error", "message": str(e)})
            self._reply(200, {"result": result})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--opa-lib", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8181)
    args = parser.parse_args()
    sys.path.insert(0, str(args.opa_lib))
    engine, count = load_engine(args.src)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(engine))
    print(f"OPA: {count} policies from {args.src}, on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
