"""What every device session shares, whatever the transport.

No I/O lives here, and no transport is imported.
"""

from __future__ import annotations


class DeviceUnavailable(Exception):
    """The device could not be opened, or went away. The session retries with backoff."""
