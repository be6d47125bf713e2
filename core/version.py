"""mixq's version (its own module so that any module can read it without importing ``core``)."""

__version__ = "0.1.0"
