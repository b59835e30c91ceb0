"""The MQTT source, by the name the rest of the project imports it from.

Its parts, one job each:
  mqtt_url.py     the broker URL (``parse_url``)
  mqtt_client.py  paho's Client with the compiled receive path (``FastClient``) and the private
                  paho members it relies on (``PAHO_PRIVATE_MEMBERS``, ``PAHO_LAST_IN_NAMES``)
  mqtt_source.py  ``MqttSource``: the network thread, its session loop, reconnects and stats
"""

from __future__ import annotations

from telemetry_cy.service.logs import redact_url
from telemetry_cy.source.mqtt_client import PAHO_LAST_IN_NAMES, PAHO_PRIVATE_MEMBERS
from telemetry_cy.source.mqtt_source import MqttSource
from telemetry_cy.source.mqtt_url import parse_url

__all__ = ["MqttSource", "parse_url", "redact_url", "PAHO_PRIVATE_MEMBERS", "PAHO_LAST_IN_NAMES"]
