"""The paho client for one MQTT device: persistent session, manual acks, TLS, credentials.

Kept apart from the driver so that everything paho-specific about *opening* a
connection (MQTT 3.1.1 vs 5 session flags, CONNECT properties, TLS context) is
in one place, and the driver only sees a ready client.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.mqtt.config import MqttDeviceConfig
from gateway.config_base import parse_mqtt_url
from gateway.mqtt_tls import configure


def new_client(cfg: MqttDeviceConfig) -> mqtt.Client:
    """A client that acknowledges only when told, and never reconnects by itself.

    Reads the TLS and password files (OSError/ValueError/ssl.SSLError when they are bad).
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.effective_client_id,
        protocol=mqtt.MQTTv5 if cfg.mqtt_version == "5" else mqtt.MQTTv311,
        # MQTT 3.1.1 keeps the session with clean_session=False; MQTT 5 with
        # clean_start=False and a session expiry, both given at connect().
        clean_session=None if cfg.mqtt_version == "5" else False,
        manual_ack=True,
        reconnect_on_failure=False,  # the runtime owns reconnection and its backoff
    )
    client.connect_timeout = cfg.connect_timeout_s
    configure(client, cfg, use_tls=parse_mqtt_url(cfg.url)[0] == "mqtts")
    return client


def send_connect(client: mqtt.Client, cfg: MqttDeviceConfig) -> None:
    """Blocking (socket, TLS handshake, CONNECT): run it off the event loop."""
    _, host, port = parse_mqtt_url(cfg.url)
    if cfg.mqtt_version == "5":
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = cfg.session_expiry_s
        # Flow control: the broker may have at most this many unacknowledged messages out.
        properties.ReceiveMaximum = cfg.receive_maximum
        client.connect(host, port, cfg.keepalive_s, clean_start=False, properties=properties)
    else:
        client.connect(host, port, cfg.keepalive_s)


def send_subscribe(client: mqtt.Client, cfg: MqttDeviceConfig) -> MQTTErrorCode:
    if cfg.mqtt_version == "5":
        # Retained messages only for a new subscription, not on every resumed session.
        options = SubscribeOptions(qos=cfg.qos, retainHandling=1)
        result, _ = client.subscribe(cfg.topic, options=options)
    else:
        result, _ = client.subscribe(cfg.topic, qos=cfg.qos)
    return result


def send_barrier(client: mqtt.Client, cfg: MqttDeviceConfig) -> MQTTErrorCode:
    """An UNSUBSCRIBE of a topic nobody uses: its UNSUBACK proves the broker read all before it."""
    result, _ = client.unsubscribe(f"millwright-barrier/{cfg.effective_client_id}")
    return result
