"""A driver written for a driver SDK this hub does not have yet."""

from collections.abc import Mapping

from gateway.sdk import DriverInfo, FeedResult, no_options


class _Decoder:
    def feed(self, data: bytes) -> FeedResult:
        return FeedResult()


class _Driver:
    info = DriverInfo("broken.future", "0.0.1", "needs SDK 1.99", "serial", sdk_version=(1, 99))

    def decoder(self, options: Mapping[str, object]) -> _Decoder:
        no_options("broken.future", options)
        return _Decoder()


DRIVER = _Driver()
