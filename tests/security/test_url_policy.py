"""The address policy, on the function itself: every refused class, no traffic at all."""

from __future__ import annotations

import ipaddress

import pytest

from app.images.url_policy import PolicyRefusal, UrlPolicy, is_public_address

REFUSED = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.1.2.3",
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "198.18.0.1",
    "192.0.2.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:192.168.0.1",
    "::ffff:100.64.0.1",
    "2002:0a00:0001::1",
    "::10.0.0.1",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_are_refused(address):
    ip = ipaddress.ip_address(address)
    assert not is_public_address(ip)
    with pytest.raises(PolicyRefusal, match="refused by policy") as refusal:
        UrlPolicy().check_address("images.example", ip)
    assert address not in str(refusal.value)  # the message does not say where it pointed


@pytest.mark.parametrize("address", PUBLIC)
def test_global_addresses_are_allowed(address):
    assert is_public_address(ipaddress.ip_address(address))
    UrlPolicy().check_address("images.example", ipaddress.ip_address(address))


def test_private_switch_and_allow_list():
    loopback = ipaddress.ip_address("127.0.0.1")
    UrlPolicy(allow_private=True).check_address("localhost", loopback)
    listed = UrlPolicy(
        allowed_hosts=frozenset({"images.internal", "10.9.9.9"}),
        allowed_networks=(ipaddress.ip_network("10.1.0.0/16"),),
    )
    listed.check_address("images.internal", ipaddress.ip_address("8.8.4.4"))  # a public address
    listed.check_address("anything", ipaddress.ip_address("10.1.2.3"))  # a CIDR entry covers it
    listed.check_address("10.9.9.9", ipaddress.ip_address("10.9.9.9"))  # a listed address literal
    with pytest.raises(PolicyRefusal, match="allow-list"):
        listed.check_address("example.com", ipaddress.ip_address("8.8.8.8"))


def test_an_allow_listed_name_still_needs_a_public_address():
    """Whoever controls a listed name's DNS must not be able to point it inside the cluster."""
    policy = UrlPolicy(allowed_hosts=frozenset({"localhost", "images.internal"}))
    for host, address in [
        ("localhost", "127.0.0.1"),
        ("images.internal", "10.9.9.9"),
        ("images.internal", "::1"),
    ]:
        with pytest.raises(PolicyRefusal, match="refused by policy"):
            policy.check_address(host, ipaddress.ip_address(address))
    # ALLOW_PRIVATE_URLS or a CIDR entry lets it through.
    UrlPolicy(allow_private=True, allowed_hosts=frozenset({"localhost"})).check_address(
        "localhost", ipaddress.ip_address("127.0.0.1")
    )
    UrlPolicy(
        allowed_hosts=frozenset({"localhost"}), allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)
    ).check_address("localhost", ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "100.100.100.200"]
)
def test_metadata_endpoints_need_an_entry_that_names_them(address):
    ip = ipaddress.ip_address(address)
    for policy in (
        UrlPolicy(allow_private=True),
        UrlPolicy(allow_private=True, allowed_hosts=frozenset({"metadata.internal"})),
        UrlPolicy(allow_private=True, allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),)),
    ):
        with pytest.raises(PolicyRefusal, match="refused by policy"):
            policy.check_address("metadata.internal", ip)
    network = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
    UrlPolicy(allowed_networks=(network,)).check_address("metadata.internal", ip)


def test_a_refusal_does_not_tell_whether_the_name_resolved():
    policy = UrlPolicy()
    with pytest.raises(PolicyRefusal) as private:
        policy.check_address("db.example", ipaddress.ip_address("10.0.0.5"))
    assert str(policy.refusal("db.example")) == str(private.value)
    restricted = UrlPolicy(allowed_networks=(ipaddress.ip_network("10.1.0.0/16"),))
    with pytest.raises(PolicyRefusal) as outside:
        restricted.check_address("db.example", ipaddress.ip_address("10.2.0.5"))
    assert str(restricted.refusal("db.example")) == str(outside.value)


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://example.com/a.jpg", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("http:///no-host", "no host"),
        ("http://example.com:99999/", "malformed"),
    ],
)
def test_urls_the_policy_refuses_before_resolving(url, words):
    with pytest.raises(PolicyRefusal, match=words):
        UrlPolicy().check_url(url)


def test_urls_can_be_switched_off():
    with pytest.raises(PolicyRefusal, match="disabled"):
        UrlPolicy(allow_urls=False).check_url("https://example.com/a.jpg")


@pytest.mark.parametrize(
    ("literal", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("fd00::1", "a private address"),
        ("100.64.0.1", "a private address"),
        ("169.254.0.9", "a link-local address"),
        ("::ffff:192.168.0.1", "a private address"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
    ],
)
def test_a_refused_address_literal_says_what_it_is_and_what_would_allow_it(literal, kind):
    """An address the client wrote itself: naming its kind tells it nothing new."""
    with pytest.raises(PolicyRefusal) as refusal:
        UrlPolicy().check_address(literal, ipaddress.ip_address(literal), literal=True)
    message = str(refusal.value)
    assert f"host {literal!r} is {kind} (refused by policy)" in message
    assert "ALLOW_PRIVATE_URLS=true" in message and "URL_ALLOWLIST" in message


def test_a_metadata_literal_names_only_the_allow_list():
    with pytest.raises(PolicyRefusal) as refusal:
        UrlPolicy(allow_private=True).check_address(
            "169.254.169.254", ipaddress.ip_address("169.254.169.254"), True
        )
    assert "is a cloud metadata address (refused by policy); only a URL_ALLOWLIST entry" in str(refusal.value)


def test_a_refused_name_names_the_settings_but_not_what_dns_said():
    messages = set()
    for address in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "fd00::1"):
        with pytest.raises(PolicyRefusal) as refusal:
            UrlPolicy().check_address("images.internal", ipaddress.ip_address(address))
        messages.add(str(refusal.value))
    [message] = messages  # one message, whatever the name resolved to
    assert message.startswith(
        "host 'images.internal' does not resolve to a public address (refused by policy)"
    )
    assert "URL_ALLOWLIST" in message and "ALLOW_PRIVATE_URLS=true" in message
