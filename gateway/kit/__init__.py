"""The vendor kit: what a device vendor uses to write, check and ship a driver.

`conformance` (`rtm-gateway driver check`), `scaffold` (`rtm-gateway driver new`), `ucum` (the
unit checker). The daemon never imports this package.
"""
