"""Kafka topic names. The version suffix changes when a contract changes incompatibly."""

from __future__ import annotations

from dataclasses import dataclass

READINGS = "readings.v2"
TICKETS = "tickets.v1"
ALERTS = "alerts.v1"
INDICATOR_VALUES = "indicator-values.v1"
DEAD_LETTER = "deadletter.v1"
ROLLUP = "rollup.v1"


@dataclass(frozen=True, slots=True)
class Topics:
    """The platform's topics under one namespace prefix (lets several stacks share a broker)."""

    prefix: str = "city-vitals"

    @property
    def readings(self) -> str:
        return f"{self.prefix}.{READINGS}"

    @property
    def tickets(self) -> str:
        return f"{self.prefix}.{TICKETS}"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.{ALERTS}"

    @property
    def indicator_values(self) -> str:
        return f"{self.prefix}.{INDICATOR_VALUES}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.{DEAD_LETTER}"

    @property
    def rollup(self) -> str:
        """The rules engine's internal repartition topic (device scope to grid..city)."""
        return f"{self.prefix}.{ROLLUP}"

    def all(self) -> tuple[str, ...]:
        return (
            self.readings,
            self.tickets,
            self.alerts,
            self.indicator_values,
            self.dead_letter,
            self.rollup,
        )
