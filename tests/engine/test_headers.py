from proxy_engine.headers import (
    client_response_head, connection_tokens, forwarded_values, upstream_request_head,
)


def triples(*pairs):
    return [(n.lower(), n, v) for n, v in pairs]


def test_connection_tokens_are_lower_cased_and_merged():
    headers = triples((b"Connection", b"Keep-Alive, X-Secret"), (b"connection", b"foo"))
    assert connection_tokens(headers) == {b"keep-alive", b"x-secret", b"foo"}


def test_request_head_strips_hop_by_hop_and_named_headers_but_keeps_host_and_target():
    headers = triples(
        (b"Host", b"app.example.test"), (b"Connection", b"close, X-Secret, X-Forwarded-For"),
        (b"X-Secret", b"1"), (b"Keep-Alive", b"300"), (b"TE", b"trailers"), (b"Upgrade", b"h2c"),
        (b"Proxy-Connection", b"x"), (b"Transfer-Encoding", b"chunked"), (b"Trailer", b"x"),
        (b"Accept", b"*/*"),
    )
    head = upstream_request_head(b"GET", b"/a%2Fb?x=1&y", headers, b"192.0.2.7", b"http",
                                 b"app.example.test", False, b"")
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /a%2Fb?x=1&y HTTP/1.1"
    names = {line.split(b":")[0].lower() for line in lines[1:] if line}
    assert names == {b"host", b"accept", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"}
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in head   # named in Connection, still added by us
    assert head.endswith(b"\r\n\r\n")


def test_untrusted_peer_forwarded_headers_are_replaced():
    headers = triples((b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"https"), (b"X-Real-IP", b"1.2.3.4"))
    assert forwarded_values(headers, b"192.0.2.7", b"http", b"h.test", False) == (
        b"192.0.2.7", b"http", b"h.test", b"192.0.2.7")


def test_trusted_peer_forwarded_for_is_appended_and_others_kept():
    headers = triples((b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-For", b"5.6.7.8"),
                      (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"public.test"))
    assert forwarded_values(headers, b"10.0.0.2", b"http", b"h.test", True) == (
        b"1.2.3.4, 5.6.7.8, 10.0.0.2", b"https", b"public.test", b"5.6.7.8")


def test_request_head_adds_framing_and_allowed_upgrade():
    head = upstream_request_head(b"POST", b"/", triples((b"Host", b"h"), (b"Content-Length", b"9")),
                                 b"1.1.1.1", b"http", b"h", False, b"Content-Length: 3\r\n", b"websocket")
    assert b"Content-Length: 3\r\n" in head and b"Content-Length: 9" not in head
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in head


def test_response_head_strips_hop_by_hop_and_reframes():
    headers = triples((b"Content-Type", b"text/plain"), (b"Connection", b"keep-alive, X-Internal"),
                      (b"X-Internal", b"1"), (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"5"),
                      (b"Content-Length", b"10"))
    head = client_response_head(b"HTTP/1.1 200 OK\r\n", headers, b"Transfer-Encoding: chunked\r\n",
                                b"Connection: close\r\n")
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n")


def test_a_common_connection_value_followed_by_a_custom_one_still_drops_the_named_header():
    headers = triples((b"Connection", b"keep-alive"), (b"Connection", b"X-Secret"))
    assert connection_tokens(headers) == {b"x-secret"}
    assert connection_tokens(triples((b"Connection", b"close"))) == {b"close"}


def test_first_upstream_write_reframes_early_body_bytes_as_chunks():
    from proxy_engine.headers import first_upstream_write

    assert first_upstream_write(b"HEAD\r\n", [b"abc", b"de"], True, True) == [
        b"HEAD\r\n", b"3\r\n", b"abc", b"\r\n", b"2\r\n", b"de", b"\r\n", b"0\r\n\r\n"]
    assert first_upstream_write(b"HEAD\r\n", [b"abc"], False, True) == [b"HEAD\r\n", b"abc"]
    assert first_upstream_write(b"HEAD\r\n", None, True, False) == [b"HEAD\r\n"]
