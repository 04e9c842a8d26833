"""Replaying dead letters once their cause is fixed: each payload goes through the same checks
as new input and, if it passes now, onto the topic it was meant for."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from ingest.batch import MalformedBatch, parse_body, sort_items
from ingest.gateway import BrokerUnavailable, Gateway
from schemas.alerts import AlertTransition
from schemas.base import describe_errors
from schemas.readings import FrameError, frame_readings, read_frame
from services.deadletters import service
from services.deadletters.models import LetterRead, ReplayOutcome, ReplayResult
from services.kafka import encode

Conn = service.Conn


def _items(payload: str) -> list[Any]:
    """A letter's readings: one item, or the items of a whole refused batch body."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedBatch(f"not valid JSON: {exc}") from exc
    if isinstance(document, list) or (isinstance(document, dict) and "readings" in document):
        return parse_body(payload.encode(), max_items=100_000)
    if isinstance(document, dict) and "places" in document:  # a frame off the readings topic
        try:
            return frame_readings(read_frame(payload.encode()))
        except ValidationError as exc:
            raise MalformedBatch(f"not a valid frame of readings: {describe_errors(exc)}") from exc
        except FrameError as exc:
            raise MalformedBatch(f"not a valid frame of readings: {exc}") from exc
    return [document]


async def _replay_readings(gateway: Gateway, letter: LetterRead) -> ReplayOutcome:
    try:
        items = _items(letter.payload)
    except MalformedBatch as exc:
        return ReplayOutcome(letter_id=letter.letter_id, replayed=False, outcome=f"refused: {exc}")
    result = sort_items(items)
    sent = await gateway.accept(result.accepted, []) if result.accepted else []
    parts = [f"accepted {len(sent)}", f"duplicates {len(result.accepted) - len(sent)}"]
    if result.rejected:
        parts.append(f"still refused {len(result.rejected)}: {result.rejected[0].reason}")
    return ReplayOutcome(
        letter_id=letter.letter_id, replayed=bool(result.accepted), outcome="; ".join(parts)
    )


async def _replay_transition(gateway: Gateway, letter: LetterRead) -> ReplayOutcome:
    try:
        transition = AlertTransition.model_validate_json(letter.payload)
    except ValidationError as exc:
        reason = f"refused: {describe_errors(exc)}"
        return ReplayOutcome(letter_id=letter.letter_id, replayed=False, outcome=reason)
    try:
        await gateway.producer.send_and_wait(
            gateway.topics.alerts, encode(transition), key=transition.key
        )
    except KafkaError as exc:
        raise BrokerUnavailable(str(exc)) from exc
    return ReplayOutcome(letter_id=letter.letter_id, replayed=True, outcome="re-published")


async def replay_one(gateway: Gateway, letter: LetterRead) -> ReplayOutcome:
    """Replay one letter (raises BrokerUnavailable, having recorded nothing, if the broker
    cannot take it)."""
    if letter.truncated:
        return ReplayOutcome(
            letter_id=letter.letter_id,
            replayed=False,
            outcome="cannot replay: the payload was cut to the size bound when it was refused",
        )
    topics = gateway.topics
    if letter.source.startswith("ingest.") or letter.topic == topics.readings:
        return await _replay_readings(gateway, letter)
    if letter.topic == topics.alerts:
        return await _replay_transition(gateway, letter)
    return ReplayOutcome(
        letter_id=letter.letter_id,
        replayed=False,
        outcome=f"cannot replay letters from {letter.source} (topic {letter.topic})",
    )


async def replay(conn: Conn, gateway: Gateway, *, letter_ids: list[int], by: str) -> ReplayResult:
    """Replay the given letters in order, recording each outcome on its letter."""
    letters = await service.get_many(conn, letter_ids=letter_ids)
    out = []
    for letter_id in dict.fromkeys(letter_ids):
        letter = letters.get(letter_id)
        if letter is None:
            out.append(ReplayOutcome(letter_id=letter_id, replayed=False, outcome="no such letter"))
            continue
        outcome = await replay_one(gateway, letter)
        await service.record_replay(
            conn, letter_id=letter_id, replayed=outcome.replayed, outcome=outcome.outcome, by=by
        )
        out.append(outcome)
    return ReplayResult(items=out)
