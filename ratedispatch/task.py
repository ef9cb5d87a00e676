"""A stream entry becomes a Task, or InvalidTask with the reason; a Task becomes a request."""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from urllib.parse import SplitResult, unquote, urlsplit

import httpx

from .errors import InvalidTask

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
USER_AGENT = ("User-Agent", f"ratedispatch/{version('ratedispatch')}")
# A key names a tenant, user or account: it becomes part of Redis key names and status lines.
MAX_KEY_LENGTH = 200
# Fields the dispatcher interprets; every other field is a query parameter.
RESERVED = frozenset(
    {"endpoint", "method", "priority", "body", "headers", "idempotency_key", "cost"}
)
# Headers a producer may not set: they would let an entry re-target or re-frame the request,
# or take over credentials; Idempotency-Key has its own field.
REFUSED_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "content-length",
        "transfer-encoding",
        "connection",
        "idempotency-key",
    }
)
MAX_URL_LENGTH = 32_768
MAX_FIELDS = 1000
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Matched with fullmatch: `$` would also match before a trailing newline ("X-A\n").
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters and whitespace: never valid in a path, and CR/LF would split a request.
_UNSAFE_IN_PATH = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A server or proxy may percent-decode a path once or more before resolving '.' and '..',
# so a path is judged as it reads once no decoding changes it. Each decoding that changes
# anything shortens the path, but a hostile '%252525…' would take thousands of rounds: past
# this many, the endpoint is refused rather than decoded further.
MAX_PERCENT_DECODINGS = 4
# Once decoded, '\' separates segments too (IIS, and proxies that normalise it to '/'). The
# part of a segment before ';', '?' or '#' is what servers resolve: Tomcat and Jetty drop
# ';params' (so '..;' is '..'), and a proxy that decodes '%3F' or '%23' ends the path there.
_SEPARATOR = re.compile(r"[/\\]")
_SEGMENT_END = re.compile(r"[;?#]")


class Priority(enum.IntEnum):
    """The order tasks are called in under a backlog; the value is the rank (lower first)."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Task:
    """One validated stream entry: everything needed to make its call."""

    id: str
    endpoint: str
    method: str = "GET"
    priority: Priority = Priority.NORMAL
    query: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    idempotency_key: str = ""
    cost: int = 1  # the units its call counts against every limit term
    api: str = "default"  # the API it is for (ratedispatch/apis.py)
    # Its value of the API's key_field ("" without the field); None: the API has no key_field.
    key: str | None = None


def _decode(value: bytes | str, what: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTask(f"{what} is not valid UTF-8 text") from None


def parse_priority(value: str) -> Priority:
    try:
        return Priority[value.strip().upper()]
    except KeyError:
        raise InvalidTask(f"priority {value!r} is not one of high, normal, low") from None


def parse_cost(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidTask(
            f"cost {value[:40]!r} is not a whole number of 1 or more: a call costs that many "
            "units of every limit term"
        )
    return int(text)


def parse_method(value: str) -> str:
    method = value.strip().upper()
    if method not in METHODS:
        raise InvalidTask(f"method {value!r} is not one of GET, POST, PUT, PATCH, DELETE")
    return method


def check_endpoint(endpoint: str) -> str:
    """The endpoint if it is a path that stays under the configured API; else InvalidTask."""
    if not endpoint:
        raise InvalidTask("the entry has no 'endpoint' field: add a path such as /profile")
    if len(endpoint) > MAX_URL_LENGTH:
        raise InvalidTask(f"endpoint is {len(endpoint)} characters, over {MAX_URL_LENGTH}")
    if not endpoint.startswith("/") or endpoint.startswith("//"):
        raise InvalidTask(
            f"endpoint {endpoint[:200]!r} is not a path beginning with a single '/': "
            "absolute and scheme-relative URLs are refused, the API base URL is configured"
        )
    if "\\" in endpoint:
        raise InvalidTask(f"endpoint {endpoint[:200]!r} contains a backslash")
    if _UNSAFE_IN_PATH.search(endpoint):
        raise InvalidTask(f"endpoint {endpoint[:200]!r} contains whitespace or a control character")
    if "#" in endpoint:
        raise InvalidTask(f"endpoint {endpoint[:200]!r} contains a fragment ('#')")
    decoded = _fully_decoded(endpoint.split("?", 1)[0], endpoint)
    for segment in _SEPARATOR.split(decoded):
        resolved = _SEGMENT_END.split(segment, 1)[0]
        if resolved in (".", ".."):
            raise InvalidTask(
                f"endpoint {endpoint[:200]!r} has a {resolved!r} segment once percent-decoded "
                f"({decoded[:200]!r}), which a server that decodes it would follow out of the "
                "API base path: resolve the path before enqueueing (/a/b, not /a/x/../b)"
            )
    if "\\" in decoded:
        raise InvalidTask(
            f"endpoint {endpoint[:200]!r} has an encoded backslash ('%5C'), which some servers "
            "read as '/', so it can hide a '..' segment: use '/' between segments"
        )
    if _UNSAFE_IN_PATH.search(decoded):
        raise InvalidTask(
            f"endpoint {endpoint[:200]!r} has an encoded space or control character "
            "('%20', '%0A'…), which a server that decodes it may read as the end of the path "
            "or of the request line: remove it"
        )
    return endpoint


def _fully_decoded(path: str, endpoint: str) -> str:
    """The path percent-decoded until it no longer changes, within MAX_PERCENT_DECODINGS."""
    for _ in range(MAX_PERCENT_DECODINGS):
        decoded = unquote(path)
        if decoded == path:
            return path
        path = decoded
    if unquote(path) != path:
        raise InvalidTask(
            f"endpoint {endpoint[:200]!r} is still percent-encoded after "
            f"{MAX_PERCENT_DECODINGS} decodings ('%25' nested that deep): "
            "encode the path once, with a literal '%' written as '%25'"
        )
    return path


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidTask(f"'headers' is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidTask("'headers' must be a JSON object of header name to string value")
    headers: list[tuple[str, str]] = []
    for name, header_value in value.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidTask(f"header name {name[:100]!r} is not a valid HTTP header name")
        if name.lower() in REFUSED_HEADERS:
            hint = " (use the idempotency_key field)" if name.lower() == "idempotency-key" else ""
            raise InvalidTask(f"header {name!r} may not be set by a task{hint}")
        if not isinstance(header_value, str):
            raise InvalidTask(f"header {name!r} must have a string value")
        check_header_value(f"header {name!r}", header_value)
        headers.append((name, header_value))
    return tuple(headers)


def check_header_value(what: str, value: str) -> str:
    if _UNSAFE_IN_HEADER.search(value):
        raise InvalidTask(f"{what} contains CR, LF or another control character")
    if not value.isascii():
        raise InvalidTask(f"{what} contains non-ASCII characters")
    return value


def parse_body(text: str, max_body_bytes: int) -> bytes:
    body = text.encode("utf-8")
    if len(body) > max_body_bytes:
        raise InvalidTask(
            f"body is {len(body)} bytes, over the limit of {max_body_bytes} "
            "(RATEDISPATCH_MAX_BODY_BYTES)"
        )
    try:
        json.loads(text)
    except ValueError as exc:
        raise InvalidTask(f"'body' is not valid JSON: {exc}") from None
    return body


def parse_entry(
    entry_id: str,
    fields: Mapping[bytes, bytes] | Mapping[str, str],
    *,
    max_body_bytes: int = 1_048_576,
    apis: Collection[str] | None = None,
    key_fields: Mapping[str, str] | None = None,
) -> Task:
    """Validate one stream entry (docs/reference.md, Entry fields); raises InvalidTask with the
    reason. `apis`: the APIs the fleet calls, when a config file names them; then the field
    `api` names one of them (else it is a query parameter, as it always was). `key_fields`: the
    key_field of each API that has one."""
    if len(fields) > MAX_FIELDS:
        raise InvalidTask(f"the entry has {len(fields)} fields; at most {MAX_FIELDS} are accepted")
    values: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        name = _decode(raw_name, f"field name {raw_name!r}")
        values[name] = _decode(raw_value, f"field {name!r}")
    endpoint = check_endpoint(values.get("endpoint", ""))
    method = parse_method(values["method"]) if "method" in values else "GET"
    priority = parse_priority(values["priority"]) if "priority" in values else Priority.NORMAL
    body = parse_body(values["body"], max_body_bytes) if "body" in values else None
    headers = parse_headers(values["headers"]) if "headers" in values else ()
    cost = parse_cost(values["cost"]) if "cost" in values else 1
    key = values.get("idempotency_key", entry_id)
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidTask(
            f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long"
        )
    check_header_value("idempotency_key", key)
    api = "default"
    if apis is not None:
        api = values.pop("api", "default")
        if api not in apis:
            known = ", ".join(sorted(apis))
            raise InvalidTask(f"no API is named {api[:64]!r}: the known ones are {known}")
    key_field = (key_fields or {}).get(api)
    task_key = None
    if key_field is not None:
        task_key = values.get(key_field, "")
        if len(task_key) > MAX_KEY_LENGTH:
            raise InvalidTask(
                f"{key_field!r} (the key_field of API {api!r}) is over {MAX_KEY_LENGTH} characters"
            )
    query = tuple((k, v) for k, v in values.items() if k not in RESERVED)
    return Task(
        id=entry_id,
        endpoint=endpoint,
        method=method,
        priority=priority,
        query=query,
        body=body,
        headers=headers,
        idempotency_key=key,
        cost=cost,
        api=api,
        key=task_key,
    )


@functools.lru_cache(maxsize=16)
def _base(base_url: str) -> tuple[SplitResult, str]:
    base = urlsplit(base_url)
    return base, base.path.rstrip("/") + "/"


def build_request(
    task: Task, base_url: str, *, token: str | None = None, timeout: float | None = None
) -> httpx.Request:
    """The HTTP request for a task; refuses (InvalidTask) any URL outside the base URL.
    `timeout`: httpx's per-operation timeouts, for the request's transport."""
    target = base_url.rstrip("/") + task.endpoint
    if task.query:
        # Merged with a query the endpoint has, as httpx encodes query parameters.
        separator = "" if target.endswith(("?", "&")) else "&" if "?" in target else "?"
        target += separator + str(httpx.QueryParams(list(task.query)))
    url = httpx.URL(target)
    base, base_path = _base(base_url)
    if (
        url.scheme != base.scheme
        or url.host != (base.hostname or "")
        or url.port != base.port
        or not url.path.startswith(base_path)
    ):
        raise InvalidTask(f"endpoint {task.endpoint[:200]!r} would leave the API base URL")
    if len(str(url)) > MAX_URL_LENGTH:
        raise InvalidTask(f"the request URL would be over {MAX_URL_LENGTH} characters")
    headers: list[tuple[str, str]] = list(task.headers)
    if not any(n.lower() == "user-agent" for n, _ in headers):
        headers.insert(0, USER_AGENT)
    headers.append(("Idempotency-Key", task.idempotency_key))
    if task.body is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", "application/json"))
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    extensions = {} if timeout is None else {"timeout": httpx.Timeout(timeout).as_dict()}
    return httpx.Request(
        task.method, url, headers=headers, content=task.body, extensions=extensions
    )
