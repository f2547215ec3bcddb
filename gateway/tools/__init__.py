"""The commands around the daemon: `status`, `scan`, `decode`, `drivers` (with `readout`, how a
value reads to a person), `verify` (the platform side's check: the subscriber, over `verifier`'s
pure checks and `verify_report`) and `demo`. Each is called from `gateway.cli`; the daemon never
imports them.
"""
