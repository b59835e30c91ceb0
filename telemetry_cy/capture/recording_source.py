"""The MQTT source, subscribed for a faithful recording.

A recorder wants each message with the QoS and retain flag its publisher gave it:

- the broker delivers min(published QoS, subscription QoS), so the subscription is QoS 2;
- the broker clears RETAIN on live deliveries unless the subscription asks for "retain as
  published" (MQTT 5 only; with MQTT 3.1.1 only the retained messages sent at subscribe time keep
  the flag).

Everything else (paho, the compiled frame reader writing QoS 0/1 into the ring with their header
flags, paho's slow path for QoS 2, reconnects, counters) is the daemon's ``MqttSource`` as it is.
"""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from telemetry_cy.source.mqtt import MqttSource


class RecordingSource(MqttSource):
    """``MqttSource`` with a QoS 2, retain-as-published subscription (see the module doc)."""

    def __init__(self, ring, url: str, topics, **kwargs) -> None:
        super().__init__(ring, url, topics, qos=2, **kwargs)

    def _make_client(self):
        client = super()._make_client()
        if self._protocol == paho.MQTTv5:
            plain_subscribe = client.subscribe

            def subscribe(topic, *args, **kwargs):
                # MqttSource subscribes with [(filter, qos), ...]; only the options change
                wanted = [(t, SubscribeOptions(qos=q, retainAsPublished=True)) for t, q in topic]
                return plain_subscribe(wanted, *args, **kwargs)

            client.subscribe = subscribe
        return client
