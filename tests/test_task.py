"""An entry becomes a request exactly as the contract's table says, or a reason it cannot."""

from __future__ import annotations

import json

import pytest

from ratedispatch import InvalidTask, Priority, build_request, parse_entry

BASE = "https://api.example.com"


def request_for(fields: dict[str, str], base: str = BASE, token: str | None = None) -> str:
    task = parse_entry("1700000000000-7", fields)
    return str(build_request(task, base, token=token).url)


def test_plain_entry_becomes_a_get_with_query_parameters_and_idempotency_key() -> None:
    task = parse_entry("1700000000000-7", {b"user_id": b"123", b"endpoint": b"/profile"})
    request = build_request(task, BASE, token="s3cret")
    assert request.method == "GET"
    assert str(request.url) == "https://api.example.com/profile?user_id=123"
    assert request.headers["Idempotency-Key"] == "1700000000000-7"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert task.priority is Priority.NORMAL


def test_method_priority_body_headers_and_key_are_honoured() -> None:
    task = parse_entry(
        "1-1",
        {
            "endpoint": "/orders",
            "method": "post",
            "priority": "HIGH",
            "body": '{"amount": 5}',
            "headers": json.dumps({"X-Trace": "abc"}),
            "idempotency_key": "order-77",
        },
    )
    request = build_request(task, BASE + "/v1/")
    assert (request.method, task.priority) == ("POST", Priority.HIGH)
    assert str(request.url) == "https://api.example.com/v1/orders"
    assert request.content == b'{"amount": 5}'
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Trace"] == "abc"
    assert request.headers["Idempotency-Key"] == "order-77"
    assert "Authorization" not in request.headers


def test_query_in_the_endpoint_is_kept_and_merged_with_fields() -> None:
    assert request_for({"endpoint": "/search?q=a", "page": "2"}) == (
        "https://api.example.com/search?q=a&page=2"
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"user_id": "1"}, "no 'endpoint'"),
        ({"endpoint": "profile"}, "not a path"),
        ({"endpoint": "http://evil.example/x"}, "not a path"),
        ({"endpoint": "//evil.example/x"}, "not a path"),
        ({"endpoint": "/\\evil.example"}, "backslash"),
        ({"endpoint": "/a/../admin"}, "'..'"),
        ({"endpoint": "/a/%2e%2E/admin"}, "'..'"),
        ({"endpoint": "/a/%5cb"}, "'..'"),
        ({"endpoint": "/a\r\nHost: evil"}, "control character"),
        ({"endpoint": "/a b"}, "whitespace"),
        ({"endpoint": "/a#frag"}, "fragment"),
        ({"endpoint": "/a", "method": "TRACE"}, "method 'TRACE'"),
        ({"endpoint": "/a", "priority": "urgent"}, "priority 'urgent'"),
        ({"endpoint": "/a", "body": "{nope"}, "'body' is not valid JSON"),
        ({"endpoint": "/a", "headers": "[1]"}, "JSON object"),
        ({"endpoint": "/a", "headers": "{bad"}, "'headers' is not valid JSON"),
        ({"endpoint": "/a", "headers": '{"Host": "evil"}'}, "'Host' may not be set"),
        ({"endpoint": "/a", "headers": '{"authorization": "x"}'}, "may not be set"),
        ({"endpoint": "/a", "headers": '{"Transfer-Encoding": "chunked"}'}, "may not be set"),
        ({"endpoint": "/a", "headers": '{"X-A": "1\\r\\nX-B: 2"}'}, "CR, LF"),
        ({"endpoint": "/a", "headers": '{"X A": "1"}'}, "not a valid HTTP header name"),
        ({"endpoint": "/a", "headers": '{"X-A\\n": "1"}'}, "not a valid HTTP header name"),
        ({"endpoint": "/a", "headers": '{"X-A": 1}'}, "string value"),
        ({"endpoint": "/a", "headers": '{"X-A": "caf\\u00e9"}'}, "non-ASCII"),
        ({"endpoint": "/a", "idempotency_key": "k\nx"}, "CR, LF"),
        ({"endpoint": "/a", "idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_invalid_entries_are_refused_with_a_reason(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidTask) as caught:
        parse_entry("1-1", fields)
    assert reason in caught.value.reason


TENANT = "https://api.example.com/v1/tenant-a"


@pytest.mark.parametrize(
    "endpoint",
    [
        "/ok/..%2f..%2fetc",  # '..' once a server decodes %2F
        "/a/%2e%2e%2fb",
        "/a/%252e%252e/b",  # encoded twice
        "/a/..%5cb",  # a backslash is a separator on some servers
        "/a%2f..%2fb",
        "/.",
        "/a/.%2fb",
        "/a/..;/b",  # Tomcat and Jetty drop ';params' from a segment, leaving '..'
        "/a/..%3bx/b",
        "/a/..%3fx",  # a '?' decoded by a proxy ends the path at '..'
    ],
)
def test_an_endpoint_that_decodes_to_a_dot_segment_is_refused(endpoint: str) -> None:
    with pytest.raises(InvalidTask) as caught:
        parse_entry("1-1", {"endpoint": endpoint})
    assert "segment once percent-decoded" in caught.value.reason
    assert "resolve the path before enqueueing" in caught.value.reason


@pytest.mark.parametrize(
    "endpoint",
    ["/projects/group%2Fproject", "/a/b%2Fc/d", "/files/a.b", "/x/..foo", "/x/foo..", "/x/.../y"],
)
def test_encoded_slashes_and_dotted_names_without_a_dot_segment_are_kept(endpoint: str) -> None:
    assert request_for({"endpoint": endpoint}, base=TENANT) == TENANT + endpoint


def test_an_endpoint_encoded_too_many_times_is_refused_without_decoding_it_to_the_end() -> None:
    # Each decoding peels one level of '%25' nesting: a bounded loop keeps a hostile entry cheap.
    for endpoint in ("/a/%252525252e", "/a/%" + "25" * 10_000 + "2e"):
        with pytest.raises(InvalidTask, match="still percent-encoded after 4 decodings"):
            parse_entry("1-1", {"endpoint": endpoint})
    assert request_for({"endpoint": "/a/b%25252541"}, base=TENANT) == TENANT + "/a/b%25252541"


def test_non_utf8_values_and_names_are_refused() -> None:
    with pytest.raises(InvalidTask, match="not valid UTF-8"):
        parse_entry("1-1", {b"endpoint": b"/a\xff"})
    with pytest.raises(InvalidTask, match="name"):
        parse_entry("1-1", {b"endpoint": b"/a", b"\xfe": b"1"})


def test_body_over_the_cap_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidTask, match="over the limit of 10"):
        parse_entry("1-1", {"endpoint": "/a", "body": '"' + "x" * 20 + '"'}, max_body_bytes=10)
    assert parse_entry("1-1", {"endpoint": "/a", "body": '"abcdefgh"'}, max_body_bytes=10).body


def test_request_never_leaves_the_base_url() -> None:
    for endpoint in ("/@evil.example", "/x?next=http://evil.example", "/%2F%2Fevil.example"):
        url = request_for({"endpoint": endpoint}, base="http://api.test:8080/v2")
        assert url.startswith("http://api.test:8080/v2/")


def test_a_query_in_the_endpoint_is_merged_and_the_user_agent_names_ratedispatch() -> None:
    task = parse_entry("1-1", {"endpoint": "/a?x=1", "y": "two words"})
    request = build_request(task, BASE, timeout=3)
    assert str(request.url) == "https://api.example.com/a?x=1&y=two+words"
    assert request.headers["User-Agent"].startswith("ratedispatch/")
    assert request.extensions["timeout"]["read"] == 3
    own = parse_entry("1-2", {"endpoint": "/a", "headers": json.dumps({"User-Agent": "mine/1"})})
    assert build_request(own, BASE).headers.get_list("User-Agent") == ["mine/1"]
