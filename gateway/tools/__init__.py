"""The commands around the daemon: `status`, `scan`, `verify` (the platform side's check) and
`demo`. Each is called from `gateway.cli`; the daemon never imports them.
"""
