"""The MQTT topic tree and the JSON documents on it (documented in docs/uplinks.md).

Topics, for site ``<site>`` under the prefix ``gasguard`` (configurable):

==============================  ===========  ======  =========================================
topic                           direction    QoS     payload
==============================  ===========  ======  =========================================
``gasguard/<site>/event``       up           1       one event (``EVENT_SCHEMA``), not retained
``gasguard/<site>/status``      up           1       retained site status (``STATUS_SCHEMA``);
                                                     Last Will: retained ``{"state": "offline"}``
``gasguard/<site>/heartbeat``   up           0       ``{"site_id", "utc", "seq", "pending"}``
``gasguard/<site>/ack``         down         1       ``{"event_id": "...", "seq": N}`` from the
                                                     centre: the event is delivered
``gasguard/<site>/cmd``         down         1       ``{"cmd": "status"}``: publish the status
                                                     now. Nothing else is accepted.
==============================  ===========  ======  =========================================

Everything here is pure (no I/O), shared by the channel and by ``gasguard receive``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paho.mqtt.properties import Properties

from gateway.core.kinds import is_alarm_class
from gateway.store.events import details_json
from gateway.uplinks.outbox import OutboxItem

EVENT_SCHEMA_ID = "gasguard.event/1"
STATUS_SCHEMA_ID = "gasguard.status/1"
MAX_DOWNLINK_BYTES = 4096  # an ack or a status request is tiny; anything bigger is refused

# JSON Schema (draft 2020-12) of an event message: what a receiving centre can rely on.
EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": EVENT_SCHEMA_ID,
    "title": "gasguard event",
    "type": "object",
    "required": ["schema", "site_id", "event_id", "seq", "kind", "class", "source", "utc"],
    "properties": {
        "schema": {"const": EVENT_SCHEMA_ID},
        "site_id": {"type": "string", "minLength": 1},
        "event_id": {
            "type": "string",
            "description": "unique, stable across restarts: '<site_id>-<seq>'; de-duplicate by it",
        },
        "seq": {"type": "integer", "minimum": 1, "description": "per-site sequence number"},
        "kind": {
            "type": "string",
            "description": "alarm.raised, alarm.cleared, fault.raised, fault.cleared, "
            "valve.closing, valve.closed, valve.opened, valve.failed, operator.reset, "
            "operator.reset_refused, operator.silence, config.applied, config.rejected, "
            "controller.started, uplink.* ...",
        },
        "class": {"enum": ["alarm", "other"]},
        "source": {"type": "string", "description": "detector, valve or 'site'"},
        "utc": {"type": "string", "description": "ISO 8601 UTC, e.g. 2025-01-31T08:15:02.125Z"},
        "details": {"type": "object"},
        "text_zh": {"type": "string", "description": "the event in Chinese, for people"},
        "text": {"type": "string", "description": "the event in English, for people"},
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": STATUS_SCHEMA_ID,
    "title": "gasguard site status (retained)",
    "type": "object",
    "required": ["schema", "site_id", "state"],
    "properties": {
        "schema": {"const": STATUS_SCHEMA_ID},
        "site_id": {"type": "string"},
        "state": {"enum": ["online", "offline"]},
        "utc": {"type": "string"},
        "alarm": {"type": "boolean"},
        "fault": {"type": "boolean"},
        "detectors": {
            "type": "object",
            "description": "by name: {label (display name, any language), state, lel (null when "
            "not known), over_range, zone, latched, fault, service (installed, calibrated, "
            "calibration_due, calibration_due_days, end_of_life, end_of_life_days, overdue, "
            "text; null dates when not recorded)}",
        },
        "valves": {
            "type": "object",
            "description": "by name: {label, state (open, closed, opening, closing, stuck-open, "
            "stuck-closed), commanded, feedback, failed, reason}",
        },
        "fans": {
            "type": "object",
            "description": "by name: {label, commanded (on, off), running (the run-feedback "
            "contact, null without one), failed, reason}",
        },
        "power": {
            "type": "object",
            "description": "{mains: ok, failed or null (no contact wired), battery: ok, low or "
            "null}",
        },
        "delivery": {
            "type": ["object", "null"],
            "description": "{channels: {name: {24h, 7d: {count, p50_s, p95_s, max_s, "
            "availability}}}, warnings: [text]}: alarm-class events raised -> acknowledged by "
            "each channel's receiver, and the share of the time each path was up",
        },
        "alarms": {"type": "array", "items": {"type": "string"}},
        "faults": {"type": "array", "items": {"type": "string"}},
    },
}


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one site under ``prefix``."""

    prefix: str
    site_id: str

    def _t(self, leaf: str) -> str:
        return f"{self.prefix}/{self.site_id}/{leaf}"

    @property
    def event(self) -> str:
        return self._t("event")

    @property
    def status(self) -> str:
        return self._t("status")

    @property
    def heartbeat(self) -> str:
        return self._t("heartbeat")

    @property
    def ack(self) -> str:
        return self._t("ack")

    @property
    def cmd(self) -> str:
        return self._t("cmd")


def iso_utc(utc: float) -> str:
    """``utc`` seconds since the epoch as ISO 8601 UTC with milliseconds and a ``Z``."""
    if not math.isfinite(utc):
        return "unknown"
    return (
        datetime.fromtimestamp(utc, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


# -- texts for people -----------------------------------------------------------------------------


def _lel(details: dict[str, Any]) -> str:
    value = details.get("lel")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if details.get("over_range") is True:
            return f"≥{value:.0f} %LEL"  # at or beyond the detector's full scale
        return f"{value:.1f} %LEL"
    return ""


def event_texts(kind: str, source: str, details: dict[str, Any]) -> tuple[str, str]:
    """The event for people: (Chinese, English). Every kind gets a text; unknown kinds get a
    generic one naming the kind, so nothing reaches a receiver unexplained."""
    lel = _lel(details)
    over = details.get("over_range") is True
    at = f"（{lel}{'，超量程' if over else ''}）" if lel else ""
    at_en = f" ({lel}{', over range' if over else ''})" if lel else ""
    level = str(details.get("level", ""))
    fault = str(details.get("fault", ""))
    if kind == "alarm.raised":
        if level == "high":
            return f"燃气泄漏高限报警：{source}{at}", f"High gas alarm: {source}{at_en}"
        return f"燃气泄漏低限报警：{source}{at}", f"Low gas alarm: {source}{at_en}"
    if kind == "alarm.cleared":
        return (
            f"燃气浓度已恢复正常：{source}{at}（报警保持至现场复位）",
            f"Gas back to normal at {source}{at_en} (alarm latched until local reset)",
        )
    if kind == "fault.raised" and fault == "orphan_latch":
        return (
            f"已删除探测器的报警仍锁定：{source}（{details.get('sensor')}），所有切断阀保持关闭，"
            "需技术人员现场确认后解除",
            f"Alarm still latched on removed detector {source} ({details.get('sensor')}): every "
            "valve stays closed until a technician clears it on site",
        )
    if kind == "operator.orphan_cleared":
        return (
            f"技术人员 {details.get('operator')} 解除已删除探测器 {source} 的锁定报警："
            f"{details.get('reason')}",
            f"Technician {details.get('operator')} cleared the latch of removed detector "
            f"{source}: {details.get('reason')}",
        )
    if kind == "events.lost":
        return (
            f"记录丢失：{details.get('count')} 条事件未能保存或上传"
            f"（序号 {details.get('first_seq', '?')}–{details.get('last_seq', '?')}）",
            f"Events lost: {details.get('count')} could not be stored or forwarded",
        )
    if kind == "uplink.events_missing":
        return (
            f"上传缺失：事件 {details.get('first_seq')}–{details.get('last_seq')} 未送达",
            f"Events {details.get('first_seq')}-{details.get('last_seq')} never reached the "
            "uplinks",
        )
    if kind == "fault.raised":
        if fault == "comm":
            return f"探测器通信故障：{source}", f"Detector communication fault: {source}"
        if fault == "valve":
            return f"切断阀故障：{source}", f"Shutoff valve fault: {source}"
        if fault == "fan":
            return f"排风机故障：{source}", f"Exhaust fan fault: {source}"
        text = details.get("text")
        extra = f"（{text}）" if text else ""
        return f"探测器故障：{source}{extra}", f"Detector fault: {source}" + (
            f" ({text})" if text else ""
        )
    if kind == "fault.cleared":
        return f"故障已恢复：{source}", f"Fault cleared: {source}"
    if kind == "valve.closing":
        return f"紧急切断阀正在关闭：{source}", f"Shutoff valve closing: {source}"
    if kind == "valve.closed":
        return f"紧急切断阀已关闭：{source}", f"Shutoff valve closed: {source}"
    if kind == "valve.opened":
        return (
            f"紧急切断阀已打开（现场人工复位）：{source}",
            f"Shutoff valve opened by local reset: {source}",
        )
    if kind == "valve.failed":
        return f"紧急切断阀故障：{source}", f"Shutoff valve failed: {source}"
    if kind == "operator.reset":
        return "现场人工复位", "Local manual reset"
    if kind == "operator.reset_refused":
        return "现场复位被拒绝（仍有报警或故障）", "Local reset refused (alarm or fault present)"
    if kind == "operator.silence":
        return "声光报警已消音", "Sounder silenced"
    if kind == "controller.started":
        return (
            "控制器已启动（燃气保持关闭，等待现场复位）",
            "Controller started (gas off until reset)",
        )
    if kind == "config.applied":
        return "配置已生效", "Configuration applied"
    if kind == "config.rejected":
        return "配置被拒绝，原配置继续有效", "Configuration rejected, the running one stays"
    if kind == "uplink.outbox_filling":
        return (
            "上传队列积压：报警未被接收方确认",
            "Outbox filling: events not acknowledged by their receivers",
        )
    if kind == "uplink.outbox_ok":
        return "上传队列恢复正常", "Outbox back to normal"
    if kind == "uplink.delivery_slow":
        return (
            f"报警上传超时：{source} 通道 {details.get('after_s')} 秒后才确认",
            f"Alarm delivery slow: {source} acknowledged after {details.get('after_s')} s",
        )
    if kind == "uplink.availability_low":
        return (
            f"上传通道可用率低于 95%：{source}",
            f"Uplink availability below 95 %: {source}",
        )
    if kind == "hazard.opened":
        remark = str(details.get("remark", ""))
        return (
            f"登记隐患 {source}：{remark}（整改期限 {details.get('deadline', '')}）",
            f"Hazard {source} opened: {remark} (due {details.get('deadline', '')})",
        )
    if kind == "hazard.overdue":
        return f"隐患整改逾期：{source}", f"Hazard overdue: {source}"
    if kind == "hazard.closed":
        return f"隐患已整改销号：{source}", f"Hazard closed: {source}"
    if kind in ("cylinder.recorded", "cylinder.changed"):
        state = {"in-use": "在用", "spare": "备用", "empty": "空瓶"}.get(
            str(details.get("state")), str(details.get("state"))
        )
        return (
            f"液化气钢瓶登记（一瓶一码）：{source}，{details.get('kg')} kg，{state}，"
            f"{details.get('place')}",
            f"LPG cylinder {source}: {details.get('kg')} kg, {details.get('state')} at "
            f"{details.get('place')}",
        )
    if kind == "cylinder.removed":
        return f"液化气钢瓶已离场：{source}", f"LPG cylinder left the site: {source}"
    if kind == "detector.service_due":
        text = str(details.get("text", ""))
        if text.startswith("end of service life"):
            zh = f"探测器已超过使用年限，请更换：{source}"
        else:
            zh = f"探测器标定已过期，请尽快标定：{source}"
        return zh, f"Detector needs service: {source} ({text})"
    if kind == "detector.service_ok":
        return f"探测器维护已完成：{source}", f"Detector service done: {source}"
    if kind == "fan.started":
        why = str(details.get("reason", ""))
        return (
            f"排风机已联动启动：{source}" + (f"（{why}）" if why else ""),
            f"Exhaust fan started: {source}" + (f" ({why})" if why else ""),
        )
    if kind == "fan.run_on":
        return f"排风机延时运行：{source}", f"Exhaust fan running on: {source}"
    if kind == "fan.stopped":
        return f"排风机已停止：{source}", f"Exhaust fan stopped: {source}"
    if kind == "fan.failed":
        return (
            f"排风机故障（未按指令运行）：{source}",
            f"Exhaust fan failed to run: {source}",
        )
    if kind == "power.mains_failed":
        return "主电源故障（备用电源供电）", "Mains power failed (running on the backup battery)"
    if kind == "power.restored":
        return "主电源已恢复", "Mains power restored"
    if kind == "power.battery_low":
        return (
            "备用电源电量低：紧急切断阀已关闭",
            "Backup battery low: shutoff valves closed",
        )
    if kind == "power.battery_ok":
        return "备用电源已恢复正常", "Backup battery back to normal"
    return f"事件 {kind}：{source}", f"Event {kind}: {source}"


# -- up-link documents ----------------------------------------------------------------------------


def event_message(site_id: str, item: OutboxItem) -> dict[str, Any]:
    """The JSON document published for one outbox item (``EVENT_SCHEMA``)."""
    details = json.loads(details_json(item.details))  # strict JSON: no NaN, no odd types
    text_zh, text_en = event_texts(item.kind, item.source, details)
    return {
        "schema": EVENT_SCHEMA_ID,
        "site_id": site_id,
        "event_id": item.event_id,
        "seq": item.seq,
        "kind": item.kind,
        "class": "alarm" if is_alarm_class(item.kind) else "other",
        "source": item.source,
        "utc": iso_utc(item.utc),
        "details": details,
        "text_zh": text_zh,
        "text": text_en,
    }


def encode(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (Chinese as characters, not escapes)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


def status_message(site_id: str, status: dict[str, Any], utc: float) -> dict[str, Any]:
    """The retained status document from the controller's status dict (``STATUS_SCHEMA``):
    detectors and valves keyed by name so dashboards (Home Assistant templates) can address
    them directly. A detector without a current value has ``lel: null``, never a stale one."""
    detectors: dict[str, Any] = {}
    for d in status.get("detectors", []):
        if isinstance(d, dict) and "name" in d:
            detectors[str(d["name"])] = {
                "label": str(d.get("label") or d["name"]),
                "state": d.get("state"),
                "lel": d.get("lel"),
                "over_range": d.get("over_range") is True,
                "zone": d.get("zone"),
                "latched": d.get("latched"),
                "fault": d.get("fault"),
                "service": d.get("service"),
            }
    valves: dict[str, Any] = {}
    for v in status.get("valves", []):
        if isinstance(v, dict) and "name" in v:
            valves[str(v["name"])] = {
                "label": str(v.get("label") or v["name"]),
                "state": valve_state(v),
                "commanded": v.get("commanded"),
                "feedback": v.get("feedback"),
                "failed": v.get("failed"),
                "reason": v.get("reason"),
            }
    fans: dict[str, Any] = {}
    for f in status.get("fans", []):
        if isinstance(f, dict) and "name" in f:
            fans[str(f["name"])] = {
                "label": str(f.get("label") or f["name"]),
                "commanded": f.get("commanded"),
                "running": f.get("running"),
                "failed": f.get("failed"),
                "reason": f.get("reason"),
            }
    power = status.get("power")
    alarms = [str(a) for a in status.get("alarms", [])]
    faults = [str(f) for f in status.get("faults", [])]
    return {
        "schema": STATUS_SCHEMA_ID,
        "site_id": site_id,
        "state": "online",
        "utc": iso_utc(utc),
        "simulated": bool(status.get("simulated", False)),
        "alarm": bool(alarms),
        "fault": bool(faults),
        "detectors": detectors,
        "valves": valves,
        "fans": fans,
        "power": dict(power) if isinstance(power, dict) else {"mains": None, "battery": None},
        "delivery": status.get("delivery"),
        "alarms": alarms,
        "faults": faults,
    }


def valve_state(valve: dict[str, Any]) -> str:
    """open, closed, opening or closing, from the feedback contact when there is one (what
    the valve body does), else from the command. A valve the controller declared failed is
    ``stuck-open`` (told to close, the contact still says open: the gas may still flow) or
    ``stuck-closed``, never "closing": a stuck valve is a problem, not a movement."""
    commanded = valve.get("commanded")
    feedback = valve.get("feedback")
    if valve.get("failed") is True:
        if feedback == "open":
            return "stuck-open"
        if feedback == "closed" and commanded == "open":
            return "stuck-closed"
    if feedback in ("open", "closed"):
        if commanded == "closed" and feedback == "open":
            return "closing"
        if commanded == "open" and feedback == "closed":
            return "opening"
        return str(feedback)
    return "open" if commanded == "open" else "closed"


def offline_message(site_id: str) -> dict[str, Any]:
    """The Last Will (and the clean-shutdown status): the site's gateway is not connected."""
    return {"schema": STATUS_SCHEMA_ID, "site_id": site_id, "state": "offline"}


def status_fingerprint(document: dict[str, Any]) -> str:
    """The status without its time stamp: equal fingerprints need not be re-published."""
    return json.dumps({k: v for k, v in document.items() if k != "utc"}, sort_keys=True)


# -- parsing (down-link at the gateway, up-link at the receiver) ----------------------------------


def mqtt_properties(packet_type: int) -> Properties:
    """An empty MQTT 5 properties block for ``packet_type`` (``PacketTypes.CONNECT`` ...)."""
    props: Properties = Properties(packet_type)  # type: ignore[no-untyped-call]
    return props


class MessageError(ValueError):
    """A message that does not follow the schema; the text says what is wrong."""


def _object(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_DOWNLINK_BYTES and what != "event":
        raise MessageError(f"{what}: {len(payload)} bytes, at most {MAX_DOWNLINK_BYTES} allowed")
    return json_object(payload, what)


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    """``payload`` as a JSON object (UTF-8). Raises MessageError naming ``what``."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MessageError(f"{what}: not UTF-8 JSON ({e})") from None
    if not isinstance(document, dict):
        raise MessageError(f"{what}: {type(document).__name__}, must be a JSON object")
    return document


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_ack(payload: bytes, site_id: str) -> int:
    """The seq a centre acknowledges on the ack topic: ``{"event_id": "<site>-<seq>",
    "seq": <seq>}``. Both must be present and agree (a mangled ack must not delete another
    event from the outbox). Raises MessageError."""
    doc = _object(payload, "ack")
    seq = _int(doc.get("seq"))
    event_id = doc.get("event_id")
    if seq is None or seq < 1:
        raise MessageError(f"ack: seq {doc.get('seq')!r}, must be a whole number >= 1")
    if event_id != f"{site_id}-{seq}":
        raise MessageError(f"ack: event_id {event_id!r} does not match seq {seq} of {site_id}")
    return seq


def parse_command(payload: bytes) -> str:
    """The one down-link command: ``{"cmd": "status"}`` -> "status". Anything else raises
    MessageError: no command can open a valve or change the configuration."""
    doc = _object(payload, "cmd")
    cmd = doc.get("cmd")
    if cmd != "status":
        raise MessageError(f"cmd: {cmd!r} is not allowed; the only command is 'status'")
    extra = sorted(k for k in doc if k != "cmd")
    if extra:
        raise MessageError(f"cmd: unexpected keys {extra}; a status request is {{'cmd': 'status'}}")
    return "status"


def parse_event(payload: bytes, site_id: str) -> dict[str, Any]:
    """An event message checked against ``EVENT_SCHEMA`` (at the receiving centre). Raises
    MessageError naming the field."""
    doc = _object(payload, "event")
    if doc.get("schema") != EVENT_SCHEMA_ID:
        raise MessageError(f"event: schema {doc.get('schema')!r}, expected {EVENT_SCHEMA_ID!r}")
    if doc.get("site_id") != site_id:
        raise MessageError(f"event: site_id {doc.get('site_id')!r}, expected {site_id!r}")
    seq = _int(doc.get("seq"))
    if seq is None or seq < 1:
        raise MessageError(f"event: seq {doc.get('seq')!r}, must be a whole number >= 1")
    if doc.get("event_id") != f"{site_id}-{seq}":
        raise MessageError(f"event: event_id {doc.get('event_id')!r} does not match seq {seq}")
    for name in ("kind", "source", "utc"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise MessageError(f"event: {name} {doc.get(name)!r}, must be a non-empty string")
    if doc.get("class") not in ("alarm", "other"):
        raise MessageError(f"event: class {doc.get('class')!r}, must be 'alarm' or 'other'")
    if "details" in doc and not isinstance(doc["details"], dict):
        raise MessageError(f"event: details {doc['details']!r}, must be a JSON object")
    for name in ("text_zh", "text"):
        if name in doc and not isinstance(doc[name], str):
            raise MessageError(f"event: {name} {doc[name]!r}, must be a string")
    return doc


def ack_message(site_id: str, seq: int) -> dict[str, Any]:
    """What a centre publishes on the ack topic once it has an event."""
    return {"event_id": f"{site_id}-{seq}", "seq": seq}
