"""The MQTT device driver: JSON from a plant broker, acknowledged only after the outbox commit."""

from drivers.mqtt.config import MqttDeviceConfig, MqttPoint
from drivers.mqtt.driver import MqttDriver

__all__ = ["MqttDeviceConfig", "MqttDriver", "MqttPoint"]
