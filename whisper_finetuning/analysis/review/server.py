"""The listening page's local web server (standard library only, 127.0.0.1 only).

Routes: ``/`` the page; ``/api/config``; ``/api/items?reviewer=NAME`` the utterances with
blind options and that reviewer's saved marks; ``/audio/ID`` the audio of an utterance under
review (looked up by id on the server: no path ever comes from a request);
``POST /api/judgment`` one reviewer's full judgment of one utterance, appended to the log.
A bad request gets a 4xx and changes nothing.
"""

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from whisper_finetuning.analysis.review.data import audio_type, blind_options, word_diff
from whisper_finetuning.analysis.review.store import TIE, latest, read_judgments
from whisper_finetuning.data import audio_sources

HOST = "127.0.0.1"
LOOPBACK_NAMES = {HOST, "localhost"}
PAGE = Path(__file__).with_name("page.html")
MAX_BODY_BYTES = 64 * 1024
MAX_DRAIN_BYTES = 16 * 1024 * 1024
MAX_TEXT_CHARS = 4000
REVIEWER_PATTERN = re.compile(r"[\w .@-]{1,64}")
JUDGMENT_KEYS = {"reviewer", "id", "best", "acceptable", "correction", "note"}


class BadRequest(Exception):
    """A request to refuse with ``status`` and a one-line reason."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


@dataclass
class Utterance:
    """One utterance under review: reference, the candidates' transcripts, groups, audio."""

    id: str
    ref: str
    hyps: dict  # epoch -> transcript
    groups: dict
    audio: str | None  # a manifest wav reference (whisper_finetuning.data.audio_sources)


class ReviewSession:
    """The state a server shares between requests: what is reviewed and where marks go."""

    def __init__(self, utterances, candidates, log, title, reviewer=None):
        self.utterances = {u.id: u for u in utterances}
        self.order = [u.id for u in utterances]
        self.candidates = list(candidates)
        self.log = log
        self.title = title
        self.reviewer = reviewer

    def options(self, reviewer, utt):
        """The blind options [(label, transcript, epochs)] this reviewer sees for ``utt``."""
        return blind_options(reviewer, utt.id, utt.hyps)

    def items(self, reviewer):
        """Every utterance as the page shows it to ``reviewer``, and their saved marks."""
        items = []
        for utt_id in self.order:
            utt = self.utterances[utt_id]
            options = self.options(reviewer, utt)
            items.append(
                {
                    "id": utt.id,
                    "ref": utt.ref,
                    "groups": utt.groups,
                    "audio": f"/audio/{quote(utt.id, safe='')}" if utt.audio else None,
                    "options": [
                        {"label": label, "hyp": text, "diff": word_diff(utt.ref, text)}
                        for label, text, _ in options
                    ],
                }
            )
        return {"items": items, "marks": self.marks(reviewer)}

    def marks(self, reviewer):
        """The reviewer's last judgment per utterance, in the page's option labels."""
        marks = {}
        for (name, utt_id), record in latest(read_judgments(self.log.path)).items():
            utt = self.utterances.get(utt_id)
            if name != reviewer or utt is None or record["candidates"] != self.candidates:
                continue
            options = self.options(reviewer, utt)
            label_of = {tuple(epochs): label for label, _, epochs in options}
            best = record["best"]
            marks[utt_id] = {
                "best": best if best in (None, TIE) else label_of.get(tuple(best)),
                "acceptable": {
                    label: record["acceptable"][str(epochs[0])]
                    for label, _, epochs in options
                    if str(epochs[0]) in record["acceptable"]
                },
                "correction": record["correction"],
                "note": record["note"],
            }
        return marks

    def judge(self, body):
        """Validate a posted judgment, translate labels to epochs, and append it."""
        if not isinstance(body, dict) or not set(body) <= JUDGMENT_KEYS:
            raise BadRequest(
                HTTPStatus.BAD_REQUEST, f"expected an object with keys {JUDGMENT_KEYS}"
            )
        reviewer = body.get("reviewer")
        if not isinstance(reviewer, str) or not REVIEWER_PATTERN.fullmatch(reviewer.strip()):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "reviewer: 1-64 letters, digits, ' .@-_'")
        utt = self.utterances.get(body.get("id")) if isinstance(body.get("id"), str) else None
        if utt is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, "no such utterance under review")
        reviewer = reviewer.strip()
        options = {label: epochs for label, _, epochs in self.options(reviewer, utt)}
        best = body.get("best")
        if best is not None and (not isinstance(best, str) or best not in (*options, TIE)):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"best: one of {sorted(options)}, tie or null")
        acceptable = body.get("acceptable", {})
        if not isinstance(acceptable, dict) or not all(
            label in options and isinstance(value, bool) for label, value in acceptable.items()
        ):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "acceptable: {option label: true/false}")
        texts = {key: body.get(key, "") for key in ("correction", "note")}
        if not all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS for t in texts.values()):
            raise BadRequest(
                HTTPStatus.BAD_REQUEST, f"correction, note: text of <= {MAX_TEXT_CHARS}"
            )
        return self.log.append(
            {
                "reviewer": reviewer,
                "id": utt.id,
                "candidates": self.candidates,
                "options": [options[label] for label in sorted(options)],
                "best": best if best in (None, TIE) else options[best],
                "acceptable": {
                    str(epoch): value
                    for label, value in acceptable.items()
                    for epoch in options[label]
                },
                "correction": texts["correction"].strip(),
                "note": texts["note"].strip(),
                "groups": utt.groups,
            }
        )


class ReviewHandler(BaseHTTPRequestHandler):
    """Serves one ``ReviewSession`` (set as the server's ``session``)."""

    server_version = "review"

    def log_message(self, format, *args):
        """Quiet: the terminal shows the URL, not every request."""

    @property
    def session(self):
        return self.server.session

    def send_body(self, status, body, content_type, extra_headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, data):
        self.send_body(status, json.dumps(data).encode(), "application/json")

    def refuse(self, error):
        self.send_json(error.status, {"error": str(error)})

    def check_host(self):
        """Refuse a Host other than this machine's loopback (a DNS-rebinding page's request)."""
        host = self.headers.get("Host", "").rsplit(":", 1)[0]
        if host not in LOOPBACK_NAMES:
            raise BadRequest(HTTPStatus.FORBIDDEN, "only http://127.0.0.1 or localhost")

    def do_GET(self):
        url = urlsplit(self.path)
        try:
            self.check_host()
            if url.path == "/":
                self.send_body(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif url.path == "/api/config":
                session = self.session
                config = {"title": session.title, "reviewer": session.reviewer}
                self.send_json(HTTPStatus.OK, {**config, "n": len(session.order)})
            elif url.path == "/api/items":
                reviewer = parse_qs(url.query).get("reviewer", [""])[0].strip()
                if not REVIEWER_PATTERN.fullmatch(reviewer):
                    raise BadRequest(HTTPStatus.BAD_REQUEST, "reviewer: 1-64 letters, digits")
                self.send_json(HTTPStatus.OK, self.session.items(reviewer))
            elif url.path.startswith("/audio/"):
                self.send_audio(unquote(url.path[len("/audio/") :]))
            else:
                raise BadRequest(HTTPStatus.NOT_FOUND, "not found")
        except BadRequest as error:
            self.refuse(error)

    do_HEAD = do_GET

    def send_audio(self, utt_id):
        """The audio of an utterance under review, whole or one byte range (for seeking)."""
        utt = self.session.utterances.get(utt_id)
        if utt is None or utt.audio is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, "no audio for that utterance")
        try:
            data = audio_sources.read_bytes(utt.audio)
            mime = audio_type(audio_sources.audio_name(utt.audio))
        except OSError:
            raise BadRequest(HTTPStatus.NOT_FOUND, "no audio for that utterance") from None
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not match or not any(match.groups()):
            self.send_body(HTTPStatus.OK, data, mime, [("Accept-Ranges", "bytes")])
            return
        first, last = match.groups()
        start = int(first) if first else max(len(data) - int(last), 0)
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
        if start > end:
            raise BadRequest(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "bad range")
        headers = [
            ("Accept-Ranges", "bytes"),
            ("Content-Range", f"bytes {start}-{end}/{len(data)}"),
        ]
        self.send_body(HTTPStatus.PARTIAL_CONTENT, data[start : end + 1], mime, headers)

    def drain(self, length):
        """Read and drop a refused body (bounded), so the client can read the answer."""
        left = min(length, MAX_DRAIN_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def do_POST(self):
        try:
            self.check_host()
            if urlsplit(self.path).path != "/api/judgment":
                raise BadRequest(HTTPStatus.NOT_FOUND, "not found")
            # JSON only: another site's page cannot send it here without a CORS preflight.
            if self.headers.get_content_type() != "application/json":
                raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            length = self.headers.get("Content-Length", "")
            if not length.isdigit():
                raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            length = int(length)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self.drain(length)
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            try:
                body = json.loads(self.rfile.read(length))
            except (ValueError, RecursionError):  # bad UTF-8, huge integers, deep nesting too
                raise BadRequest(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
            record = self.session.judge(body)
            self.send_json(HTTPStatus.OK, {"saved": record["time"]})
        except BadRequest as error:
            self.refuse(error)


def make_server(session, port=0):
    """A threaded server for ``session`` on 127.0.0.1 (port 0: a free one)."""
    server = ThreadingHTTPServer((HOST, port), ReviewHandler)
    server.daemon_threads = True
    server.session = session
    return server
