"""The access rules alone: tokens and scopes, browser tickets, hosts, origins, exposure."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_server.errors import ConfigError
from stream_server.serve.auth import (
    ADMIN,
    INGEST,
    READ,
    SCOPES,
    TOKEN_ENV,
    TicketIssuer,
    bearer_token,
    exposure_problem,
    host_allowed,
    is_loopback_host,
    load_tokens,
    origin_allowed,
)

ALL = "all-scopes-token-0123456789"
READER = "reader-token-0123456789abcdef"


def test_tokens_come_from_the_environment_and_files_with_their_scopes(tmp_path: Path) -> None:
    file = tmp_path / "ingest.token"
    file.write_text("ingest-token-0123456789abc\n")
    tokens = load_tokens(
        {READ: ["env:READER", f"file:{file}"], INGEST: [f"file:{file}"]},
        {TOKEN_ENV: ALL, "READER": READER},
    )
    assert tokens.enabled
    assert tokens.scopes_of(ALL) == frozenset(SCOPES)
    assert tokens.scopes_of(READER) == {READ}
    assert tokens.scopes_of("ingest-token-0123456789abc") == {READ, INGEST}
    assert tokens.scopes_of(READER + "x") == frozenset()
    assert tokens.scopes_of("") == frozenset() and tokens.scopes_of(None) == frozenset()
    assert not load_tokens({}, {}).enabled
    assert load_tokens({}, {}).scopes_of(ALL) == frozenset()


@pytest.mark.parametrize(
    ("lists", "environ", "key", "needle"),
    [
        ({READ: ["env:MISSING"]}, {}, "auth.read_tokens", "'MISSING' is not set"),
        ({ADMIN: ["file:/nonexistent/t"]}, {}, "auth.admin_tokens", "cannot read the token"),
        ({INGEST: ["plain-token-in-the-config"]}, {}, "auth.ingest_tokens", "'env:NAME'"),
        ({READ: ["env:SHORT"]}, {"SHORT": "abc"}, "auth.read_tokens", "at least 16"),
        ({}, {TOKEN_ENV: "short"}, "auth.GENRECAST_TOKEN", "at least 16"),
    ],
)
def test_bad_token_entries_name_the_key_and_never_the_token(
    lists: dict[str, list[str]], environ: dict[str, str], key: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_tokens(lists, environ)  # type: ignore[arg-type]
    assert raised.value.key == key
    assert needle in str(raised.value)
    for value in environ.values():
        assert value not in str(raised.value)


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_tickets_carry_scopes_until_they_expire_and_cannot_be_forged() -> None:
    issuer = TicketIssuer(lifetime_s=60.0)
    ticket = issuer.issue({READ, INGEST}, now=1000.0)
    assert issuer.scopes_of(ticket, now=1059.0) == {READ, INGEST}
    assert issuer.scopes_of(ticket, now=1061.0) == frozenset()  # expired
    assert TicketIssuer(lifetime_s=60.0).scopes_of(ticket, now=1000.0) == frozenset()  # other key
    head, _, mac = ticket.partition(".")
    forged_payload = "YWRtaW58OTk5OTk5OTk5OQ"  # "admin|9999999999"
    assert issuer.scopes_of(f"{forged_payload}.{mac}", now=1000.0) == frozenset()
    for junk in ("", ".", "a.b", "!!!.???", ticket + "x", "x" * 1000, head):
        assert issuer.scopes_of(junk, now=1000.0) == frozenset()


@pytest.mark.parametrize(
    ("host", "bind", "names", "ok"),
    [
        ("127.0.0.1:8000", "127.0.0.1", (), True),
        ("localhost:8000", "127.0.0.1", (), True),
        ("[::1]:8000", "::1", (), True),
        ("evil.example:8000", "127.0.0.1", (), False),  # DNS rebinding
        ("192.168.1.5:8000", "192.168.1.5", (), True),  # the address it listens on
        ("192.168.1.5:8000", "0.0.0.0", (), False),
        ("genre.lan:8000", "0.0.0.0", ("genre.lan",), True),
        ("GENRE.LAN", "0.0.0.0", ("genre.lan",), True),
        ("anything:1", "0.0.0.0", ("*",), True),
        (None, "127.0.0.1", (), False),
        ("user@127.0.0.1", "127.0.0.1", (), False),
        ("127.0.0.1:notaport", "127.0.0.1", (), False),
    ],
)
def test_host_names_the_server_answers_to(
    host: str | None, bind: str, names: tuple[str, ...], ok: bool
) -> None:
    assert host_allowed(host, bind, names) is ok


@pytest.mark.parametrize(
    ("origin", "host", "origins", "ok"),
    [
        (None, "127.0.0.1:8000", (), True),  # not a browser's cross-site request
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),  # the server's own page
        ("http://127.0.0.1:8501", "127.0.0.1:8000", (), False),  # another local app
        ("https://evil.example", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1:8501", "127.0.0.1:8000", ("http://127.0.0.1:8501",), True),
        ("null", "127.0.0.1:8000", (), False),
        ("file://", "127.0.0.1:8000", (), False),
    ],
)
def test_origins_allowed(origin: str | None, host: str, origins: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, origins) is ok


def test_without_a_token_only_loopback_unless_insecure() -> None:
    none = load_tokens({}, {})
    some = load_tokens({}, {TOKEN_ENV: ALL})
    for host in ("127.0.0.1", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host.strip("[]"))
        assert exposure_problem(host, none, insecure=False) is None
    problem = exposure_problem("0.0.0.0", none, insecure=False)
    assert problem is not None and TOKEN_ENV in problem and "--insecure" in problem
    assert exposure_problem("192.168.1.5", none, insecure=False) is not None
    assert exposure_problem("0.0.0.0", none, insecure=True) is None
    assert exposure_problem("0.0.0.0", some, insecure=False) is None
