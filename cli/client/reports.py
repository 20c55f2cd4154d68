"""A device's full report, which the controller keeps and serves in its wire form
(DeviceReport.system and .network), read into our values for `schoolctl devices show`."""

from __future__ import annotations

from cli.client.values import Filesystem, Interface, NetworkReport, SystemReport, WifiLink
from protos.schoolfleet.v1 import fleet_pb2


def system_report(raw: bytes) -> SystemReport:
    """The stored SystemReport."""
    s = fleet_pb2.SystemReport.FromString(raw)
    return SystemReport(
        swap_percent=s.swap_percent if s.HasField("swap_percent") else None,
        filesystems=tuple(
            Filesystem(f.mountpoint, f.fstype, f.total_bytes, f.used_percent) for f in s.filesystems
        ),
        temperatures=tuple((t.chip, t.celsius) for t in s.temperatures),
        battery_percent=s.battery_percent if s.HasField("battery_percent") else None,
        on_ac_power=s.on_ac_power if s.HasField("on_ac_power") else None,
        agent_rss_bytes=s.agent_rss_bytes,
        agent_cpu_percent=s.agent_cpu_percent,
        kiosk_running=s.kiosk_running if s.HasField("kiosk_running") else None,
    )


def network_report(raw: bytes) -> NetworkReport:
    """The stored NetworkReport."""
    n = fleet_pb2.NetworkReport.FromString(raw)
    return NetworkReport(
        interfaces=tuple(
            Interface(
                name=i.name,
                state=i.state,
                mac=i.mac,
                mtu=i.mtu,
                addresses=tuple(i.addresses),
                speed_mbit=i.speed_mbit if i.HasField("speed_mbit") else None,
                rx_bytes=i.rx_bytes,
                tx_bytes=i.tx_bytes,
                rx_errors=i.rx_errors,
                tx_errors=i.tx_errors,
                wireless=i.wireless,
            )
            for i in n.interfaces
        ),
        default_gateway=n.default_gateway,
        default_interface=n.default_interface,
        wifi=tuple(
            WifiLink(w.interface, w.bssid, w.ssid, w.frequency_mhz, w.signal_dbm) for w in n.wifi
        ),
        wifi_status=n.wifi_status,
    )
