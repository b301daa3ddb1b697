"""The address policy, on the function itself: every refused class, no traffic at all."""

from __future__ import annotations

import ipaddress

import pytest

from app.images.url_policy import PolicyRefusal, UrlPolicy, is_public_address

REFUSED = [
    "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.254", "127.0.0.1", "127.1.2.3",
    "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.0.8",
    "198.18.0.1", "192.0.2.1",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "2001:db8::1",
    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:192.168.0.1",
    "::ffff:100.64.0.1", "2002:0a00:0001::1", "::10.0.0.1", "64:ff9b::a00:1", "64:ff9b::7f00:1",
]  # fmt: skip
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
        allowed_hosts=frozenset({"images.internal"}), allowed_networks=(ipaddress.ip_network("10.1.0.0/16"),)
    )
    listed.check_address("images.internal", ipaddress.ip_address("10.9.9.9"))
    listed.check_address("anything", ipaddress.ip_address("10.1.2.3"))
    with pytest.raises(PolicyRefusal, match="allow-list"):
        listed.check_address("example.com", ipaddress.ip_address("8.8.8.8"))


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
