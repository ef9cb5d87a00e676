"""Property tests: arbitrary entries never crash the parser or a worker, never make a request
outside the configured base URL (SSRF), and never put CR/LF into a header."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import unquote

import anyio
import fakeredis
import httpx
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratedispatch import Dispatcher, InvalidTask, build_request, parse_entry
from ratedispatch.queue import read_stream

from .conftest import make_settings

BASE = "https://api.example.com/v1"
BASE_PATH = "/v1/"
FIELDS = ("endpoint", "method", "priority", "body", "headers", "idempotency_key")

text_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["/", "//evil.example", "/a/../b", "/%2e%2e/x", "/\\evil", "http://x/y",
                     "/ok?x=1", "/a#b", "/a\r\nX: y", "GET", "post", "HIGH", "low", "urgent",
                     "{}", "[1]", '{"Host": "evil"}', '{"X-A": "b\\r\\nc"}', "null", "\x00"]),
    st.builds(lambda s: "/" + s, st.text(max_size=40)),
    st.builds(lambda d: json.dumps(d), st.dictionaries(st.text(max_size=8), st.text(max_size=8),
                                                      max_size=3)),
)  # fmt: skip
values = st.one_of(
    text_values.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
    st.builds(lambda n: b'"' + b"x" * n + b'"', st.integers(0, 3000)),  # around the body cap
)
names = st.one_of(st.sampled_from(FIELDS).map(str.encode), st.binary(max_size=12))
attacks = st.sampled_from(
    ["//evil.example/x", "///evil.example", "/\\evil.example", "/..", "/a/%2E%2e/b", "/%5c",
     "http://evil.example/", "https:evil.example", "/@evil.example", "/x?u=http://evil/",
     "/a\tb", "/a\x7fb", "/%0d%0aX:y", "/\u2028", "//", "/./", "/ok"]
)  # fmt: skip
# Paths built from separators and dots, plain and percent-encoded once, twice or half-way
# ('%25' then '2e'), so that decoding can make a '.' or '..' segment the raw path does not have.
path_pieces = st.sampled_from(
    ["a", "b", ".", "..", "/", "%2f", "%2F", "%5c", "%5C", "%2e", "%2E", "%252e", "%252E",
     "%252f", "%25252e", "%25", "%", "2e", "2E", "2f", "5c", "25", ";", "%3b", "%3f", "%23",
     "?", "%20", "%0a"]
)  # fmt: skip
encoded_paths = st.lists(path_pieces, max_size=12).map(lambda pieces: "/" + "".join(pieces))
endpoints = st.one_of(
    attacks, encoded_paths, st.builds(lambda s: "/" + s, st.text(max_size=40)), st.text()
)


def _merge(base: dict[bytes, bytes], extra: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {**extra, **base}


def _stays_under_the_base_path(url: httpx.URL) -> bool:
    """Whether the path a server would resolve (decoded to the end, split at '/' and '\\', each
    segment cut at ';', '?' or '#') is under the base path and has no '.' or '..' segment."""
    path = url.raw_path.split(b"?", 1)[0].decode("ascii")
    for _ in range(100):  # generated paths are short: this is decoding to the end
        path, previous = unquote(path), path
        if path == previous:
            break
    resolved = (re.split(r"[;?#]", segment, maxsplit=1)[0] for segment in re.split(r"[/\\]", path))
    return path.startswith(BASE_PATH) and not any(s in (".", "..") for s in resolved)


# Mostly well-formed entries with one hostile part, so the hostile part is what gets tested.
entries = st.builds(
    _merge,
    st.fixed_dictionaries(
        {b"endpoint": endpoints.map(lambda s: s.encode("utf-8", "surrogatepass"))},
        optional={
            b"method": st.sampled_from([b"GET", b"post", b"TRACE"]),
            b"priority": st.sampled_from([b"high", b"low", b"urgent"]),
            b"body": st.one_of(st.just(b'{"a": 1}'), values),
            b"headers": st.one_of(
                st.sampled_from([b'{"X-A": "1"}', b'{"Host": "evil"}', b'{"X-A": "1\\r\\nB: 2"}',
                                 b'{"X-A": "\\u0000"}', b'{"Content-Type": "text/plain"}']),
                values,
            ),
            b"idempotency_key": st.one_of(st.just(b"key-1"), values),
        },
    ),
    st.dictionaries(st.one_of(st.just(b"user_id"), names), values, max_size=3),
)  # fmt: skip
header_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=20), min_size=1, max_size=4)


@settings(max_examples=400, deadline=None)
@given(entries)
def test_any_entry_is_a_task_or_a_reason_and_a_task_stays_under_the_base_url(
    fields: dict[bytes, bytes],
) -> None:
    try:
        task = parse_entry("1700000000000-1", fields, max_body_bytes=1000)
        request = build_request(task, BASE, token="t")
    except InvalidTask as exc:
        reason = exc.reason
        request = None
    if request is None:
        assert reason  # a sentence, never empty
        return
    assert str(request.url).startswith(BASE + "/")
    assert request.url.host == "api.example.com"
    assert _stays_under_the_base_path(request.url), request.url
    for name, value in request.headers.raw:
        assert b"\r" not in name + value and b"\n" not in name + value
    assert request.headers["Authorization"] == "Bearer t"


@settings(max_examples=1000, deadline=None)
@given(encoded_paths)
def test_an_accepted_endpoint_decodes_to_no_dot_segment_and_stays_under_the_base_path(
    endpoint: str,
) -> None:
    try:
        request = build_request(parse_entry("1-1", {"endpoint": endpoint}), BASE)
    except InvalidTask as exc:
        reason = exc.reason
        request = None
    if request is None:
        assert reason  # a sentence, never empty
        return
    assert _stays_under_the_base_path(request.url), request.url


@settings(max_examples=300, deadline=None)
@given(header_maps)
def test_no_header_value_ever_carries_cr_or_lf(headers: dict[str, str]) -> None:
    fields = {"endpoint": "/a", "headers": json.dumps(headers)}
    try:
        request = build_request(parse_entry("1-1", fields), BASE)
    except InvalidTask:
        return
    for name, value in request.headers.raw:
        assert not set(b"\r\n\x00") & set(name + value), (name, value)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
@given(st.lists(entries, min_size=1, max_size=12))
def test_a_worker_settles_every_hostile_entry_and_calls_only_the_api(
    batch: list[dict[bytes, bytes]],
) -> None:
    anyio.run(_run_worker_on, batch)


async def _run_worker_on(batch: list[dict[bytes, bytes]]) -> None:
    config = make_settings(api_base_url=BASE, max_body_bytes=1000, max_attempts=2)
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    for fields in batch:
        await redis.xadd(config.stream, fields or {b"": b""})  # type: ignore[arg-type]
    urls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        for name, value in request.headers.raw:
            assert b"\r" not in name + value and b"\n" not in name + value
        return httpx.Response(200)

    with respx.mock(assert_all_called=False) as api:
        api.route().mock(side_effect=answer)
        async with httpx.AsyncClient() as http:
            dispatcher = Dispatcher(config, redis, http, read_block_ms=0)
            async with anyio.create_task_group() as tg:
                await tg.start(dispatcher.run)
                deadline = time.monotonic() + 20
                while len(await read_stream(redis, config.results_stream)) < len(batch):
                    assert time.monotonic() < deadline, "not every entry was settled"
                    await anyio.sleep(0.02)
                dispatcher.stop()
    results = await read_stream(redis, config.results_stream)
    assert len(results) == len(batch)
    assert (await redis.xpending(config.stream, config.group))["pending"] == 0
    assert all(url.startswith(BASE + "/") for url in urls), urls
    assert all(_stays_under_the_base_path(httpx.URL(url)) for url in urls), urls
    assert len(urls) == sum(1 for r in results if r.fields[b"status"] == b"ok")
