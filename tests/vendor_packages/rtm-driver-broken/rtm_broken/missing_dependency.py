"""A driver whose import fails: it needs a library the hub does not have."""

import rtm_vendor_sdk_that_is_not_installed  # noqa: F401  # the failure under test

DRIVER = None
Simulator = None
