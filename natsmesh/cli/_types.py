"""The shapes the command modules share: a command's handler, and how they add commands."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

#: Runs a command with its parsed arguments; returns the exit code.
Handler = Callable[[argparse.Namespace], Awaitable[int]]
#: Adds a command (name, handler, help) and returns its parser.
Command = Callable[[str, Handler, str], argparse.ArgumentParser]
#: Adds a group of options to a command's parser.
Option = Callable[[argparse.ArgumentParser], None]
