"""The http guards: IPv6 addresses that lead to an IPv4 address (through NAT64, SIIT, 6to4, Teredo, or the
old IPv4-compatible form) are judged by that IPv4 address, a private one inside refused; `X-Robots-Tag`
directives count when space-separated too."""

from __future__ import annotations

import pytest

from vlmbatch.media.http import is_public_address, opted_out


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::127.0.0.1",
        "64:ff9b::10.0.0.5",
        "64:ff9b:1::a00:5",  # RFC 8215 local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.5",
        "::ffff:0:127.0.0.1",  # SIIT
        "::ffff:0:a9fe:a9fe",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["64:ff9b::8.8.8.8", "2002:808:808::1", "::ffff:0:8.8.8.8"])
def test_ipv6_forms_of_public_ipv4_addresses_stay_public(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    ("values", "expected"),
    [(["noindex noai"], True), (["vlmbatch: noindex noimageai"], True), (["otherbot: noindex noai"], False)],
)
def test_space_separated_robots_directives_are_honoured(values: list[str], expected: bool) -> None:
    assert opted_out(values, "vlmbatch/1.0") is expected
