"""Versioned contracts for every Kafka topic and API boundary of city-vitals."""
