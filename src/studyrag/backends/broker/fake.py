"""The broker fake is the in-process MemoryBroker itself: it has no external dependency."""

from studyrag.backends.broker.memory import MemoryBroker as FakeBroker

__all__ = ["FakeBroker"]
