"""Wi-Fi association from nl80211 bytes as the kernel sends them.

This machine has no wireless hardware and no mac80211_hwsim, so the reply a
station's kernel gives to NL80211_CMD_GET_SCAN is built here byte by byte (the
layout of linux/nl80211.h) and decoded by pyroute2's own nl80211 parser, the
path the agent takes on a real panel.
"""

from __future__ import annotations

import struct

from pyroute2.netlink.nl80211 import nl80211cmd

from agent.network import wifi_from_bss

NL80211_CMD_NEW_SCAN_RESULTS = 34
NL80211_ATTR_IFINDEX = 3
NL80211_ATTR_BSS = 47
NL80211_BSS_BSSID = 1
NL80211_BSS_FREQUENCY = 2
NL80211_BSS_INFORMATION_ELEMENTS = 6
NL80211_BSS_SIGNAL_MBM = 7
NL80211_BSS_STATUS = 9
ASSOCIATED = 1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _scan_reply(bssid: bytes, ssid: bytes, freq: int, mbm: int) -> bytes:
    # Information elements: SSID (id 0), then supported rates (id 1), as beacons carry.
    ies = bytes([0, len(ssid)]) + ssid + bytes([1, 2, 0x8C, 0x12])
    bss = b"".join(
        [
            _attr(NL80211_BSS_BSSID, bssid),
            _attr(NL80211_BSS_FREQUENCY, struct.pack("I", freq)),
            _attr(NL80211_BSS_INFORMATION_ELEMENTS, ies),
            _attr(NL80211_BSS_SIGNAL_MBM, struct.pack("i", mbm)),
            _attr(NL80211_BSS_STATUS, struct.pack("I", ASSOCIATED)),
        ]
    )
    attrs = _attr(NL80211_ATTR_IFINDEX, struct.pack("I", 3)) + _attr(
        NL80211_ATTR_BSS | 0x8000,
        bss,  # NLA_F_NESTED
    )
    genl = struct.pack("BBH", NL80211_CMD_NEW_SCAN_RESULTS, 1, 0)
    length = 16 + len(genl) + len(attrs)
    return struct.pack("IHHII", length, 0x1C, 2, 1, 0) + genl + attrs


def test_an_association_is_read_from_kernel_bytes() -> None:
    reply = nl80211cmd(_scan_reply(bytes.fromhex("a0b1c2d3e4f5"), b"school-1234", 5180, -5800))
    reply.decode()
    wifi = wifi_from_bss("wlp3s0", reply.get_attr("NL80211_ATTR_BSS"))
    assert wifi.interface == "wlp3s0"
    assert wifi.bssid == "a0:b1:c2:d3:e4:f5"
    assert wifi.ssid == "school-1234"
    assert wifi.frequency_mhz == 5180
    assert wifi.signal_dbm == -58.0


def test_an_ssid_that_is_not_utf8_is_still_reported() -> None:
    reply = nl80211cmd(_scan_reply(bytes(6), b"caf\xe9", 2412, -7150))
    reply.decode()
    wifi = wifi_from_bss("wlan0", reply.get_attr("NL80211_ATTR_BSS"))
    assert wifi.ssid == "caf\ufffd"
    assert (wifi.frequency_mhz, wifi.signal_dbm) == (2412, -71.5)
