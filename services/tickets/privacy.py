"""Masking a 12345 caller's personal data for everyone who may not see it. Pure."""

from __future__ import annotations


def mask_name(name: str | None) -> str | None:
    """Keep the first character (the family name in Chinese): 张三丰 -> 张**."""
    if not name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)


def mask_phone(phone: str | None) -> str | None:
    """Keep the first three and last four digits: 13812345678 -> 138****5678; shorter numbers
    keep only their last two."""
    if not phone:
        return phone
    digits = phone.replace(" ", "").replace("-", "")
    if len(digits) >= 11:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    return "*" * max(1, len(digits) - 2) + digits[-2:]
