"""A driver whose declaration is wrong: its id is not dotted lower case."""

from collections.abc import Mapping

from gateway.sdk import DriverInfo, FeedResult, no_options


class _Decoder:
    def feed(self, data: bytes) -> FeedResult:
        return FeedResult()


class _Driver:
    info = DriverInfo("Broken Meter", "0.0.1", "an id with a space", "serial")

    def decoder(self, options: Mapping[str, object]) -> _Decoder:
        no_options("Broken Meter", options)
        return _Decoder()


DRIVER = _Driver()
