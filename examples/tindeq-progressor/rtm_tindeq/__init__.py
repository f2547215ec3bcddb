"""A reference vendor driver for rtm-gateway: the Tindeq Progressor dynamometer.

`rtm_tindeq.driver` is the driver (pure: bytes in, readings out), found by the hub through the
`rtm_gateway.drivers` entry point; `rtm_tindeq.simulator` is a simulated Progressor for the
virtual Bluetooth lab (`rtm_gateway.simulators`); `rtm_tindeq/fixtures/` holds recorded cases.
Nothing is imported here, so loading the driver never pulls in the simulator's dependencies.
"""
