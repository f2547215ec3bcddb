"""`GattTableDriver` (SDK 1.3): a whole BLE GATT driver as one declaration, with no class to
write. It holds the `DriverInfo` fields of a BLE driver (transport is always "ble") and the
characteristic decoders: a table of pure `bytes -> Reading` functions by characteristic UUID,
or, for a profile whose decoder keeps state between values or takes options, the factory of its
per-connection decoder. It satisfies `GattDriver`.

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.sdk.conversations import BleSession
from gateway.sdk.declaration import SDK_VERSION, Category, Characteristic, DriverInfo, MatchRule
from gateway.sdk.protocols import GattDecoder, TableGattDecoder, no_options
from gateway.sdk.values import ObservationType, Reading


# eq=False: a driver is compared by identity, and a dict of decoders would make it unhashable.
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class GattTableDriver:
    """A BLE GATT driver declared as data:

        DRIVER = GattTableDriver(
            id="acme.thermometer", version="1.0.0", description="Acme thermometer",
            service=SERVICE, match=(BleMatch(service_uuid=SERVICE),),
            characteristics=(Characteristic(MEASUREMENT, "measurement", "indicate"),),
            decoders={MEASUREMENT: decode_measurement},
            observation_types=(OBSERVATION_TYPES["body_temperature"],),
        )

    With `decoders`, each connection gets a `TableGattDecoder` and the driver takes no options
    (`OptionError` for any). With `decoder_factory` instead, the factory makes each
    connection's decoder from the device's options (and raises `OptionError` for bad ones).
    Every UUID in `decoders` must be a declared characteristic, in lower case.
    """

    id: str
    version: str
    description: str
    service: str
    characteristics: tuple[Characteristic, ...]
    decoders: Mapping[str, Callable[[bytes], Reading]] = field(default_factory=dict)
    decoder_factory: Callable[[Mapping[str, object]], GattDecoder] | None = None
    match: tuple[MatchRule, ...] = ()
    observation_types: tuple[ObservationType, ...] = ()
    produces: tuple[str, ...] = ()
    continuous: bool = False
    sdk_version: tuple[int, int] = SDK_VERSION
    category: Category = "other"
    ble_session: BleSession | None = None
    info: DriverInfo = field(init=False, repr=False)
    """The `DriverInfo` the fields above make, as the hub reads it."""

    def __post_init__(self) -> None:
        declared = {char.uuid for char in self.characteristics}
        undeclared = [uuid for uuid in self.decoders if uuid not in declared]
        if undeclared:
            raise ValueError(
                f"{self.id}: decoders for {', '.join(undeclared)}, which is not a declared "
                "characteristic (UUIDs in lower case)"
            )
        if (self.decoder_factory is None) == (not self.decoders):
            raise ValueError(f"{self.id}: give either `decoders` or `decoder_factory`")
        # A copy nobody can change: the declaration is frozen, its table too.
        object.__setattr__(self, "decoders", MappingProxyType(dict(self.decoders)))
        info = DriverInfo(
            id=self.id,
            version=self.version,
            description=self.description,
            transport="ble",
            match=self.match,
            service=self.service,
            characteristics=self.characteristics,
            produces=self.produces,
            continuous=self.continuous,
            sdk_version=self.sdk_version,
            category=self.category,
            ble_session=self.ble_session,
            observation_types=self.observation_types,
        )
        object.__setattr__(self, "info", info)

    def gatt_decoder(self, options: Mapping[str, object]) -> GattDecoder:
        """A new decoder for one connection. Raises `OptionError` for bad options."""
        if self.decoder_factory is not None:
            return self.decoder_factory(options)
        no_options(self.id, options)
        return TableGattDecoder(self.id, self.decoders)
