"""residency-monitor: watch where outbound traffic goes and over which TLS."""

__version__ = "0.1.0"
