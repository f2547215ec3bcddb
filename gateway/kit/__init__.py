"""The vendor kit: what a device vendor uses to write, check and ship a driver.

`vendor` (the facade a vendor's simulator and tests import besides `gateway.sdk`; nothing else
here is promised to vendors), `conformance` (`rtm-gateway driver check`, with its `fuzz`,
`observations` (declared types, units and codes) and `report`), `scaffold` and its
`templates/` (`rtm-gateway driver new`), `commands` (the `driver` subcommand's arguments and
output), `ucum` (the unit checker). The daemon never imports this package.
"""
