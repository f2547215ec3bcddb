"""The commands around the daemon: `status`, `scan`, `decode`, `drivers` (with `readout`, how a
value reads to a person), `verify` (the platform side's check: `verify_command`, the subscriber
`verify`, over `verifier`'s and `verify_verdict`'s pure checks, `verify_files` and
`verify_report`) and `demo`. Each is called from `gateway.cli`; the daemon never
imports them.
"""
