"""The GB/T 26875.3-2011 uplink to a fire remote-monitoring centre: frame codec (``codec``), the
TCP client channel (``Gb26875Channel``), its config (``Gb26875Config``, ``parse_gb26875_config``)
and the test centre (``centre``, ``gasguard gb-centre``). See docs/uplinks.md."""

from gateway.uplinks.gb26875.channel import ChannelState, Gb26875Channel
from gateway.uplinks.gb26875.config import Gb26875Config, parse_gb26875_config

__all__ = ["ChannelState", "Gb26875Channel", "Gb26875Config", "parse_gb26875_config"]
