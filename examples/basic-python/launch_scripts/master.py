"""The master of the basic-python example: a web page of the engines' progress."""

import argparse
import html
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def summary(results: Path) -> list[dict]:
    rows = []
    for path in sorted(results.glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # an engine is rewriting its file; it will be complete next time
    return rows


def page(rows: list[dict]) -> str:
    total = sum(r["primes"] for r in rows)
    lines = "".join(
        f"<tr><td>{html.escape(r['engine'])}</td><td>{r['upto']}</td><td>{r['primes']}</td></tr>"
        for r in rows
    )
    return (
        "<html><head><meta http-equiv='refresh' content='5'><title>basic-python</title></head><body>"
        f"<h1>{len(rows)} engines, {total} primes found</h1>"
        f"<table border=1><tr><th>engine</th><th>checked up to</th><th>primes</th></tr>{lines}</table>"
        "</body></html>"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--results", type=Path, default=Path("/home/data/results"))
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = page(summary(args.results)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
