"""The gateway runtime: what runs on the Raspberry Pi-class box in the street cabinet.

``supervisor`` builds and stops the pipeline: the ``scheduler`` polls drivers on the
elapsed clock, the ``batcher`` seals readings into batches, the ``store`` keeps them on the
SD card until the broker acknowledged them, and the ``uplink`` sends them over MQTT.
``clock`` detects wall-clock steps; ``metrics`` serves the local Prometheus endpoint.
"""
