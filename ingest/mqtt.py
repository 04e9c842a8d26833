"""The MQTT bridge: devices publish readings to Mosquitto, the bridge forwards them to Kafka.

Topic scheme: ``<topic_root>/<district>/<device type>/<device id>``, e.g.
``city-vitals/readings/yuexiu/waterlogging_gauge/yuexiu-wl-07``; the payload is one reading
(JSON object) or several (JSON array). ``device_id`` and ``location.district`` may be left out
of the payload: the topic supplies them, and a payload that contradicts its topic is refused.

Delivery: the bridge subscribes with QoS 1 in a persistent session and acknowledges a message
to Mosquitto only after Kafka has acknowledged its readings (and its dead letters), so a
message is never acknowledged and then lost. While Kafka is away nothing is acknowledged and
Mosquitto holds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest.batch import Rejection, Sorted, Unreadable, latest_allowed, sort_items
from ingest.gateway import BrokerUnavailable, Gateway
from ingest.registry import DeviceRegistry, RegistryUnavailable, check_devices
from schemas.base import utcnow
from services.config import Settings
from services.kafka import Backoff, dead_letter

log = logging.getLogger(__name__)

SOURCE = "ingest.mqtt"


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class Place:
    district: str
    device_type: str
    device_id: str


def parse_topic(root: str, topic: str) -> Place | None:
    """The place a topic names, None when it does not follow the scheme."""
    prefix = root.rstrip("/") + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return Place(*parts)


def items_of(root: str, message: Message) -> list[Any]:
    """The message's readings, with what the topic says filled in; an unusable message is one
    item refused with its reason."""
    place = parse_topic(root, message.topic)
    raw = message.payload.decode(errors="replace")
    if place is None:
        scheme = f"{root}/<district>/<device type>/<device id>"
        return [Unreadable(message.payload, f"topic {message.topic!r} does not match {scheme}")]
    try:
        document = orjson.loads(message.payload)
    except orjson.JSONDecodeError as exc:
        return [Unreadable(message.payload, f"payload is not valid JSON: {exc}")]
    items = document if isinstance(document, list) else [document]
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            out.append(item)  # refused by sort_items with its type
            continue
        device = item.setdefault("device_id", place.device_id)
        if device != place.device_id:
            reason = f"device_id {device!r} contradicts the topic's device {place.device_id!r}"
            out.append(Unreadable(raw.encode(), reason))
            continue
        location = item.get("location")
        if location is None:
            item["location"] = {"district": place.district}
        elif isinstance(location, dict):
            location.setdefault("district", place.district)
        out.append(item)
    return out


def sort_messages(
    root: str, messages: list[Message], not_after: datetime | None = None
) -> tuple[Sorted, list[tuple[Rejection, str]]]:
    """All readings of a batch of messages, and each refusal with the topic it came from."""
    items: list[Any] = []
    owners: list[str] = []
    for message in messages:
        found = items_of(root, message)
        items += found
        owners += [message.topic] * len(found)
    result = sort_items(items, not_after=not_after)
    return result, [(r, owners[r.index]) for r in result.rejected]


def letter_payload(rejection: Rejection) -> bytes | str:
    """What a refused item's dead letter keeps: the item as JSON, or the unreadable text."""
    item = rejection.item
    return item if isinstance(item, str) else orjson.dumps(item)


class Bridge:
    """Subscribes to Mosquitto, forwards to Kafka through the ingest gateway."""

    def __init__(
        self, settings: Settings, gateway: Gateway, registry: DeviceRegistry | None
    ) -> None:
        self.settings = settings
        self.mqtt = settings.mqtt
        self.gateway = gateway
        self.registry = registry
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.forwarded = 0
        self.refused = 0
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.mqtt.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.mqtt.username:
            password = self.mqtt.password.get_secret_value() if self.mqtt.password else None
            client.username_pw_set(self.mqtt.username, password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.client = client
        self.loop: asyncio.AbstractEventLoop | None = None

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused: %s", reason)
            return
        # Everything under the root, so a device on a wrong topic is told why (dead letter)
        # rather than ignored.
        topic = f"{self.mqtt.topic_root.rstrip('/')}/#"
        client.subscribe(topic, qos=1)
        log.info("subscribed to %s at %s:%d (QoS 1)", topic, self.mqtt.host, self.mqtt.port)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        # Called on paho's network thread: hand over to the event loop.
        assert self.loop is not None
        message = Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, message)

    async def _next_batch(self) -> list[Message]:
        batch = [await self.queue.get()]
        while len(batch) < self.mqtt.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def forward(self, batch: list[Message]) -> None:
        """Hand one batch to Kafka (retrying while it is away), then acknowledge it to MQTT."""
        root = self.mqtt.topic_root.rstrip("/")
        backoff = Backoff()
        while True:
            try:
                result, refusals = sort_messages(
                    root, batch, latest_allowed(self.settings.ingest.max_future_seconds, utcnow())
                )
                if self.registry is not None:
                    checked = check_devices(result, self.registry.current())
                    late = checked.rejected[len(result.rejected) :]
                    refusals += [(r, "registry") for r in late]
                    result = checked
                letters = [
                    dead_letter(SOURCE, f"{topic}: {r.reason}", letter_payload(r))
                    for r, topic in refusals
                ]
                sent = await self.gateway.accept(result.accepted, letters)
                break
            except (BrokerUnavailable, RegistryUnavailable) as exc:
                delay = backoff.next()
                log.warning("cannot forward now (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        for message in batch:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)
        self.forwarded += len(sent)
        self.refused += len(refusals)

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.client.connect_async(self.mqtt.host, self.mqtt.port, keepalive=30)
        self.client.loop_start()
        try:
            while not stop.is_set():
                next_batch = asyncio.ensure_future(self._next_batch())
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {next_batch, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                if next_batch not in done:
                    next_batch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await next_batch
                    break
                await self.forward(next_batch.result())
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            log.info(
                "bridge stopped: %d readings forwarded, %d refused", self.forwarded, self.refused
            )


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the MQTT bridge until ``stop`` is set."""
    from services.db import make_pool
    from services.kafka import make_producer, wait_for_broker

    await wait_for_broker(settings.kafka)
    producer = make_producer(settings.kafka)
    await producer.start()
    pool = make_pool(settings.db)
    await pool.open(wait=False)
    registry = None
    refreshing = None
    if settings.ingest.require_registered_devices:
        registry = DeviceRegistry(pool, interval=settings.ingest.registry_refresh_seconds)
        refreshing = asyncio.create_task(registry.run())
    try:
        await Bridge(settings, Gateway(settings, producer), registry).run(stop)
    finally:
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
        await producer.stop()
        await pool.close()
