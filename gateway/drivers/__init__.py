"""Built-in device drivers: one small pure module per device or profile."""
