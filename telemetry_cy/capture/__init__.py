"""Record a live MQTT feed into a capture file, and replay it: into a broker, or through an Engine.

docs/capture.md describes the format and the commands.
"""
