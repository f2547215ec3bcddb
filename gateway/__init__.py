"""rtm-gateway: the home hub for Remote Therapeutic Monitoring."""

__version__ = "0.1.0"
