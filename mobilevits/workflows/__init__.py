"""Workflows: the top floor. Training and QAT, the latency harness and devices, findings, app assets,
the demo and the CLI; the only place that combines the model core with the converters."""
