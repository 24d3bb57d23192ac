"""The URL guard shared by webhooks and videos by URL, with a stubbed resolver: no test sends a packet."""

import pytest

from common.url_guard import UrlRefused, check_public_url


def resolves_to(*addresses):
    calls = []

    def resolver(host, port):
        calls.append((host, port))
        return list(addresses)

    resolver.calls = calls
    return resolver


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",  # private
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.10",
        "127.0.0.1",  # loopback
        "127.9.9.9",
        "169.254.169.254",  # link-local: the cloud metadata service
        "169.254.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "::1",
        "fe80::1",  # IPv6 link-local
        "fe80::1%eth0",
        "fc00::1",  # IPv6 unique local (private)
        "fd12:3456::1",
        "::ffff:10.0.0.1",  # IPv4-mapped private
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused_after_resolution(address):
    resolver = resolves_to(address)
    with pytest.raises(UrlRefused) as refused:
        check_public_url("https://videos.example.com/a.mp4", "url", resolver=resolver)
    assert refused.value.code == "url_address_refused"
    assert "private, loopback or link-local" in str(refused.value)
    assert resolver.calls == [("videos.example.com", 443)]


def test_one_private_address_among_public_ones_is_enough_to_refuse():
    """A name answering both (DNS rebinding's first step) is refused: the connection might pick either."""
    with pytest.raises(UrlRefused):
        check_public_url("https://x.example.com/", "url", resolver=resolves_to("93.184.215.14", "10.0.0.5"))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07::1", "8.8.8.8"])
def test_public_addresses_pass(address):
    assert check_public_url("https://x.example.com/v.mp4", "url", resolver=resolves_to(address)) == [address]


def test_an_allowed_network_lets_that_address_through_and_no_other():
    allowed = "127.0.0.2/32"
    assert check_public_url("http://h:8080/", "url", allowed, resolver=resolves_to("127.0.0.2")) == [
        "127.0.0.2"
    ]
    with pytest.raises(UrlRefused):
        check_public_url("http://h:8080/", "url", allowed, resolver=resolves_to("127.0.0.1"))


@pytest.mark.parametrize(
    ("url", "schemes", "code"),
    [
        ("http://x.example.com/v.mp4", ("https",), "url_scheme_refused"),
        ("ftp://x.example.com/v.mp4", ("https", "http"), "url_scheme_refused"),
        ("file:///etc/passwd", ("https",), "url_scheme_refused"),
        ("https:///nohost", ("https",), "url_scheme_refused"),
        ("https://user:pw@x.example.com/", ("https",), "url_invalid"),
        ("https://x.example.com:99999/", ("https",), "url_invalid"),
        ("https://x.example.com/" + "a" * 3000, ("https",), "url_invalid"),
    ],
)
def test_malformed_or_unwanted_urls_are_refused_before_any_lookup(url, schemes, code):
    resolver = resolves_to("93.184.215.14")
    with pytest.raises(UrlRefused) as refused:
        check_public_url(url, "url", schemes=schemes, resolver=resolver)
    assert refused.value.code == code
    assert resolver.calls == []


def test_a_name_that_does_not_resolve_is_refused_with_its_own_code():
    def fails(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(UrlRefused) as refused:
        check_public_url("https://nowhere.invalid/", "url", resolver=fails)
    assert refused.value.code == "url_unresolvable" and "nowhere.invalid" in str(refused.value)
