"""deflare: remove lens flare from event-camera recordings."""

__version__ = "0.1.0"
