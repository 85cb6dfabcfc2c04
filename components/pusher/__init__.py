"""Pusher: copy a blessed model bundle into the model store and move the champion alias."""

from components.pusher.component import build, pusher

__all__ = ["build", "pusher"]
