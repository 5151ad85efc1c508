"""The SMS fallback through a serial 4G modem: AT-command driver (``modem``), the channel
(``SmsChannel``), its config (``SmsConfig``, ``parse_sms_config``) and a modem emulator on a pty
(``emulator``). See docs/uplinks.md."""

from gateway.uplinks.sms.channel import SmsChannel, SmsState
from gateway.uplinks.sms.config import SmsConfig, parse_sms_config

__all__ = ["SmsChannel", "SmsConfig", "SmsState", "parse_sms_config"]
