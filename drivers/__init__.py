"""The driver registry: protocol name -> driver class path, imported only when used.

The core never imports a concrete driver; it asks this registry by name. A new
protocol is one package under drivers/ and one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.driver import Driver

REGISTRY: dict[str, str] = {
    "modbus": "drivers.modbus.driver:ModbusDriver",
    "opcua": "drivers.opcua.driver:OpcUaDriver",
    "mqtt": "drivers.mqtt.driver:MqttDriver",
}


def protocols() -> list[str]:
    return sorted(REGISTRY)


def driver_class(protocol: str) -> type[Driver]:
    """The driver class for `protocol`; KeyError for an unknown name."""
    module_name, _, class_name = REGISTRY[protocol].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
