"""Test-support code that runs beside the system: checkers and the simulator."""
